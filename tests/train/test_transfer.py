"""The transfer study trains every method on every source, evaluates each on UnED and the landmark set, and
continues an interrupted study without repeating finished runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from irlib.train import transfer
from irlib.train.transfer import TransferConfig, domain_table, rank_per_domain, run_transfer_study

DOMAINS = ["cars", "inshop", "gldv2"]


def _config(demo, out) -> TransferConfig:
    return TransferConfig(
        methods=["gem"],
        model_kwargs={"gem": {"whitening": 16}},
        pretrained=False,
        uned_root=str(demo / "uned"),
        uned_domains=DOMAINS,
        landmark_train=str(demo),
        landmark_test=str(demo / "demo"),
        steps=2,
        global_batch=4,
        image_size=48,
        eval_image_size=48,
        out_dir=str(out),
    )


def test_every_source_is_trained_and_evaluated_on_every_target_then_read_back(small_demo, tmp_path, monkeypatch):
    results = run_transfer_study(_config(small_demo, tmp_path / "study"), progress=False)
    assert set(results["trained_on"]) == {"uned", "landmarks"} and set(results["evaluated_on"]) == {"uned", "landmarks"}
    for source in ("uned", "landmarks"):
        run = tmp_path / "study" / "gem" / f"train-{source}"
        config = json.loads((run / "run.json").read_text())["params"]
        assert config["dataset"] == ("uned" if source == "uned" else "gldv2") and config["max_steps"] == 2
        uned = json.loads((run / "eval-uned" / "metrics.json").read_text())
        rows = results[(results["trained_on"] == source) & (results["evaluated_on"] == "uned")]
        values = dict(zip(rows["metric"], rows["value"], strict=True))
        assert values["R@1"] == uned["metrics"]["R@1"]
        assert values["cars/mMP@5"] == uned["metrics"]["per_domain"]["cars"]["mMP@5"]
        assert set(rows["run_id"]) == {json.loads((run / "eval-uned" / "run.json").read_text())["id"]}
        landmark = json.loads((run / "eval-landmarks" / "metrics.json").read_text())
        rows = results[(results["trained_on"] == source) & (results["evaluated_on"] == "landmarks")]
        assert dict(zip(rows["metric"], rows["value"], strict=True)) == {
            "medium": landmark["medium"]["map"],
            "hard": landmark["hard"]["map"],
        }

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was repeated")

    monkeypatch.setattr(transfer, "train", fail)
    monkeypatch.setattr(transfer, "evaluate_model", fail)
    again = run_transfer_study(_config(small_demo, tmp_path / "study"), progress=False)
    pd.testing.assert_frame_equal(again, results)
    longer = _config(small_demo, tmp_path / "study")
    longer.steps = 3  # another budget must not read back this study's models
    with pytest.raises(ValueError, match=r"gem/train-uned holds a finished training with other settings \(max_steps\)"):
        run_transfer_study(longer, progress=False)


def test_domain_table_and_ranks():
    rows = [
        ["gem", "uned", "uned", "cars/R@1", 50.0, "a"],
        ["gem", "uned", "uned", "gldv2/R@1", 10.0, "a"],
        ["delg", "uned", "uned", "cars/R@1", 70.0, "b"],
        ["delg", "uned", "uned", "gldv2/R@1", 10.0, "b"],
        ["delg", "uned", "uned", "R@1", 40.0, "b"],
        ["delg", "landmarks", "uned", "cars/R@1", 5.0, "c"],
    ]
    results = pd.DataFrame(rows, columns=["method", "trained_on", "evaluated_on", "metric", "value", "run_id"])
    table = domain_table(results)
    assert table.loc["gem"].to_dict() == {"cars": 50.0, "gldv2": 10.0} and table.loc["delg", "cars"] == 70.0
    assert rank_per_domain(table).to_dict() == {"cars": {"delg": 1, "gem": 2}, "gldv2": {"delg": 1, "gem": 1}}


def test_bad_studies_are_named():
    with pytest.raises(ValueError, match="sources must be some of"):
        TransferConfig(sources=["imagenet"], uned_root="u", landmark_train="t", landmark_test="x")
    with pytest.raises(ValueError, match="TransferConfig.uned_root is empty"):
        TransferConfig(landmark_train="t", landmark_test="x")
