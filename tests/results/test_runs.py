import json

import numpy as np
import pandas as pd
import pytest

from irlib.eval.pipeline import EvalResult, save_result
from irlib.provenance import RUN_FILE, new_record, write_run
from irlib.results import load_runs


def _metrics(dataset: str = "roxford5k", rerank: dict | None = None) -> dict:
    protocol = {"map": 50.0, "mp@k": {"1": 80.0, "5": 70.0}}
    return {
        "dataset": dataset,
        "method": "gem",
        "backbone": "resnet50",
        "settings": {
            "image_size": 1024,
            "rerank": rerank,
            "gnd_sha256": "g" * 64,
            "weights_sha256": "w" * 64,
            "versions": {"irlib": "0.1.0"},
            "seconds": {"extract": 1.5, "search_rerank_and_metrics": 0.25},
        },
        "easy": protocol,
        "medium": protocol | {"map": 40.0},
        "hard": protocol | {"map": 20.0},
    }


def _save(metrics: dict, out) -> None:
    per_query = pd.DataFrame({"easy": [1.0]}, index=pd.Index(["q"], name="query"))
    save_result(EvalResult(metrics, per_query, np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 1))), out)


def test_an_evaluation_writes_a_run_record(tmp_path):
    _save(_metrics("roxford5k+1m", {"method": "superglobal", "params": {"M": 400}}), tmp_path / "run")
    record = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert record["kind"] == "eval" and len(record["id"]) == 12
    assert record["dataset"] == {"name": "roxford5k", "distractors": "r1m", "gnd_sha256": "g" * 64}
    assert record["weights_sha256"] == "w" * 64 and record["seconds"] == 1.75
    assert record["params"]["method"] == "gem" and record["params"]["image_size"] == 1024
    assert record["metrics"]["medium"]["map"] == 40.0
    assert set(record["git"]) == {"commit", "dirty"}
    assert set(record["versions"]) == {"irlib", "torch", "timm", "numpy", "python"}
    assert record["versions"]["python"]


def test_load_runs_tabulates_records_and_legacy_folders(tmp_path):
    _save(_metrics(), tmp_path / "a")
    _save(_metrics("rparis6k", {"method": "superglobal", "params": {}}), tmp_path / "nested" / "b")
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "metrics.json").write_text(json.dumps(_metrics()))
    train = new_record("train", tmp_path / "t", params={"method": "gem", "backbone": "r50"}, metrics={"loss": 0.5})
    write_run(tmp_path / "t", train)

    runs = load_runs(tmp_path)
    assert len(runs) == 4 and runs["id"].is_unique
    assert list(runs.columns[:16]) == [
        "id",
        "kind",
        "path",
        "created",
        "dataset",
        "distractors",
        "method",
        "backbone",
        "rerank",
        "git_commit",
        "git_dirty",
        "gnd_sha256",
        "train_split_sha256",
        "weights_sha256",
        "state_dict_sha256",
        "seconds",
    ]
    evals = load_runs([tmp_path], kind="eval").set_index("path")
    assert len(evals) == 3
    b = evals.loc[str(tmp_path / "nested" / "b")]
    assert (b["dataset"], b["distractors"], b["rerank"], b["medium.map"]) == ("rparis6k", "none", "superglobal", 40.0)
    assert b["hard.map"] == 20.0 and b["easy.mp@k.5"] == 70.0
    legacy = evals.loc[str(tmp_path / "legacy")]
    assert pd.isna(legacy["created"]) and pd.isna(legacy["git_commit"]) and legacy["medium.map"] == 40.0
    assert pd.api.types.is_datetime64_any_dtype(runs["created"])
    trained = load_runs(tmp_path / "t" / RUN_FILE, kind="train")
    assert trained[["kind", "method", "loss"]].values.tolist() == [["train", "gem", 0.5]]


def test_load_runs_of_a_missing_folder_fails(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "nothing")
