"""Revisited-format loader: the real ROxf/RPar ground truth, query cropping, bad input."""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irlib.data.images import ImageLoadError
from irlib.data.revisited import RevisitedDataset, crop_query


@pytest.fixture(params=["roxford5k", "rparis6k"])
def real(request, revisitop_dir, tmp_path) -> RevisitedDataset:
    """A dataset folder holding a real gnd pickle (images are not redistributable, so none)."""
    name = request.param
    (tmp_path / name).mkdir()
    shutil.copy(revisitop_dir / f"gnd_{name}.pkl", tmp_path / name)
    return RevisitedDataset.from_root(tmp_path, name)


def test_real_files_parse_with_the_published_counts(real):
    expected = {"roxford5k": 4993, "rparis6k": 6322}[real.name]
    assert (real.n_db, real.n_queries) == (expected, 70)
    assert real.bbx.shape == (70, 4) and real.bbx.dtype == np.float64
    assert all(isinstance(v, float) for q in real.gnd for v in q["bbx"])
    assert not set(real.qimlist) & set(real.imlist)
    for q in real.gnd:
        ids = q["easy"] + q["hard"] + q["junk"]
        assert len(set(ids)) == len(ids) and max(ids) < real.n_db
    assert real.image_path(real.imlist[0]) == real.root / "jpg" / f"{real.imlist[0]}.jpg"
    assert len(real.missing_images()) == real.n_db + 70


def test_known_boxes_and_easy_query_count(real):
    if real.name == "roxford5k":
        assert real.bbx[real.qimlist.index("all_souls_000013")].tolist() == [136.5, 34.1, 648.5, 955.7]
        assert sum(bool(q["easy"]) for q in real.gnd) == 68
    else:
        assert real.bbx[real.qimlist.index("paris_defense_000605")].tolist() == [130, 17, 843, 732]
        assert sum(bool(q["easy"]) for q in real.gnd) == 70


def test_crop_modes_on_the_real_fractional_boxes(revisitop_dir):
    gnd = pickle.load(open(revisitop_dir / "gnd_roxford5k.pkl", "rb"))["gnd"]
    img = Image.fromarray(np.arange(1024 * 1024 * 3, dtype=np.uint32).reshape(1024, 1024, 3).astype(np.uint8))
    box = gnd[0]["bbx"]  # [136.5, 34.1, 648.5, 955.7]
    rounded = crop_query(img, box, "round")
    truncated = crop_query(img, box, "trunc")
    # Pillow rounds half to even: 136.5 -> 136, 648.5 -> 648, 34.1 -> 34, 955.7 -> 956
    assert rounded.size == (648 - 136, 956 - 34)
    assert truncated.size == (648 - 136, 955 - 34)
    np.testing.assert_array_equal(np.asarray(rounded)[:921], np.asarray(truncated))


def test_boxes_leaving_the_image_pad_when_rounding_and_clip_when_truncating():
    img = Image.new("RGB", (10, 10), (200, 100, 50))
    assert crop_query(img, [-2.0, 0.0, 12.0, 5.0], "round").size == (14, 5)
    padded = np.asarray(crop_query(img, [-2.0, 0.0, 12.0, 5.0], "round"))
    assert padded[0, 0].tolist() == [0, 0, 0] and padded[0, 5].tolist() == [200, 100, 50]
    assert crop_query(img, [-2.0, 0.0, 12.0, 5.0], "trunc").size == (10, 5)
    with pytest.raises(ValueError, match="crop mode"):
        crop_query(img, [0, 0, 1, 1], "floor")


def _write(root: Path, cfg) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "gnd_toy.pkl", "wb") as f:
        pickle.dump(cfg, f)
    return root


def _toy() -> dict:
    return {
        "imlist": ["a", "b", "c"],
        "qimlist": ["q"],
        "gnd": [{"bbx": [0, 0, 4, 4], "easy": [0], "hard": [1], "junk": [2]}],
    }


def test_images_load_and_queries_are_cropped(tmp_path):
    root = _write(tmp_path / "toy", _toy())
    (root / "jpg").mkdir()
    for name in ["a", "b", "c", "q"]:
        Image.new("RGB", (8, 6), (10, 20, 30)).save(root / "jpg" / f"{name}.jpg")
    ds = RevisitedDataset.from_dir(root)
    assert ds.name == "toy" and ds.missing_images() == []
    assert ds.load_db_image(1).size == (8, 6)
    assert ds.load_query(0).size == (4, 4) and ds.load_query(0, crop=False).size == (8, 6)


def test_missing_and_corrupt_images_name_the_file_and_dataset(tmp_path):
    root = _write(tmp_path / "toy", _toy())
    (root / "jpg").mkdir()
    (root / "jpg" / "b.jpg").write_bytes(b"not a jpeg")
    ds = RevisitedDataset.from_dir(root)
    with pytest.raises(ImageLoadError, match=r"a\.jpg of dataset 'toy' does not exist"):
        ds.load_db_image(0)
    with pytest.raises(ImageLoadError, match=r"b\.jpg of dataset 'toy' is corrupt"):
        ds.load_db_image(1)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("qimlist"), r"missing key\(s\) \['qimlist'\]"),
        (lambda c: c["gnd"][0].pop("hard"), r"lacks field\(s\) \['hard'\]"),
        (lambda c: c["gnd"][0].update(junk=[7]), r"outside \[0, 3\)"),
        (lambda c: c["gnd"][0].update(junk=[0]), "disjoint"),
        (lambda c: c["gnd"][0].update(bbx=[0, 0, 4]), r"\['bbx'\] must be"),
        (lambda c: c["gnd"][0].update(bbx=[5, 0, 4, 4]), "is empty"),
        (lambda c: c["qimlist"].append("r"), "'gnd' has 1 entries but 'qimlist' has 2"),
        (lambda c: c.update(qimlist=["a"]), "must not be database images"),
    ],
)
def test_malformed_ground_truth_names_the_file(tmp_path, mutate, message):
    cfg = _toy()
    mutate(cfg)
    root = _write(tmp_path / "toy", cfg)
    with pytest.raises(ValueError, match=message) as err:
        RevisitedDataset.from_dir(root)
    assert "gnd_toy.pkl" in str(err.value)


def test_folder_errors_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RevisitedDataset.from_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="exactly one gnd_<name>.pkl"):
        RevisitedDataset.from_dir(tmp_path)
    (tmp_path / "roxford5k").mkdir()
    with pytest.raises(FileNotFoundError, match="gnd_roxford5k.pkl does not exist"):
        RevisitedDataset.from_root(tmp_path, "roxford5k")


def _distractor_root(tmp_path: Path, n: int, missing: int = 0) -> Path:
    root = tmp_path / "revisitop1m"
    names = [f"{i % 10}/{i:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names[missing:]):
        (root / "jpg" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (40 * i, 0, 0)).save(root / "jpg" / name)
    (root / "revisitop1m.txt").write_text("\n".join(names) + "\n")
    return root


def test_distractors_extend_the_database_and_stay_negatives(tiny_revisited, tmp_path):
    from irlib.data.revisited import Distractors
    from irlib.eval.extract import ExtractConfig
    from irlib.eval.pipeline import evaluate_model
    from irlib.models import create_model

    base = RevisitedDataset.from_dir(tiny_revisited)
    distractors = Distractors.from_list(_distractor_root(tmp_path, 3))
    ds = base.with_distractors(distractors)
    assert (ds.label, ds.n_db, ds.gnd) == ("tiny+r1m", base.n_db + 3, base.gnd)
    assert ds.db_paths[-3:] == distractors.paths and ds.missing_images() == []
    result = evaluate_model(
        create_model("gem", backbone="efficientnet_lite0"),
        ds,
        ExtractConfig(image_size=64, scales=(1.0,)),
        progress=False,
    )
    assert result.scores.shape == (2, 9) and result.metrics["settings"]["n_db"] == 9
    assert result.metrics["dataset"] == "tiny+r1m"


def test_missing_distractors_error_or_are_skipped_and_counted(tmp_path):
    from irlib.data.revisited import Distractors

    root = _distractor_root(tmp_path, 5, missing=2)
    with pytest.raises(FileNotFoundError, match="2 of 5 distractors listed"):
        Distractors.from_list(root)
    kept = Distractors.from_list(root, on_missing="skip")
    assert len(kept.paths) == 3 and kept.missing == ["0/000000.jpg", "1/000001.jpg"]


def test_db_images_include_the_distractors_in_db_paths_order(tiny_revisited, tmp_path):
    from irlib.data.revisited import Distractors

    ds = RevisitedDataset.from_dir(tiny_revisited).with_distractors(
        Distractors.from_list(_distractor_root(tmp_path, 3))
    )
    assert ds.n_db == 9 and len(ds.db_paths) == 9
    for i in (0, 5, 6, 8):
        assert ds.load_db_image(i).tobytes() == Image.open(ds.db_paths[i]).convert("RGB").tobytes()
    assert ds.load_db_image(8).getpixel((0, 0))[0] == pytest.approx(80, abs=3)  # the third distractor (40 * 2)
    for i in (9, -1):
        with pytest.raises(IndexError, match=rf"database index {i} is outside \[0, 9\) of tiny\+r1m"):
            ds.load_db_image(i)
    ds.distractors[1].unlink()
    with pytest.raises(ImageLoadError, match=r"000001\.jpg of dataset 'tiny\+r1m' does not exist"):
        ds.load_db_image(7)


@pytest.mark.parametrize("image", ["jpg/q_1.jpg", "jpg/db_4.jpg"], ids=["query", "database"])
def test_distractors_that_are_test_images_are_refused(tiny_revisited, tmp_path, image):
    from irlib.data.revisited import Distractors

    base = RevisitedDataset.from_dir(tiny_revisited)
    root = _distractor_root(tmp_path, 2)
    # A list entry that reaches the test set through '..' (root/jpg/../../tiny/<image>).
    (root / "revisitop1m.txt").write_text(f"0/000000.jpg\n../../tiny/{image}\n")
    distractors = Distractors.from_list(root)
    assert distractors.paths[1] != tiny_revisited / image  # not the same Path: only normalisation matches them
    message = rf"1 distractor\(s\) of 'r1m' are query or database images of tiny: .*{image}"
    with pytest.raises(ValueError, match=message):
        base.with_distractors(distractors)


def test_a_ground_truth_is_read_without_running_code_and_bad_files_are_named(tmp_path, tiny_revisited):
    from tests.test_io import _Exploit

    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted"
    (crafted / "jpg").mkdir(parents=True)
    (crafted / "gnd_crafted.pkl").write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": _Exploit(marker)}))
    with pytest.raises(ValueError, match=r"gnd_crafted.pkl: refused: .*revisited ground truth"):
        RevisitedDataset.from_dir(crafted)
    assert not marker.exists()
    good = (tiny_revisited / "gnd_tiny.pkl").read_bytes()
    for name, content in (("empty", b""), ("cut", good[: len(good) // 2]), ("text", b"not a pickle\n")):
        folder = tmp_path / name
        (folder / "jpg").mkdir(parents=True)
        (folder / f"gnd_{name}.pkl").write_bytes(content)
        with pytest.raises(ValueError, match=rf"gnd_{name}.pkl is not a readable revisited ground truth"):
            RevisitedDataset.from_dir(folder)


def test_an_official_name_with_other_contents_is_noted(tmp_path, revisitop_dir):
    official = tmp_path / "roxford5k"
    official.mkdir()
    (official / "gnd_roxford5k.pkl").write_bytes((revisitop_dir / "gnd_roxford5k.pkl").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RevisitedDataset.from_dir(official)  # the published file: no note
    cfg = pickle.loads((revisitop_dir / "gnd_roxford5k.pkl").read_bytes())
    cfg["gnd"][0]["junk"] = cfg["gnd"][0]["junk"][:-1]
    (official / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(cfg))
    with pytest.warns(UserWarning, match="is not the official roxford5k ground truth"):
        RevisitedDataset.from_dir(official)
