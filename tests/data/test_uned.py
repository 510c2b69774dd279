"""Tests for the UnED loaders on tiny info files in the official layout (unicode paths, list class ids), and the
merged kNN benchmark end to end (loader + ``uned_merged_metrics``) on hand-computed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irlib.data.train_set import TrainSet
from irlib.data.uned import (
    DOMAINS,
    KNN_SPLITS,
    UNED_SIZES,
    escaped_path,
    image_domains,
    label_domains,
    uned_knn,
    uned_split,
)
from irlib.eval.metrics import uned_merged_metrics

INFO = {
    "cars": [
        {"path": "cars/car_ims/000001.jpg", "class_id": 0},
        {"path": "cars/car_ims/000002.jpg", "class_id": 2},
        {"path": "cars/car_ims/000003.jpg", "class_id": [1]},
    ],
    "met": [
        {"path": "met/MET/100/0.jpg", "class_id": [1, 5]},  # multi-label: training uses the first id
        {"path": "met/MET/7/0.jpg", "class_id": 0},
    ],
    "rp2k": [
        {"path": "rp2k/all/train/农夫山泉/饮料_1.jpg", "class_id": 0},
        {"path": "rp2k/all/train/Café/é.jpg", "class_id": 1},  # stored under its escaped name below
    ],
}


def _write(root: Path, info: dict, split: str = "train") -> None:
    for domain, entries in info.items():
        path = root / "info_files" / domain / f"{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")


@pytest.fixture
def uned(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _write(root, INFO)
    for domain, entries in INFO.items():
        for k, e in enumerate(entries):
            rel = escaped_path(e["path"]) if "Café" in e["path"] else e["path"]
            path = root / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 8), (30 * k, 90, 30 * len(domain))).save(path, format="JPEG")
    return root


def test_domains_constant() -> None:
    assert DOMAINS == ("cars", "sop", "inshop", "inat", "met", "gldv2", "food2k", "rp2k")
    assert set(UNED_SIZES) == set(DOMAINS) and UNED_SIZES["gldv2"]["train_classes"] == 73_182


def test_labels_unique_across_domains(uned: Path) -> None:
    ds = uned_split(uned, ["rp2k", "cars", "met"])  # canonical order whatever the request order
    assert ds.info["domains"] == ["cars", "met", "rp2k"]
    assert ds.info["domain_offsets"] == {"cars": 0, "met": 3, "rp2k": 5}
    assert ds.original_labels.tolist() == [0, 2, 1, 3 + 1, 3 + 0, 5 + 0, 5 + 1]
    assert ds.labels.tolist() == ds.original_labels.tolist()  # ids are already contiguous here
    assert ds.num_classes == 7 and len(ds) == 7 and ds.name == "uned-train"
    assert ds.info["multi_label_entries"] == {"cars": 0, "met": 1, "rp2k": 0}
    assert ds.info["images"] == {"cars": 3, "met": 2, "rp2k": 2}


def test_unicode_and_escaped_paths(uned: Path) -> None:
    ds = uned_split(uned, "rp2k")
    assert ds.paths[0] == uned / "images" / "rp2k/all/train/农夫山泉/饮料_1.jpg"
    assert ds.paths[1] == uned / "images" / "rp2k/all/train/Caf#U00e9/#U00e9.jpg"
    assert ds.info["escaped_paths"] == 1
    assert ds[0][0].size == (10, 8) and ds[1][1] == 1
    assert escaped_path("a/饮料.jpg") == "a/#U996e#U6599.jpg"


def test_label_map_saved_and_reused(uned: Path) -> None:
    ds = uned_split(uned, ["cars", "met"])
    ds.save_label_map(uned / "labels.json")
    saved = json.loads((uned / "labels.json").read_text())
    assert saved["info"]["domain_offsets"] == {"cars": 0, "met": 3}
    again = uned_split(uned, ["cars", "met"], label_map=uned / "labels.json")
    assert again.labels.tolist() == ds.labels.tolist()
    # cars gains a class id: a fresh map would shift every met label; the saved map refuses instead.
    _write(uned, {"cars": INFO["cars"] + [{"path": "cars/car_ims/000001.jpg", "class_id": 3}]})
    assert uned_split(uned, ["cars", "met"]).info["domain_offsets"]["met"] == 4
    with pytest.raises(ValueError, match=r"\['cars'\] now have class ids beyond"):
        uned_split(uned, ["cars", "met"], label_map=uned / "labels.json")
    with pytest.raises(ValueError, match="not a UnED label map for domains"):
        uned_split(uned, ["met"], label_map=uned / "labels.json")


def test_every_label_and_image_knows_its_domain(uned: Path) -> None:
    # cars' class ids 0-2 and met's 1 (first of [1, 5]) and 0 leave met's width at 2; ids 1 of met absent in cars
    _write(uned, {"cars": [INFO["cars"][1], INFO["cars"][2]]})  # cars now lists ids 2 and 1: id 0 has no image
    ds = uned_split(uned, ["cars", "met"])
    assert ds.original_ids.tolist() == [1, 2, 3 + 0, 3 + 1]  # contiguous labels skip cars' unused id 0
    assert label_domains(ds).tolist() == [0, 0, 1, 1]  # positions in info["domains"] = ["cars", "met"]
    assert image_domains(ds).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="not a UnED split"):
        label_domains(TrainSet([], [], name="plain"))


def test_missing_images_error_or_skip(uned: Path) -> None:
    (uned / "images" / "met/MET/7/0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"'uned-train'.*met/MET/7/0\.jpg"):
        uned_split(uned, "met")
    with pytest.warns(UserWarning, match="skipped 1 missing"):
        ds = uned_split(uned, "met", on_missing="skip")
    assert len(ds) == 1 and ds.num_classes == 2


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "cars/x.jpg", "class_id": "3"}, r"entry 1 \(cars/x\.jpg\): 'class_id' must be a non-negative int"),
        ({"path": "cars/x.jpg", "class_id": []}, r"entry 1 \(cars/x\.jpg\): 'class_id' is an empty list"),
        ({"path": "cars/x.jpg", "class_id": True}, r"entry 1 .*'class_id' must be"),
        ({"path": "cars/x.jpg"}, r"entry 1 must be a dict with 'path' and 'class_id'"),
        ({"path": "/abs/x.jpg", "class_id": 1}, r"entry 1: 'path' must be a non-empty relative path"),
    ],
)
def test_malformed_entries_name_file_and_entry(uned: Path, entry: dict, message: str) -> None:
    _write(uned, {"cars": [INFO["cars"][0], entry]})
    with pytest.raises(ValueError, match=r"info_files/cars/train\.json: " + message):
        uned_split(uned, "cars")


def test_bad_requests(uned: Path) -> None:
    with pytest.raises(ValueError, match="domains must be distinct names"):
        uned_split(uned, ["cars", "boats"])
    with pytest.raises(ValueError, match="unknown split"):
        uned_split(uned, "cars", split="dev")
    with pytest.raises(FileNotFoundError, match=r"info_files/sop/train\.json does not exist"):
        uned_split(uned, "sop")
    (uned / "info_files/cars/train.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cars/train\.json: not valid JSON"):
        uned_split(uned, "cars")


def test_other_splits_and_strict_sizes(uned: Path) -> None:
    _write(uned, {"cars": INFO["cars"][:2]}, split="val")
    assert len(uned_split(uned, "cars", split="val")) == 2
    with pytest.raises(ValueError, match=r"cars: 3 images, expected 6346; cars: 3 classes, expected 78"):
        uned_split(uned, "cars", strict=True)


# The merged benchmark: cars (test -> test, throw_1st), inshop and gldv2 (test -> index), in the official format.
KNN_INFO = {
    "cars": {"test": [{"path": f"cars/car_ims/{i:06d}.jpg", "class_id": c} for i, c in enumerate([0, 0, 1, 1])]},
    "inshop": {
        "test": [
            {"path": "deepfashion/inshop/img/q0.jpg", "class_id": 5},
            {"path": "deepfashion/inshop/img/q1.jpg", "class_id": 7},
        ],
        "index": [{"path": f"deepfashion/inshop/img/i{i}.jpg", "class_id": c} for i, c in enumerate([5, 5, 7, 3])],
    },
    "gldv2": {
        # Multi-label test entries (a landmark list), and a one-element list.
        "test": [
            {"path": "gldv2/images/test/0/0/0/g0.jpg", "class_id": [2, 4]},
            {"path": "gldv2/images/test/0/0/0/g1.jpg", "class_id": [4]},
        ],
        "index": [{"path": f"gldv2/images/index/0/0/0/x{i}.jpg", "class_id": c} for i, c in enumerate([2, 4, 4, 0])],
    },
}


def write_knn_info(root: Path) -> None:
    for domain, splits in KNN_INFO.items():
        for split, entries in splits.items():
            _write(root, {domain: entries}, split)


def test_knn_splits_match_the_reference() -> None:
    # dataset_infos.py test_knn / val_knn (query, index).
    assert {d for d, (q, i) in KNN_SPLITS["test"].items() if q != i} == {"inshop", "met", "gldv2"}
    assert KNN_SPLITS["test"]["met"] == ("test", "index") and KNN_SPLITS["test"]["sop"] == ("test", "test")
    assert KNN_SPLITS["val"]["met"] == ("val", "small_index") and KNN_SPLITS["val"]["gldv2"] == ("val", "val")


def test_knn_loader_merges_the_index_with_global_labels(tmp_path: Path) -> None:
    write_knn_info(tmp_path)
    ev = uned_knn(tmp_path, ["gldv2", "cars", "inshop"])
    assert ev.domains == ("cars", "inshop", "gldv2")
    assert ev.throw_first == {"cars": True, "inshop": False, "gldv2": False}
    # Offsets: cars ids 0-1 (width 2), inshop 3-7 (width 8), gldv2 0-4 with list ids included (width 5).
    assert ev.info["domain_offsets"] == {"cars": 0, "inshop": 2, "gldv2": 10}
    assert ev.query_labels == [0, 0, 1, 1, 7, 9, (12, 14), 14]
    assert ev.index_labels == [0, 0, 1, 1, 7, 7, 9, 5, 12, 14, 14, 10]  # gldv2 class 0 is not cars class 0
    assert ev.query_domains.tolist() == ["cars"] * 4 + ["inshop"] * 2 + ["gldv2"] * 2
    assert ev.index_domains.tolist() == ["cars"] * 4 + ["inshop"] * 4 + ["gldv2"] * 4
    assert ev.query_in_index.tolist() == [0, 1, 2, 3, -1, -1, -1, -1]
    assert [ev.index_paths[i] for i in ev.query_in_index[:4]] == list(ev.query_paths[:4])
    assert ev.query_paths[4] == tmp_path / "images/deepfashion/inshop/img/q0.jpg"
    assert ev.index_paths[11] == tmp_path / "images/gldv2/images/index/0/0/0/x3.jpg"
    assert ev.info["multi_label_queries"] == {"cars": 0, "inshop": 0, "gldv2": 1}
    assert ev.info["index_images"] == {"cars": 4, "inshop": 4, "gldv2": 4}
    (tmp_path / "info_files/gldv2/index.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"info_files/gldv2/index\.json does not exist"):
        uned_knn(tmp_path, "gldv2")
    with pytest.raises(ValueError, match="unknown kNN split 'train'"):
        uned_knn(tmp_path, "cars", split="train")


def test_merged_benchmark_end_to_end_by_hand(tmp_path: Path) -> None:
    write_knn_info(tmp_path)
    ev = uned_knn(tmp_path, ["cars", "inshop", "gldv2"])
    # Merged index ids: cars 0-3 (labels 0 0 1 1), inshop 4-7 (7 7 9 5), gldv2 8-11 (12 14 14 10).
    top = [
        [0, 8, 1],  # cars q0 (throw 1st): 2nd is gldv2 -> miss; MP looks at n_same = 2: [0 hit, 8 miss] - 1 = 0
        [1, 0],  # hit; 2 - 1 = 1 / min(1, 5)
        [3, 2],  # the thrown 1st neighbour is not the query itself: still thrown; hit, 1
        [3, 2, 4],  # hit, 1
        [5, 6, 4],  # inshop q0 (label 7, n_same 2): hit; [5 hit, 6 miss] -> 1/2
        [0, 6],  # inshop q1 (label 9, n_same 1): cars item first -> miss, 0
        [9, 11, 8, 10],  # gldv2 q0 (labels 12, 14: n_same 1 + 2 = 3): hit; [hit, miss, hit] -> 2/3
        [8, 9, 10],  # gldv2 q1 (label 14, n_same 2): item 8 is label 12 -> miss; [miss, hit] -> 1/2
    ]
    ranks = np.array([row + [i for i in range(12) if i not in row] for row in top])
    out = uned_merged_metrics(
        ranks, ev.query_labels, ev.query_domains, ev.index_labels, ev.index_domains, ev.throw_first, ranks=True
    )
    per_domain = {
        "cars/R@1": 3 / 4, "cars/mMP@5": 3 / 4,
        "inshop/R@1": 1 / 2, "inshop/mMP@5": 1 / 4,
        "gldv2/R@1": 1 / 2, "gldv2/mMP@5": (2 / 3 + 1 / 2) / 2,
        "cars/mAP@5": 7 / 8, "inshop/mAP@5": 2 / 3, "gldv2/mAP@5": 25 / 36,
    }  # fmt: skip
    # The benchmark number is the unweighted mean of the domains (over the 8 queries it would be 5/8 and 0.583).
    means = {
        "R@1": (3 / 4 + 1 / 2 + 1 / 2) / 3,
        "mMP@5": (3 / 4 + 1 / 4 + 7 / 12) / 3,
        "mAP@5": (7 / 8 + 2 / 3 + 25 / 36) / 3,
    }
    assert out == pytest.approx(means | per_domain)
    rounded = uned_merged_metrics(
        ranks, ev.query_labels, ev.query_domains, ev.index_labels, ev.index_domains, ev.throw_first, ranks=True,
        decimals=3,
    )  # fmt: skip
    assert rounded["gldv2/mMP@5"] == 0.583 and rounded["R@1"] == 0.583 and rounded["mMP@5"] == 0.528
