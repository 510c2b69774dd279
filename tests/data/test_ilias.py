"""ILIAS core layout: image/text queries, xywh boxes (multi-line), positives, distractor lists and shards, errors."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import numpy as np
import pytest

from irlib.data import ilias
from irlib.data.ilias import (
    DISTRACTOR_DIR,
    MINI_ILIAS_IDS,
    IliasDataset,
    index_shards,
    read_bbox_file,
    read_id_files,
    select_distractors,
    shard_members,
)
from irlib.data.images import TarMember
from irlib.data.registry import load_dataset
from irlib.eval.metrics import ilias_map_at_k
from tests.data.test_images import jpeg_bytes, write_shard


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


# --- distractors in webdataset shards -----------------------------------------------------------------------------


def _shards(folder: Path) -> dict[str, TarMember]:
    """Two shards of 8-digit keys as the demo and YFCC100M shards: one JPEG per key, plus non-image members that
    webdataset groups or skips (a JSON of the same key, a ``__meta__`` file, a folder, a name without suffix)."""
    rng = np.random.default_rng(0)

    def jpg() -> bytes:
        return jpeg_bytes(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))

    write_shard(folder / "000001.tar", {"00000010.jpg": jpg(), "00000011.JPG": jpg()})
    write_shard(
        folder / "000000.tar",
        {
            "__index__.txt": b"meta",
            "00000001.jpg": jpg(),
            "00000001.json": b"{}",
            "00000002.jpg": jpg(),
            "README": b"no suffix",
            "00000003.cls": b"7",
        },
    )
    with tarfile.open(folder / "000000.tar", "a") as tar:
        tar.addfile(tarfile.TarInfo("sub"))  # a regular, empty, suffix-less member
    return index_shards(folder, progress=False)


def test_shards_are_indexed_by_webdataset_key_with_the_official_ids(tmp_path):
    index = _shards(tmp_path / "yfcc100m")
    assert list(index) == ["000000.tar/00000001", "000000.tar/00000002", "000001.tar/00000010", "000001.tar/00000011"]
    member = index["000001.tar/00000011"]
    assert member.shard == tmp_path / "yfcc100m" / "000001.tar" and member.name == "00000011.JPG"
    with tarfile.open(member.shard) as tar:
        assert member.read() == tar.extractfile("00000011.JPG").read()
    assert [key for key, _ in shard_members(tmp_path / "yfcc100m" / "000000.tar")] == ["00000001", "00000002"]


def test_the_shard_index_is_cached_and_rescanned_when_a_shard_changes(tmp_path, monkeypatch):
    folder = tmp_path / "yfcc100m"
    first = _shards(folder)
    assert sorted(p.name for p in (folder / ".irlib-index").iterdir()) == ["000000.tar.json", "000001.tar.json"]

    def no_scan(shard):
        raise AssertionError(f"{shard} was scanned again")

    monkeypatch.setattr(ilias, "shard_members", no_scan)
    assert index_shards(folder, progress=False) == first
    write_shard(folder / "000001.tar", {"00000099.jpg": b"x" * 10})
    monkeypatch.undo()
    assert list(index_shards(folder, progress=False))[2:] == ["000001.tar/00000099"]
    elsewhere = tmp_path / "index"
    assert index_shards(folder, index_dir=elsewhere, progress=False).keys() == index_shards(folder).keys()
    assert (elsewhere / "000000.tar.json").is_file()
    (tmp_path / "a-file").write_text("")
    with pytest.warns(UserWarning, match=r"cannot write the shard index .*a-file/000000.tar.json") as warned:
        unsaved = index_shards(folder, index_dir=tmp_path / "a-file", progress=False)
    assert len(warned) == 1 and unsaved == index_shards(folder, progress=False)  # warned once, not per shard


def test_an_id_list_selects_distractors_in_list_order_by_id_or_key(tmp_path):
    index = _shards(tmp_path / "yfcc100m")
    listed = tmp_path / "mini.txt.gz"
    with gzip.open(listed, "wt") as f:
        f.write("000001.tar/00000010\n00000002\n\n00000001,extra\n")  # a bare key: how the official code selects
    ids, members = select_distractors(index, listed)
    assert ids == ("000001.tar/00000010", "000000.tar/00000002", "000000.tar/00000001")
    assert members == tuple(index[i] for i in ids)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            "00000001\n000000.tar/00000404\nnope\n",
            r"mini.txt: 2 listed ids are in none of the shards under .*yfcc100m: ",
        ),
        ("00000001\n000000.tar/00000001\n", r"mini.txt:2: '000000.tar/00000001' names 000000.tar/00000001, listed"),
        ("00000002\n00000002\n", r"mini.txt:2: '00000002' is listed twice"),
    ],
)
def test_id_list_errors_name_the_list_and_the_ids(tmp_path, lines, message):
    index = _shards(tmp_path / "yfcc100m")
    (tmp_path / "mini.txt").write_text(lines)
    with pytest.raises(ValueError, match=message) as err:
        select_distractors(index, tmp_path / "mini.txt")
    if "none of the shards" in message:
        assert "000000.tar/00000404, nope" in str(err.value)


def test_a_key_in_two_shards_is_ambiguous(tmp_path):
    write_shard(tmp_path / "a.tar", {"k.jpg": b"1"})
    write_shard(tmp_path / "b.tar", {"k.jpg": b"2"})
    index = index_shards(tmp_path, progress=False)
    assert list(index) == ["a.tar/k", "b.tar/k"]
    (tmp_path / "ids.txt").write_text("b.tar/k\n")
    assert select_distractors(index, tmp_path / "ids.txt")[0] == ("b.tar/k",)
    (tmp_path / "ids.txt").write_text("k\n")
    with pytest.raises(ValueError, match=r"ids.txt:1: key 'k' is in several shards: a.tar/k, b.tar/k"):
        select_distractors(index, tmp_path / "ids.txt")


def test_bad_shards_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no webdataset shard \(\*.tar\) in"):
        index_shards(tmp_path, progress=False)
    write_shard(tmp_path / "dup.tar", {"k.jpg": b"1", "k.json": b"{}", "k.png": b"2"})
    with pytest.raises(ValueError, match=r"dup.tar: key 'k' has two images, 'k.jpg' and 'k.png'"):
        shard_members(tmp_path / "dup.tar")
    good = tmp_path / "good.tar"
    write_shard(good, {"a.jpg": b"x" * 700, "b.jpg": b"y" * 700})
    raw = good.read_bytes()
    (tmp_path / "garbage.tar").write_bytes(b"\x89PNG not a tar" * 100)
    (tmp_path / "truncated.tar").write_bytes(raw[:1200])  # a.jpg's data is bytes 512-1212
    (tmp_path / "cut.tar").write_bytes(raw[: 1536 + 100])  # inside b.jpg's header
    damaged = bytearray(raw)
    damaged[1536 + 148 : 1536 + 156] = b"garbage!"  # the checksum of b.jpg's header
    (tmp_path / "header.tar").write_bytes(bytes(damaged))
    for name, message in [
        ("garbage.tar", "is corrupt or not an uncompressed tar file"),
        ("truncated.tar", "is truncated: member 'a.jpg' ends after the file"),
        ("cut.tar", "is corrupt: an invalid tar header at byte 1536"),
        ("header.tar", "is corrupt: an invalid tar header at byte 1536"),
    ]:
        with pytest.raises(ValueError, match=rf"tar shard .*{name} {message}"):
            shard_members(tmp_path / name)


def test_from_dir_reads_distractors_from_shards(tmp_path):
    core = _make(tmp_path)
    index = _shards(tmp_path / "yfcc100m")
    full = IliasDataset.from_dir(tmp_path, distractor_shards=tmp_path / "yfcc100m", progress=False)
    assert full.distractor_ids == tuple(index) and full.distractors == tuple(index.values())
    db = full.database_images()
    assert db[:3] == [full.path(p.id) for p in full.positives] and db[0] == core / "blue_car_001/pos/P001_00.jpg"
    assert db[3:] == list(index.values()) and len(full.database_ids()) == len(db) == 7
    (tmp_path / "mini.txt").write_text("00000011\n000000.tar/00000001\n")
    mini = IliasDataset.from_dir(
        tmp_path, distractor_ids=tmp_path / "mini.txt", distractor_shards=tmp_path / "yfcc100m", progress=False
    )
    assert mini.database_ids()[3:] == ["000001.tar/00000011", "000000.tar/00000001"]
    assert mini.database_images()[3:] == [index["000001.tar/00000011"], index["000000.tar/00000001"]]
    ids_only = IliasDataset.from_dir(tmp_path, distractor_ids=tmp_path / "mini.txt")
    assert ids_only.distractor_ids == ("00000011", "000000.tar/00000001") and ids_only.distractors == ()
    with pytest.raises(ValueError, match="2 distractor ids have no images: .* distractor_shards="):
        ids_only.database_images()
    assert IliasDataset.from_dir(core).database_images() == [core / p.id for p in full.positives]


def test_registry_mini_ilias_reads_the_download_layout(tmp_path):
    ilias_dir = tmp_path / "ilias"
    _make(ilias_dir)
    index = _shards(ilias_dir / "yfcc100m")
    (ilias_dir / "image_ids").mkdir()
    (ilias_dir / "image_ids" / MINI_ILIAS_IDS).write_text("00000002\n00000010\n")
    mini = load_dataset("mini-ilias", tmp_path, progress=False)
    assert mini.distractors == (index["000000.tar/00000002"], index["000001.tar/00000010"])
    (tmp_path / "other.txt").write_text("00000011\n")
    assert load_dataset("mini-ilias", tmp_path, ids=tmp_path / "other.txt").distractor_ids == ("000001.tar/00000011",)
    full = load_dataset("ilias", tmp_path, distractor_shards=DISTRACTOR_DIR, progress=False)
    assert full.distractor_ids == tuple(index)
    assert load_dataset("ilias", tmp_path).distractors == ()
    with pytest.raises(ValueError, match=rf"{MINI_ILIAS_IDS}: 1 listed ids are in none of the shards"):
        (ilias_dir / "image_ids" / MINI_ILIAS_IDS).write_text("99999999\n")
        load_dataset("mini-ilias", tmp_path, progress=False)
