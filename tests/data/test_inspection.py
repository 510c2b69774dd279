"""Dataset inspection: image tables, ground-truth statistics on the real ROxf/RPar files, sizes and the file scan."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from irlib.data.inspection import image_sizes, image_table, positives_per_query, revisited_landmark, scan_images
from irlib.data.revisited import Distractors, RevisitedDataset
from irlib.data.train_set import TrainSet
from tests.conftest import shared_path


@pytest.mark.parametrize(
    ("name", "landmark"),
    [
        ("all_souls_000013", "all_souls"),
        ("paris_defense_000605", "paris_defense"),
        ("tower_00_000001", "tower_00"),
        ("clutter_000003", "clutter"),
        ("q_0", "q"),
        ("plain", "plain"),
        ("000123", "000123"),
    ],
)
def test_landmark_from_image_name(name, landmark):
    assert revisited_landmark(name) == landmark


def test_image_table_of_a_revisited_set_with_distractors(tiny_revisited, tmp_path):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    (tmp_path / "d" / "jpg").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "jpg" / "x.jpg")
    (tmp_path / "d" / "list.txt").write_text("x.jpg\n")
    table = image_table(ds.with_distractors(Distractors.from_list(tmp_path / "d", "list.txt")))
    assert table["role"].value_counts().to_dict() == {"database": 6, "query": 2, "distractor": 1}
    assert table.loc[table["role"] == "query", "label"].tolist() == ["q", "q"]
    assert table.iloc[-1]["label"] == "" and table.iloc[-1]["path"].endswith("x.jpg")
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    train = image_table(TrainSet(["a.jpg", "b.jpg"], [7, 3], root=tmp_path))
    assert train.to_dict("list") == {
        "path": [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")],
        "label": ["7", "3"],
        "role": ["train", "train"],
    }
    with pytest.raises(TypeError, match="no image table for list"):
        image_table([])


@pytest.mark.parametrize(
    ("name", "means", "no_easy"),
    [
        # datasets.md §1.2: mean positives E / M / H, and the queries without an easy positive.
        ("roxford5k", (43.3, 78.9, 35.7), ["balliol_000187", "hertford_000082"]),
        ("rparis6k", (98.2, 246.1, 147.9), []),
    ],
)
def test_positives_per_query_on_the_real_ground_truth(tmp_path, name, means, no_easy):
    gnd = shared_path("data", "revisitop", f"gnd_{name}.pkl")
    (tmp_path / name).mkdir()
    shutil.copy(gnd, tmp_path / name)
    per_query = positives_per_query(RevisitedDataset.from_root(tmp_path, name))
    assert len(per_query) == 70
    assert per_query["E"].mean() == pytest.approx(means[0], abs=0.05)
    assert per_query["M"].mean() == pytest.approx(means[1], abs=0.05)
    assert per_query["H"].mean() == pytest.approx(means[2], abs=0.05)
    assert per_query.index[per_query["E"] == 0].tolist() == no_easy
    assert (per_query["M"] == per_query["easy"] + per_query["hard"]).all()


def test_image_sizes_read_headers_and_sample(tiny_revisited):
    paths = sorted((tiny_revisited / "jpg").glob("*.jpg")) + [tiny_revisited / "jpg" / "gone.jpg"]
    sizes = image_sizes(paths)
    assert sizes["width"].tolist()[:2] == [64.0, 96.0] and sizes["height"].tolist()[:2] == [96.0, 64.0]
    assert sizes["aspect"].tolist()[:2] == pytest.approx([2 / 3, 1.5])
    assert np.isnan(sizes.iloc[-1]["width"])
    sample = image_sizes(paths, sample=3, seed=1)
    assert len(sample) == 3 and sample["path"].tolist() == image_sizes(paths, sample=3, seed=1)["path"].tolist()
    assert set(sample["path"]) <= {str(p) for p in paths}


def _jpeg(path, color) -> bytes:
    Image.new("RGB", (64, 48), color).save(path, quality=90)
    return path.read_bytes()


def test_scan_finds_missing_corrupt_duplicate_and_repeated_files(tmp_path):
    good = tmp_path / "good.jpg"
    data = _jpeg(good, (200, 10, 10))
    (tmp_path / "copy.jpg").write_bytes(data)
    _jpeg(tmp_path / "other.jpg", (10, 200, 10))
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    listed = [good, tmp_path / "copy.jpg", tmp_path / "other.jpg", tmp_path / "truncated.jpg"]
    listed += [tmp_path / "text.jpg", tmp_path / "missing.jpg", tmp_path / "other.jpg"]
    report = scan_images(listed, progress=False)
    assert report.n_files == 7 and not report.ok
    assert report.missing == [str(tmp_path / "missing.jpg")]
    assert sorted(report.corrupt) == [str(tmp_path / "text.jpg"), str(tmp_path / "truncated.jpg")]
    assert "truncated" in report.corrupt[str(tmp_path / "truncated.jpg")].lower()
    assert report.duplicates == [[str(good), str(tmp_path / "copy.jpg")]]
    assert report.repeated == [str(tmp_path / "other.jpg")]
    assert report.summary().startswith("7 files: 1 missing, 2 corrupt, 1 groups of identical files (1 redundant")
    frame = report.to_frame()
    assert frame["problem"].value_counts().to_dict() == {"corrupt": 2, "missing": 1, "duplicate": 1, "repeated": 1}
    report.save(tmp_path / "scan.json")
    import json

    saved = json.loads((tmp_path / "scan.json").read_text())
    assert saved["missing"] == report.missing and saved["summary"] == report.summary()
    assert scan_images([good, tmp_path / "other.jpg"], progress=False).ok


def test_scan_of_the_demo_pickle_layout_is_clean(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    report = scan_images(image_table(ds)["path"], progress=False)
    assert report.ok, report.summary()
    with open(tiny_revisited / "gnd_tiny.pkl", "rb") as f:
        assert len(pickle.load(f)["imlist"]) + 2 == report.n_files
