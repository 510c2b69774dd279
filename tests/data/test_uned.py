"""Tests for the UnED loader on tiny info files in the official layout (unicode paths, list class ids)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from irlib.data.uned import DOMAINS, UNED_SIZES, escaped_path, uned_split

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
