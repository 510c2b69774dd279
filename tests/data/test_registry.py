"""The dataset registry: every name loads its family's official layout from a download root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from irlib.data.gldv2 import GLDv2Retrieval
from irlib.data.ilias import IliasDataset
from irlib.data.registry import dataset_entry, list_datasets, load_dataset
from irlib.data.revisited import Distractors, RevisitedDataset
from irlib.data.train_set import TrainSet
from tests.conftest import shared_path
from tests.data.test_gldv2 import gld  # noqa: F401  (fixture: a GLDv2 tree at <tmp>/gldv2)
from tests.data.test_gldv2_retrieval import I1, I2, I3, I4, SOLUTION_CSV, T1, T2, T3, T4, T5
from tests.data.test_ilias import _make as make_ilias
from tests.data.test_revisited import _distractor_root
from tests.data.test_uned import uned, write_knn_info  # noqa: F401  (fixture: a UnED tree at <tmp>/data)


def test_names_kinds_and_unknown_name():
    assert list_datasets(kind="test") == [
        "demo",
        "gldv2-retrieval",
        "ilias",
        "mini-ilias",
        "revisited",
        "roxford5k",
        "rparis6k",
        "uned-knn",
    ]
    assert list_datasets(kind="train") == ["demo-train", "gldv2", "gldv2-clean", "rgldv2-clean", "uned"]
    assert list_datasets("r*") == ["revisited", "revisitop1m", "rgldv2-clean", "roxford5k", "rparis6k"]
    assert "gnd_roxford5k.pkl" in dataset_entry("roxford5k").description
    with pytest.raises(ValueError, match="Unknown dataset 'oxford'. Available datasets: demo, demo-train"):
        load_dataset("oxford", ".")


def test_revisited_sets_and_distractors_from_a_download_root(tmp_path):
    gnd = shared_path("data", "revisitop", "gnd_roxford5k.pkl")
    (tmp_path / "roxford5k").mkdir()
    shutil.copy(gnd, tmp_path / "roxford5k")
    _distractor_root(tmp_path, 5)
    plain = load_dataset("roxford5k", tmp_path)
    assert isinstance(plain, RevisitedDataset) and (plain.n_db, plain.n_queries) == (4993, 70)
    both = load_dataset("roxford5k", tmp_path, distractors=tmp_path / "revisitop1m")
    assert both.n_db == 4993 + 5 and both.label == plain.label + "+r1m"
    assert isinstance(load_dataset("revisitop1m", tmp_path), Distractors)
    assert load_dataset("revisited", tmp_path / "roxford5k").name == "roxford5k"


def test_training_and_other_test_sets(tmp_path, gld, uned):  # noqa: F811
    clean = load_dataset("gldv2-clean", tmp_path)
    assert isinstance(clean, TrainSet) and clean.info["source"] == "gldv2-clean"
    excluded = tmp_path / "exclude.txt"
    excluded.write_text(f"{int(clean.original_ids[0])}\n")
    reduced = load_dataset("rgldv2-clean", tmp_path, exclude_file=excluded)
    assert reduced.num_classes == clean.num_classes - 1 and reduced.info["removed_classes"] == 1

    (tmp_path / "uned").symlink_to(uned)
    assert load_dataset("uned", tmp_path, domains="cars").info["domains"] == ["cars"]
    knn_root = tmp_path / "knn" / "uned"
    write_knn_info(knn_root)
    knn = load_dataset("uned-knn", knn_root.parent, domains=["cars", "inshop"])
    assert knn.throw_first == {"cars": True, "inshop": False}

    make_ilias(tmp_path / "ilias")
    assert isinstance(load_dataset("ilias", tmp_path), IliasDataset)

    root = tmp_path / "gldv2"
    (root / "index.csv").write_text("id\n" + "".join(f"{i}\n" for i in (I1, I2, I3, I4)))
    (root / "test.csv").write_text("id\n" + "".join(f"{i}\n" for i in (T1, T2, T3, T4, T5)))
    (root / "retrieval_solution_v2.1.csv").write_text(SOLUTION_CSV)
    bench = load_dataset("gldv2-retrieval", tmp_path)
    assert isinstance(bench, GLDv2Retrieval) and bench.query_ids == [T1, T3]


def test_demo_sets_are_generated_under_the_root(tmp_path, monkeypatch):
    calls = []

    def fake_make(root: Path, progress: bool) -> Path:
        calls.append((root, progress))
        return Path(root)

    monkeypatch.setattr("irlib.data.registry.make_demo_data", fake_make)
    with pytest.raises(FileNotFoundError, match="demo"):
        load_dataset("demo", tmp_path)
    assert calls == [(tmp_path, False)]
