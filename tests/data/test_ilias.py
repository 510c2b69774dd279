"""ILIAS core layout: image/text queries, xywh boxes (multi-line), positives, distractors, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from irlib.data.ilias import IliasDataset, read_bbox_file, read_id_files
from irlib.eval.metrics import ilias_map_at_k


def _make(root: Path) -> Path:
    """Two instances in the official layout under ``root/ilias_core``."""
    core = root / "ilias_core"
    files = {
        "red_mug_000/query/Q000_00.jpg": "",
        "red_mug_000/query/Q000_00_bbox.txt": "10 20 30 40\n",
        "red_mug_000/query/Q000_00_url.txt": "https://example.org/a\n",
        "red_mug_000/query/T000.txt": "a red mug with a white handle\n",
        "red_mug_000/pos/P000_00.jpg": "",
        "red_mug_000/pos/P000_00_bbox.txt": "1 2 3 4\n5 6 7 8\n\n",
        "red_mug_000/pos/P000_01.jpg": "",
        "blue_car_001/query/Q001_00.jpg": "",
        "blue_car_001/query/Q001_00_bbox.txt": "0.5 1.5 2 3\n",
        "blue_car_001/query/Q001_01.jpg": "",
        "blue_car_001/query/Q001_01_bbox.txt": "0 0 5 5\n",
        "blue_car_001/pos/P001_00.jpg": "",
        "blue_car_001/pos/P001_00_bbox.txt": "3 3 1 1\n",
    }
    for rel, text in files.items():
        (core / rel).parent.mkdir(parents=True, exist_ok=True)
        (core / rel).write_text(text)
    return core


def test_from_dir_reads_the_official_layout(tmp_path):
    core = _make(tmp_path)
    with gzip.open(tmp_path / "distractor_ids.txt.gz", "wt") as f:
        f.write("00000/abc\n00000/abd\n")
    ds = IliasDataset.from_dir(tmp_path, distractor_ids=tmp_path / "distractor_ids.txt.gz")
    assert ds.root == core
    assert ds.instances == ("blue_car_001", "red_mug_000")
    assert [q.id for q in ds.image_queries] == [
        "blue_car_001/query/Q001_00.jpg",
        "blue_car_001/query/Q001_01.jpg",
        "red_mug_000/query/Q000_00.jpg",
    ]
    np.testing.assert_array_equal(ds.image_queries[0].boxes, [[0.5, 1.5, 2.5, 4.5]])
    np.testing.assert_array_equal(ds.image_queries[2].boxes, [[10, 20, 40, 60]])
    assert [(t.id, t.instance, t.text) for t in ds.text_queries] == [
        ("red_mug_000/query/T000.txt", "red_mug_000", "a red mug with a white handle")
    ]
    np.testing.assert_array_equal(ds.positives[1].boxes, [[1, 2, 4, 6], [5, 6, 12, 14]])
    assert ds.positives[2].boxes.shape == (0, 4)
    assert ds.positives_of("red_mug_000") == ["red_mug_000/pos/P000_00.jpg", "red_mug_000/pos/P000_01.jpg"]
    db = ds.database_ids()
    assert db[-2:] == ["00000/abc", "00000/abd"] and len(db) == 5
    assert not {q.id for q in ds.image_queries} & set(db)
    gt = ds.ground_truth(ds.image_queries + ds.text_queries)
    assert gt == [[0], [0], [1, 2], [1, 2]]
    assert ds.path(db[0]) == core / "blue_car_001/pos/P001_00.jpg"
    scores = np.array([[0.9, 0.1, 0.2, 0.3, 0.0]] * 3 + [[0.0, 0.1, 0.9, 0.8, 0.5]])
    # Text query: order 2 3 4 1 0, hits at ranks 1 and 4; the red mug image query: order 0 3 2 1 4, ranks 3 and 4.
    expected = (1 + 1 + (1 / 3 + 2 / 4) / 2 + (1 + 2 / 4) / 2) / 4
    assert ilias_map_at_k(scores, gt, percent=True) == pytest.approx(100 * expected)
    assert IliasDataset.from_dir(core).distractor_ids == ()


@pytest.mark.parametrize(
    ("rel", "text", "error", "message"),
    [
        ("red_mug_000/query/Q000_00_bbox.txt", "10 20 30\n", ValueError, r"Q000_00_bbox.txt:1: expected 4 numbers"),
        ("red_mug_000/query/Q000_00_bbox.txt", "\n", ValueError, r"Q000_00_bbox.txt: no box"),
        ("red_mug_000/pos/P000_00_bbox.txt", "1 2 3 4\n1 2 -3 4\n", ValueError, r"P000_00_bbox.txt:2: box"),
        ("red_mug_000/pos/P000_09_bbox.txt", "1 2 3 4\n", ValueError, "P000_09_bbox.txt: bbox file without"),
        ("red_mug_000/query/T000.txt", " \n", ValueError, "T000.txt: empty text query"),
        ("red_mug_000/query/notes.md", "x", ValueError, "notes.md: unexpected file"),
    ],
)
def test_malformed_files_are_named(tmp_path, rel, text, error, message):
    core = _make(tmp_path)
    (core / rel).write_text(text)
    with pytest.raises(error, match=message):
        IliasDataset.from_dir(core)


def test_missing_pieces_are_named(tmp_path):
    core = _make(tmp_path)
    (core / "red_mug_000/query/Q000_00_bbox.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Q000_00_bbox.txt is missing"):
        IliasDataset.from_dir(core)
    (core / "red_mug_000/query/Q000_00.jpg").unlink()
    with pytest.raises(ValueError, match="red_mug_000/query holds no image query"):
        IliasDataset.from_dir(core)
    (core / "empty_002").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_002/query is missing"):
        IliasDataset.from_dir(core)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        IliasDataset.from_dir(tmp_path / "nowhere")


def test_distractor_list_errors(tmp_path):
    core = _make(tmp_path)
    ids = tmp_path / "ids.txt"
    ids.write_text("00000/abc\n\n00000/abc\n")
    with pytest.raises(ValueError, match=r"ids.txt:3: '00000/abc' is listed twice \(lines 1 and 3\)"):
        IliasDataset.from_dir(core, distractor_ids=ids)
    ids.write_text("red_mug_000/pos/P000_00.jpg\n")
    with pytest.raises(ValueError, match="ids.txt:1: .* is a core image"):
        IliasDataset.from_dir(core, distractor_ids=ids)


def test_read_bbox_file_multi_line(tmp_path):
    path = tmp_path / "b_bbox.txt"
    path.write_text("0 0 1 2\n3 4 0 0\n")
    np.testing.assert_array_equal(read_bbox_file(path), [[0, 0, 1, 2], [3, 4, 3, 4]])


def _write_id_files(id_dir: Path, *, extra_query: str = "", drop_positive: bool = False) -> None:
    """The official ``image_ids/`` lists (no header) for the instances of :func:`_make`."""
    id_dir.mkdir(parents=True, exist_ok=True)
    queries = ["blue_car_001/query/Q001_00.jpg", "blue_car_001/query/Q001_01.jpg", "red_mug_000/query/Q000_00.jpg"]
    (id_dir / "image_query_ids.txt").write_text("".join(f"{q},0\n" for q in queries) + extra_query)
    (id_dir / "text_query_ids.txt").write_text("red_mug_000/query/T000\n")
    positives = [("blue_car_001/pos/P001_00.jpg", "0.05", "12"), ("red_mug_000/pos/P000_00.jpg", "0.3", "60")]
    if not drop_positive:
        positives.append(("red_mug_000/pos/P000_01.jpg", "0.2", "20"))
    (id_dir / "positive_ids.txt").write_text("".join(",".join(p) + "\n" for p in positives))


def test_id_files_cross_check_the_folders(tmp_path):
    core = _make(tmp_path)
    _write_id_files(tmp_path / "image_ids")
    ds = IliasDataset.from_dir(core, id_dir=tmp_path / "image_ids")
    assert ds.id_files is not None
    assert ds.id_files.positive_info["red_mug_000/pos/P000_00.jpg"] == (0.3, 60)
    assert ds.id_files.text_query_ids == ("red_mug_000/query/T000",)

    _write_id_files(tmp_path / "more", extra_query="red_mug_000/query/Q000_07.jpg,1\n")
    with pytest.raises(ValueError, match=r"image_query_ids.txt: 1 listed ids have no file under .*Q000_07.jpg"):
        IliasDataset.from_dir(core, id_dir=tmp_path / "more")
    _write_id_files(tmp_path / "fewer", drop_positive=True)
    with pytest.raises(ValueError, match=r"1 files under .* are not listed in positive_ids.txt: .*P000_01.jpg"):
        IliasDataset.from_dir(core, id_dir=tmp_path / "fewer")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("positive_ids.txt", "red_mug_000/pos/P000_00.jpg,0.3\n", r"positive_ids.txt:1: expected 3 comma-separated"),
        ("positive_ids.txt", "a/pos/P.jpg,big,3\n", r"positive_ids.txt:1: expected 'id,scale,clutter'"),
        ("text_query_ids.txt", "a/query/T000\n\na/query/T000\n", r"text_query_ids.txt:3: .* listed twice"),
        ("image_query_ids.txt", ",0\n", r"image_query_ids.txt:1: expected at least 1"),
    ],
)
def test_malformed_id_files_name_file_and_line(tmp_path, name, text, message):
    _write_id_files(tmp_path)
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_id_files(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{name} is missing"):
        read_id_files(tmp_path)
