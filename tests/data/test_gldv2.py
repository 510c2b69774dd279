"""Tests for the GLDv2 / GLDv2-clean / RGLDv2-clean loaders on tiny files in the official format."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irlib.data import gldv2
from irlib.data.gldv2 import (
    GLDv2Counts,
    ImageIdTable,
    gldv2_counts,
    gldv2_train,
    landmark_image_counts,
    read_exclusion_file,
    read_image_id_table,
    read_label_to_category,
    read_rgldv2_file,
    rgldv2_clean,
)
from irlib.data.synthetic import DemoConfig, make_demo_data

# landmark_id -> image ids; ids 9, 10, 100 test the numeric sort ("10" < "100" < "9" as strings).
LANDMARKS = {
    100: ["0a1b2c3d4e5f6071", "ffee00112233aabb"],
    9: ["1234567890abcdef", "0a1b2c3d4e5f6072", "9999999999999999"],
    10: ["abcdefabcdef0123"],
    20: ["5555555555555555", "6666666666666666"],
}


def _image_path(root: Path, image_id: str) -> Path:
    return root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _write_clean_csv(path: Path, rows: list[str]) -> None:
    """``train_clean.csv`` as GLDv2 ships it: a ``landmark_id,images`` header, unquoted fields, ``\\n`` lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("landmark_id,images\n" + "".join(f"{r}\n" for r in rows))


def _write_full_csv(path: Path, landmarks: dict[int, list[str]]) -> None:
    rows = [
        f"{i},https://upload.wikimedia.org/wikipedia/commons/{i[0]}/{i}.jpg,{lid}"
        for lid, ids in landmarks.items()
        for i in ids
    ]
    path.write_text("id,url,landmark_id\n" + "".join(f"{r}\n" for r in rows))


@pytest.fixture
def gld(tmp_path: Path) -> Path:
    root = tmp_path / "gldv2"
    for k, ids in enumerate(LANDMARKS.values()):
        for i, image_id in enumerate(ids):
            path = _image_path(root, image_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16 + i, 12), (40 * k, 80, 120)).save(path)
    _write_clean_csv(root / "train_clean.csv", [f"{lid},{' '.join(ids)}" for lid, ids in LANDMARKS.items()])
    _write_full_csv(root / "train.csv", LANDMARKS)
    return root


def test_clean_split_layout_and_numeric_labels(gld: Path) -> None:
    ds = gldv2_train(gld)
    assert len(ds) == 8 and ds.num_classes == 4 and ds.name == "gldv2-clean"
    assert ds.label_map == {9: 0, 10: 1, 20: 2, 100: 3}
    assert ds.paths[0] == gld / "train/0/a/1/0a1b2c3d4e5f6071.jpg"
    expected = [ds.label_map[lid] for lid, ids in LANDMARKS.items() for _ in ids]
    assert ds.labels.tolist() == expected
    img, label = ds[2]
    assert img.size == (16, 12) and label == 0
    assert ds.info["classes"] == 4 and ds.info["images"] == 8 and ds.info["csv"] == str(gld / "train_clean.csv")


def test_full_train_csv_gives_the_same_pairs(gld: Path) -> None:
    clean, full = gldv2_train(gld), gldv2_train(gld, clean=False)
    assert full.name == "gldv2" and list(full.paths) == list(clean.paths)
    assert full.labels.tolist() == clean.labels.tolist()


def test_quoted_fields_and_csv_under_train_folder(gld: Path) -> None:
    (gld / "train_clean.csv").unlink()
    rows = [f'"{lid}","{" ".join(ids)}"' for lid, ids in LANDMARKS.items()]
    _write_clean_csv(gld / "train" / "train_clean.csv", rows)
    assert len(gldv2_train(gld)) == 8


def test_missing_csv_names_the_places_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train_clean\.csv not found.*csv_path="):
        gldv2_train(tmp_path)


def test_exclusion_file_iterable_and_counts(gld: Path) -> None:
    excl = gld / "rgldv2_exclude.txt"
    excl.write_text("# removed landmarks\nlandmark_id\n9\n\n100  # trailing comment\n777\n")
    assert read_exclusion_file(excl) == [9, 100, 777]
    ds = rgldv2_clean(gld, excl)
    assert ds.name == "rgldv2-clean" and len(ds) == 3 and ds.label_map == {10: 0, 20: 1}
    assert (ds.info["removed_classes"], ds.info["removed_images"]) == (2, 5)
    assert list(ds.info["exclusions_not_found"]) == [777]
    same = gldv2_train(gld, exclude=[9, 100])
    assert list(same.paths) == list(ds.paths) and same.labels.tolist() == ds.labels.tolist()
    counts = gldv2_counts(gld, exclude=excl)
    assert counts == GLDv2Counts("rgldv2-clean", str(gld / "train_clean.csv"), 2, 3, 2, 5, (777,))
    assert gldv2_counts(gld).classes == 4 and gldv2_counts(gld, clean=False).images == 8
    excl.write_text("12\nnot-an-id\n")
    with pytest.raises(ValueError, match=r"rgldv2_exclude\.txt:2: .*'not-an-id'"):
        read_exclusion_file(excl)


def test_rgldv2_checks_the_published_counts(gld: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gldv2, "GLDV2_CLEAN_COUNTS", (4, 8))  # pretend the tiny CSV is the complete GLDv2-clean
    monkeypatch.setattr(gldv2, "RGLDV2_CLEAN_COUNTS", (3, 6))
    excl = gld / "excl.txt"
    excl.write_text("20\n")
    assert len(rgldv2_clean(gld, excl)) == 6  # matches: no warning
    excl.write_text("9\n")
    with pytest.warns(UserWarning, match="not the official one"):
        rgldv2_clean(gld, excl)
    with pytest.raises(ValueError, match="not the official one"):
        rgldv2_clean(gld, excl, strict=True)


def test_missing_image_error_or_skip(gld: Path) -> None:
    _image_path(gld, "9999999999999999").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 8 images of dataset 'gldv2-clean'.*9999999999999999\.jpg"):
        gldv2_train(gld)
    with pytest.warns(UserWarning, match="skipped 1 missing"):
        ds = gldv2_train(gld, on_missing="skip")
    assert len(ds) == 7 and list(ds.dropped) == [_image_path(gld, "9999999999999999")]
    assert ds.num_classes == 4


def test_wrong_folder_layout_says_what_was_expected(gld: Path) -> None:
    (gld / "train").rename(gld / "images")
    with pytest.raises(FileNotFoundError, match=r"train is not a folder: GLDv2 images are expected at .*'images'"):
        gldv2_train(gld)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("12a,1234567890abcdee", r"landmark_id must be a non-negative integer, got '12a'"),
        ("-3,1234567890abcdee", r"landmark_id must be a non-negative integer"),
        ("12,", r"empty images field for landmark_id 12"),
        ("12,1234567890abcde", r"image id '1234567890abcde' is not 16 lowercase hexadecimal"),
        ("12,1234567890ABCDEE", r"image id '1234567890ABCDEE' is not 16"),
        ("12,1234567890abcdee  fedcba0987654321", r"image id '' is not 16"),
        ("12,1234567890abcdeg fedcba0987654321", r"image id '1234567890abcdeg'"),
        ("12,1234567890abcdee,extra", r"expected 2 fields"),
        ("12,1234567890abcdé1", r"image id '1234567890abcdé1'"),
    ],
)
def test_malformed_rows_name_file_and_line(gld: Path, row: str, message: str) -> None:
    rows = [f"{lid},{' '.join(ids)}" for lid, ids in LANDMARKS.items()]
    _write_clean_csv(gld / "train_clean.csv", rows[:2] + [row] + rows[2:])
    with pytest.raises(ValueError, match=r"train_clean\.csv:4: " + message):
        gldv2_counts(gld)


def test_image_listed_twice_names_both_lines(gld: Path) -> None:
    rows = [f"{lid},{' '.join(ids)}" for lid, ids in LANDMARKS.items()]
    _write_clean_csv(gld / "train_clean.csv", rows + ["33,abababababababab ffee00112233aabb"])
    with pytest.raises(
        ValueError, match=r"train_clean\.csv:6: image id ffee00112233aabb is listed twice \(lines 2 and 6"
    ):
        gldv2_train(gld)
    with open(gld / "train.csv", "a") as f:
        f.write("1234567890abcdef,https://example.org/x.jpg,9\n")
    with pytest.raises(ValueError, match=r"train\.csv:10: image id 1234567890abcdef is listed twice \(lines 4 and 10"):
        gldv2_counts(gld, clean=False)


def test_bad_header_and_bad_train_csv_rows(gld: Path) -> None:
    (gld / "train_clean.csv").write_text("landmark,images\n1,1234567890abcdef\n")
    with pytest.raises(ValueError, match=r"train_clean\.csv:1: expected the header 'landmark_id,images'"):
        gldv2_counts(gld)
    (gld / "train.csv").write_text("id,url,landmark_id\n1234567890abcdef,u,1\nxyz,u,2\n")
    with pytest.raises(ValueError, match=r"train\.csv:3: image id 'xyz'"):
        gldv2_counts(gld, clean=False)
    (gld / "train.csv").write_text("id,url,landmark_id\n1234567890abcdef,u,\n")
    with pytest.raises(ValueError, match=r"train\.csv:2: landmark_id"):
        gldv2_counts(gld, clean=False)


def test_saved_label_map_survives_an_exclusion(gld: Path) -> None:
    full = gldv2_train(gld)
    full.save_label_map(gld / "labels.json")
    resumed = gldv2_train(gld, exclude=[9], label_map=gld / "labels.json")
    assert resumed.num_classes == 4 and resumed.labels.tolist() == full.labels[full.original_labels != 9].tolist()


def test_demo_training_split_loads(tmp_path: Path) -> None:
    config = DemoConfig(
        seed=1,
        n_test_landmarks=1,
        queries_per_landmark=1,
        views_per_landmark=2,
        n_distractors=0,
        n_train_landmarks=3,
        train_views_per_landmark=2,
        n_overlap_landmarks=0,
        image_size=(96, 72),
    )
    out = make_demo_data(tmp_path / "demo", config, progress=False)
    info = json.loads((out / "demo_info.json").read_text())
    ds = gldv2_train(out)
    assert (ds.num_classes, len(ds)) == (3, 6) == (info["counts"]["train_landmarks"], info["counts"]["train_images"])
    assert list(ds.label_map) == sorted(info["train_landmark_ids"])
    assert np.bincount(ds.labels).tolist() == [2, 2, 2]
    assert ds[5][0].size in ((96, 72), (72, 96))
    full = gldv2_train(out, clean=False)
    assert list(full.paths) == list(ds.paths) and full.labels.tolist() == ds.labels.tolist()


# ------------------------------------------------------------------------------ image-id tables (index_clean.csv)


def test_inclusion_table_keeps_the_listed_images(gld: Path) -> None:
    kept = [i for lid in (10, 20) for i in LANDMARKS[lid]] + LANDMARKS[9][:1]  # landmark 9 loses 2 of its 3 images
    table = gld / "index_clean.csv"
    table.write_text("id\n" + "".join(f"{i}\n" for i in kept))
    read = read_rgldv2_file(table)
    assert isinstance(read, ImageIdTable) and read.kind == "include" and read.id_strings() == kept
    ds = rgldv2_clean(gld, table)
    assert sorted(p.stem for p in ds.paths) == sorted(kept) and ds.label_map == {9: 0, 10: 1, 20: 2}
    info = ds.info
    assert (info["removed_classes"], info["removed_images"], info["image_table"]) == (1, 4, "include")
    assert (info["partially_removed_classes"], info["table_ids_not_found"]) == (1, 0)
    same = gldv2_counts(gld, exclude=read)
    assert (same.classes, same.images) == (3, 4) == (ds.num_classes, len(ds))


def test_exclusion_table_removes_the_listed_images(gld: Path) -> None:
    table = gld / "removed.csv"
    table.write_text("excluded_id\r\n" + "".join(f"{i}\r\n" for i in LANDMARKS[100]) + "\n")  # CRLF, blank end
    ds = rgldv2_clean(gld, table)
    assert ds.label_map == {9: 0, 10: 1, 20: 2} and len(ds) == 6
    assert (ds.info["removed_classes"], ds.info["removed_images"], ds.info["image_table"]) == (1, 2, "exclude")
    assert ds.info["partially_removed_classes"] == 0
    as_exclusion = read_image_id_table(gld / "removed.csv")
    assert as_exclusion.kind == "exclude"
    header_id = gld / "removed_id.csv"
    header_id.write_text("id\n" + "".join(f"{i}\n" for i in LANDMARKS[100]))
    assert read_image_id_table(header_id, kind="exclude").kind == "exclude"
    assert gldv2_counts(gld, exclude=read_image_id_table(header_id, kind="exclude")).images == 6
    with pytest.raises(ValueError, match=r"removed\.csv:1: .*'excluded_id'.*kind='include'"):
        read_image_id_table(table, kind="include")


def test_table_ids_missing_from_the_csv_warn_or_raise(gld: Path) -> None:
    table = gld / "index_clean.csv"
    table.write_text("id\n" + "".join(f"{i}\n" for i in [*LANDMARKS[20], "00000000000000aa", "00000000000000bb"]))
    with pytest.warns(
        UserWarning, match=r"index_clean\.csv: 2 of 4 image ids are not in the training CSV.*00000000000000aa"
    ):
        ds = rgldv2_clean(gld, table)
    assert len(ds) == 2 and ds.info["table_ids_not_found"] == 2
    with pytest.raises(ValueError, match="2 of 4 image ids are not in the training CSV"):
        rgldv2_clean(gld, table, strict=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id\n0a1b2c3d4e5f6071\n0A1B2C3D4E5F6072\n", r"t\.csv:3: image id '0A1B2C3D4E5F6072' is not 16 lowercase hex"),
        ("id\n0a1b2c3d4e5f6071\n\n0a1b2c3d4e5f6072\n", r"t\.csv:3: image id '' is not 16 lowercase hex"),
        ("id\n0a1b2c3d4e5f607\n", r"t\.csv:2: image id '0a1b2c3d4e5f607' is not 16 lowercase hex"),
        ("id\n0a1b2c3d4e5f6071,9\n", r"t\.csv:2: image id '0a1b2c3d4e5f6071,9'"),
        (
            "id\n0a1b2c3d4e5f6071\n0a1b2c3d4e5f6071\n",
            r"t\.csv:3: image id 0a1b2c3d4e5f6071 is listed twice \(lines 2 and 3\)",
        ),
        ("image_id\n0a1b2c3d4e5f6071\n", r"t\.csv:1: unknown header 'image_id'.*'landmark_id'.*'id'.*'excluded_id'"),
    ],
)
def test_malformed_image_tables_name_file_and_line(gld: Path, text: str, message: str) -> None:
    path = gld / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        rgldv2_clean(gld, path)


def test_rgldv2_file_formats_are_told_apart(gld: Path) -> None:
    path = gld / "f.txt"
    for text, want in (("# comment\n9\n", [9]), ("landmark_id  # header\n20\n", [20]), ("12\n", [12]), ("", [])):
        path.write_text(text)
        assert read_rgldv2_file(path) == want
    (gld / "f.csv").write_text("ids\n")
    with pytest.raises(ValueError, match=r"f\.csv:1: unknown header 'ids' of an image-id table: expected 'id'"):
        read_image_id_table(gld / "f.csv")


def test_label_to_category_and_image_counts(gld: Path) -> None:
    path = gld / "train_label_to_category.csv"
    path.write_text(
        "landmark_id,category\n9,http://commons.wikimedia.org/wiki/Category:Eiffel_Tower\n"
        '10,"http://commons.wikimedia.org/wiki/Category:Christ_Church,_Oxford"\n'
    )
    assert read_label_to_category(path) == {
        9: "http://commons.wikimedia.org/wiki/Category:Eiffel_Tower",
        10: "http://commons.wikimedia.org/wiki/Category:Christ_Church,_Oxford",
    }
    path.write_text("landmark_id,category\n9,a\n9,b\n")
    with pytest.raises(ValueError, match=r"train_label_to_category\.csv:3: landmark_id 9 is listed twice"):
        read_label_to_category(path)
    path.write_text("landmark_id,name\n")
    with pytest.raises(ValueError, match=r":1: expected the header 'landmark_id,category'"):
        read_label_to_category(path)
    assert landmark_image_counts(gld) == {9: 3, 10: 1, 20: 2, 100: 2} == landmark_image_counts(gld / "train_clean.csv")


def test_image_table_of_gldv2_clean_size_is_fast(tmp_path: Path) -> None:
    """1.58 M ids (GLDv2-clean's count) in one table: read and matched against a listing in about a second."""
    n = 1_580_470
    keys = np.random.default_rng(0).choice(2**62, size=n, replace=False).astype(np.uint64)
    ids = np.frombuffer(b"".join(f"{k:016x}".encode() for k in keys.tolist()), np.uint8).reshape(n, 16)
    body = np.concatenate([ids, np.full((n, 1), ord("\n"), np.uint8)], axis=1).tobytes()
    (tmp_path / "index_clean.csv").write_bytes(b"id\n" + body[17 * 1565 :])
    start = time.perf_counter()
    table = read_image_id_table(tmp_path / "index_clean.csv")
    keep, fields = gldv2._apply_table(ids, np.arange(n) // 20, table, strict=True)
    elapsed = time.perf_counter() - start
    assert len(table) == n - 1565 and int((~keep).sum()) == 1565 and fields["partially_removed_classes"] == 1
    assert elapsed < 10, f"{elapsed:.1f} s"
