"""Tests for the synthetic demo dataset generator (format, determinism, build-once and realism)."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irlib.data import synthetic
from irlib.data.landmark_names import name_tokens
from irlib.data.synthetic import DEMO_DATASET, DemoConfig, make_demo_data

SMALL = DemoConfig(
    seed=3,
    n_test_landmarks=3,
    queries_per_landmark=2,
    views_per_landmark=5,
    n_distractors=4,
    n_train_landmarks=3,
    train_views_per_landmark=2,
    image_size=(160, 120),
    uned_train_classes=2,
    uned_val_classes=1,
    uned_test_classes=2,
    uned_index_only_classes=1,
    uned_views=2,
    ilias_instances=2,
    ilias_distractors=3,
    ilias_shards=2,
)
OUTPUTS = (DEMO_DATASET, "train", "uned", "ilias", "demo_info.json")
# sha256 of gnd_demo.pkl, train_clean.csv and train.csv of SMALL, as generator version 2 (before the UnED and ILIAS
# outputs) wrote them: those outputs, and so the demo's numbers, must never change by accident.
SMALL_V2_DIGEST = "7faf5d488bd7a2b4baf77e8e47a8406afe457adfad6627070f9c0ba1c9f0c2de"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo"), SMALL, progress=False)


@pytest.fixture(scope="module")
def gnd(root: Path) -> dict:
    with open(root / DEMO_DATASET / f"gnd_{DEMO_DATASET}.pkl", "rb") as f:
        return pickle.load(f)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _stats(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _image(root: Path, name: str) -> Image.Image:
    return Image.open(root / DEMO_DATASET / "jpg" / f"{name}.jpg")


def test_gnd_has_the_revisited_structure(gnd: dict) -> None:
    assert set(gnd) == {"imlist", "qimlist", "gnd"}
    assert all(isinstance(n, str) for n in gnd["imlist"] + gnd["qimlist"])
    assert len(gnd["gnd"]) == len(gnd["qimlist"]) == SMALL.n_test_landmarks * SMALL.queries_per_landmark
    n_db = SMALL.n_test_landmarks * SMALL.views_per_landmark + SMALL.n_distractors
    assert len(gnd["imlist"]) == len(set(gnd["imlist"])) == n_db
    for entry in gnd["gnd"]:
        assert set(entry) == {"bbx", "easy", "hard", "junk"}
        assert isinstance(entry["bbx"], list) and len(entry["bbx"]) == 4
        assert all(type(c) is float for c in entry["bbx"])
        for key in ("easy", "hard", "junk"):
            assert isinstance(entry[key], list) and all(type(i) is int for i in entry[key])


def test_names_are_readable(gnd: dict) -> None:
    for name in gnd["imlist"] + gnd["qimlist"]:
        assert re.fullmatch(r"[a-z]+_\d{2}_\d{6}|clutter_\d{6}", name), name
    assert sum(n.startswith("clutter_") for n in gnd["imlist"]) == SMALL.n_distractors


def test_every_image_exists_and_decodes(root: Path, gnd: dict) -> None:
    sizes = {SMALL.image_size, SMALL.image_size[::-1]}
    for name in gnd["imlist"] + gnd["qimlist"]:
        with _image(root, name) as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB" and img.size in sizes


def test_positive_sets_follow_the_protocol(gnd: dict) -> None:
    imlist = gnd["imlist"]
    assert not set(gnd["qimlist"]) & set(imlist)
    for qname, entry in zip(gnd["qimlist"], gnd["gnd"], strict=True):
        easy, hard, junk = entry["easy"], entry["hard"], entry["junk"]
        assert easy and hard, qname
        for ids in (easy, hard, junk):
            assert ids == sorted(set(ids)) and all(0 <= i < len(imlist) for i in ids)
        assert not (set(easy) & set(hard) or set(easy) & set(junk) or set(hard) & set(junk))
        # Every view of the query's landmark is labelled, and nothing else is.
        landmark = qname.rsplit("_", 1)[0]
        same = {i for i, n in enumerate(imlist) if n.rsplit("_", 1)[0] == landmark}
        assert set(easy) | set(hard) | set(junk) == same
        assert len(same) == SMALL.views_per_landmark


def test_query_boxes_lie_inside_the_query_image(root: Path, gnd: dict) -> None:
    for qname, entry in zip(gnd["qimlist"], gnd["gnd"], strict=True):
        x1, y1, x2, y2 = entry["bbx"]
        with _image(root, qname) as img:
            w, h = img.size
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert (x2 - x1) * (y2 - y1) >= 0.05 * w * h


def test_training_split_has_the_gldv2_layout(root: Path, gnd: dict) -> None:
    train = root / "train"
    with open(train / "train_clean.csv", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["landmark_id", "images"]
        clean = {int(lid): images.split(" ") for lid, images in reader}
    with open(train / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "url", "landmark_id"]
    assert len(clean) == SMALL.n_train_landmarks + SMALL.n_overlap_landmarks
    assert all(len(ids) == SMALL.train_views_per_landmark for ids in clean.values())
    assert {r["id"]: int(r["landmark_id"]) for r in rows} == {i: lid for lid, ids in clean.items() for i in ids}
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for image_id in ids:
        assert re.fullmatch(r"[0-9a-f]{16}", image_id)
        path = train / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        with Image.open(path) as img:
            img.load()
    assert not set(ids) & set(gnd["imlist"] + gnd["qimlist"])


def test_category_file_names_every_class_and_plants_name_overlaps(root: Path) -> None:
    info = json.loads((root / "demo_info.json").read_text())
    with open(root / "train" / "train_label_to_category.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        assert next(reader) == ["landmark_id", "category"]
        categories = {int(lid): category for lid, category in reader}
    assert list(categories) == sorted(info["train_landmark_ids"])  # every class once, ids ascending
    assert all(c.startswith("http://commons.wikimedia.org/wiki/Category:") for c in categories.values())
    assert set(info["test_landmark_names"]) == set(info["test_landmarks"]) and info["test_city"] == "Demoville"

    def words(text: str) -> set[str]:
        return set(name_tokens(text))

    named = {key: [words(n) for n in names] for key, names in info["test_landmark_names"].items()}
    overlaps = {int(k): v for k, v in info["overlap_landmarks"].items()}
    text_only = {int(k): v for k, v in info["text_only_landmarks"].items()}
    decoys = {int(k): v for k, v in info["name_decoys"].items()}
    assert len(text_only) == 1 and len(decoys) == 2 and not (set(text_only) | set(decoys)) & set(overlaps)
    for lid, key in {**overlaps, **text_only, **decoys}.items():
        assert any(n <= words(categories[lid]) for n in named[key]), (lid, categories[lid])
    for lid, category in categories.items():
        if lid not in overlaps and lid not in text_only and lid not in decoys:
            assert not any(n <= words(category) for ns in named.values() for n in ns), category


def test_training_landmarks_do_not_reuse_test_murals(monkeypatch: pytest.MonkeyPatch) -> None:
    murals: list[int] = []
    original = synthetic._facade

    def spy(rng: np.random.Generator, kind: str, style: object, mural: Image.Image, assets: object) -> Image.Image:
        murals.append(id(mural))
        return original(rng, kind, style, mural, assets)

    monkeypatch.setattr(synthetic, "_facade", spy)
    assets = synthetic._assets()
    config = DemoConfig(n_test_landmarks=8, n_train_landmarks=16)
    order = synthetic._rng(config.seed, synthetic._S_TILES).permutation(len(assets.tiles))
    synthetic._test_landmarks(config, assets, order)
    test_murals = set(murals)
    murals.clear()
    synthetic._train_landmarks(config, assets, order)
    assert len(test_murals) == 8 and len(set(murals)) == 16
    assert not test_murals & set(murals)


def test_planted_overlaps_photograph_the_named_test_landmarks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(SMALL, n_test_landmarks=4, n_train_landmarks=5, n_overlap_landmarks=2, n_distractors=0)
    drawn: list[str] = []
    rendered: dict[str, str] = {}  # saved file -> landmark photographed
    shot, save = synthetic._landmark_shot, synthetic._save

    def spy_shot(rng: np.random.Generator, lm: synthetic._Landmark, *args: object) -> synthetic._Shot:
        drawn.append(lm.name)
        return shot(rng, lm, *args)

    def spy_save(img: Image.Image, path: Path, config: DemoConfig) -> None:
        rendered[path.stem] = drawn[-1]
        save(img, path, config)

    monkeypatch.setattr(synthetic, "_landmark_shot", spy_shot)
    monkeypatch.setattr(synthetic, "_save", spy_save)
    root = make_demo_data(tmp_path, config, progress=False)
    info = json.loads((root / "demo_info.json").read_text())
    with open(root / "train" / "train_clean.csv", newline="") as f:
        rows = [(int(lid), images.split(" ")) for lid, images in list(csv.reader(f))[1:]]
    planted = {int(lid): name for lid, name in info["overlap_landmarks"].items()}
    assert len(planted) == len(set(planted.values())) == 2  # two distinct test landmarks
    assert set(planted.values()) <= set(info["test_landmarks"])
    for lid, images in rows:
        (name,) = {rendered[i] for i in images}  # all images of a class show one landmark
        assert (name == planted[lid]) if lid in planted else name.startswith("train_")
    # The planted classes hide among the others: rows are in id order, and their ids are not at either end.
    order = [lid for lid, _ in rows]
    assert order == sorted(order)
    positions = sorted(order.index(lid) for lid in planted)
    assert positions not in ([0, 1], [len(order) - 2, len(order) - 1])


def test_planting_overlaps_only_adds_training_images(root: Path, tmp_path: Path) -> None:
    plain = make_demo_data(tmp_path, replace(SMALL, n_overlap_landmarks=0), progress=False)
    files, plain_files = _files(root), _files(plain)
    test_files = {k: v for k, v in files.items() if k.startswith(f"{DEMO_DATASET}/")}
    assert test_files == {k: v for k, v in plain_files.items() if k.startswith(f"{DEMO_DATASET}/")}
    train = {v for k, v in files.items() if k.startswith("train") and k.endswith(".jpg")}
    plain_train = {v for k, v in plain_files.items() if k.startswith("train") and k.endswith(".jpg")}
    assert plain_train < train
    assert len(train - plain_train) == SMALL.n_overlap_landmarks * SMALL.train_views_per_landmark
    assert json.loads((plain / "demo_info.json").read_text())["overlap_landmarks"] == {}


def test_revisited_and_gldv2_outputs_are_those_of_generator_version_2(root: Path) -> None:
    digest = hashlib.sha256()
    for name in (f"{DEMO_DATASET}/gnd_{DEMO_DATASET}.pkl", "train/train_clean.csv", "train/train.csv"):
        digest.update((root / name).read_bytes())
    assert digest.hexdigest() == SMALL_V2_DIGEST


def test_uned_and_ilias_settings_leave_the_other_outputs_unchanged(root: Path, tmp_path: Path) -> None:
    other = replace(
        SMALL, uned_domains=("gldv2",), uned_train_classes=3, uned_views=3, ilias_instances=3, ilias_distractors=4
    )
    files, other_files = _files(root), _files(make_demo_data(tmp_path, other, progress=False))
    for prefix in (f"{DEMO_DATASET}/", "train/"):
        assert {k: v for k, v in files.items() if k.startswith(prefix)} == {
            k: v for k, v in other_files.items() if k.startswith(prefix)
        }
    assert {k for k in other_files if k.startswith("uned/info_files/")} == {
        f"uned/info_files/gldv2/{split}.json" for split in ("train", "val", "test", "index")
    }


def test_an_older_demo_folder_is_rebuilt_once(tmp_path: Path) -> None:
    make_demo_data(tmp_path, SMALL, progress=False)
    for name in ("uned", "ilias"):  # a version-2 folder: no UnED or ILIAS output and an older fingerprint
        synthetic._remove(tmp_path / name)
    (tmp_path / ".demo_complete").write_text("an older fingerprint")
    make_demo_data(tmp_path, SMALL, progress=False)
    assert (tmp_path / "uned" / "info_files").is_dir() and (tmp_path / "ilias" / "ilias_core").is_dir()
    before = _stats(tmp_path)
    make_demo_data(tmp_path, SMALL, progress=False)
    assert _stats(tmp_path) == before


def test_info_json_describes_the_build(root: Path) -> None:
    info = json.loads((root / "demo_info.json").read_text())
    assert info["generator_version"] >= 1
    assert info["config"]["seed"] == SMALL.seed and info["config"]["image_size"] == list(SMALL.image_size)
    counts = info["counts"]
    assert counts["queries"] == SMALL.n_test_landmarks * SMALL.queries_per_landmark
    n_classes = SMALL.n_train_landmarks + SMALL.n_overlap_landmarks
    assert counts["train_landmarks"] == len(info["train_landmark_ids"]) == n_classes
    assert counts["train_images"] == n_classes * SMALL.train_views_per_landmark
    assert counts["overlap_landmarks"] == len(info["overlap_landmarks"]) == SMALL.n_overlap_landmarks
    assert len(info["test_landmarks"]) == SMALL.n_test_landmarks
    assert info["generator_version"] == synthetic._GENERATOR_VERSION
    views, n_test = SMALL.uned_views, SMALL.uned_test_classes
    assert counts["uned"]["cars"] == {"train": 4, "val": 2, "test": n_test * views}
    assert counts["uned"]["gldv2"] == {"train": 4, "val": 2, "test": n_test, "index": n_test + views}
    assert counts["ilias"]["instances"] == SMALL.ilias_instances
    assert counts["ilias"]["distractors"] == SMALL.ilias_distractors and counts["ilias"]["shards"] == 2
    assert not [p for p in root.iterdir() if p.name.startswith(".demo-build-")]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(root: Path, tmp_path: Path) -> None:
    again = make_demo_data(tmp_path / "again", SMALL, progress=False)
    assert _files(again) == _files(root)
    other = _files(make_demo_data(tmp_path / "other", replace(SMALL, seed=4), progress=False))
    jpgs = [k for k in _files(root) if k.endswith(".jpg") and k in other]
    assert sum(_files(root)[k] != other[k] for k in jpgs) > 0.9 * len(jpgs)


def test_build_once_unless_forced_or_config_changes(tmp_path: Path) -> None:
    out = make_demo_data(tmp_path, SMALL, progress=False)
    before = _stats(out)
    assert make_demo_data(tmp_path, SMALL, progress=False) == out
    assert _stats(out) == before
    make_demo_data(tmp_path, SMALL, force=True, progress=False)
    after = _stats(out)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)
    changed = replace(SMALL, jpeg_quality=70)
    make_demo_data(tmp_path, changed, progress=False)
    assert json.loads((out / "demo_info.json").read_text())["config"]["jpeg_quality"] == 70


def test_interrupted_generation_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = []
    original = synthetic._save

    def failing_save(img: Image.Image, path: Path, config: DemoConfig) -> None:
        if len(saved) == 10:
            raise KeyboardInterrupt
        saved.append(path)
        original(img, path, config)

    monkeypatch.setattr(synthetic, "_save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        make_demo_data(tmp_path, SMALL, progress=False)
    assert saved and list(tmp_path.iterdir()) == []


def test_failed_regeneration_keeps_the_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_demo_data(tmp_path, SMALL, progress=False)
    before = _stats(tmp_path)

    def boom(*args: object, **kwargs: object) -> list[int]:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_write_train", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        make_demo_data(tmp_path, SMALL, force=True, progress=False)
    assert _stats(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*OUTPUTS, ".demo_complete"])


@pytest.mark.parametrize(
    "bad",
    [
        {"seed": -1},
        {"n_test_landmarks": 0},
        {"views_per_landmark": 1},
        {"n_distractors": -1},
        {"n_overlap_landmarks": -1},
        {"n_test_landmarks": 2, "n_overlap_landmarks": 3},
        {"image_size": (32, 32)},
        {"jpeg_quality": 0},
    ],
)
def test_invalid_config_is_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        DemoConfig(**bad)


def _colour_histogram(img: Image.Image) -> np.ndarray:
    rgb = np.asarray(img.convert("RGB").resize((64, 64)), np.int64) // 64
    hist = np.bincount((rgb[..., 0] * 16 + rgb[..., 1] * 4 + rgb[..., 2]).ravel(), minlength=64).astype(float)
    hist = np.sqrt(hist / hist.sum())
    return hist / np.linalg.norm(hist)


def _average_precision(scores: np.ndarray, positives: set[int], junk: set[int]) -> float:
    ranked = [i for i in np.argsort(-scores, kind="stable") if i not in junk]
    hits = np.flatnonzero(np.isin(ranked, sorted(positives)))
    return float(np.mean([(k + 1) / (rank + 1) for k, rank in enumerate(hits)]))


def test_colour_histograms_retrieve_above_chance_but_far_from_perfect(tmp_path: Path) -> None:
    config = DemoConfig(
        seed=0,
        n_test_landmarks=6,
        queries_per_landmark=1,
        views_per_landmark=8,
        n_distractors=20,
        n_train_landmarks=0,
        image_size=(160, 120),
    )
    root = make_demo_data(tmp_path, config, progress=False)
    with open(root / DEMO_DATASET / f"gnd_{DEMO_DATASET}.pkl", "rb") as f:
        gnd = pickle.load(f)
    db = np.stack([_colour_histogram(_image(root, n)) for n in gnd["imlist"]])
    aps, chance = [], []
    for qname, entry in zip(gnd["qimlist"], gnd["gnd"], strict=True):
        query = _colour_histogram(_image(root, qname).crop(tuple(round(c) for c in entry["bbx"])))
        positives, junk = set(entry["easy"] + entry["hard"]), set(entry["junk"])
        aps.append(_average_precision(db @ query, positives, junk))
        chance.append(len(positives) / (len(gnd["imlist"]) - len(junk)))
    assert 1.5 * np.mean(chance) < np.mean(aps) < 0.7
