"""Train-test overlap detection: descriptor-level scoring, and the planted overlaps of the demo data found."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch import nn

from irlib.data.gldv2 import gldv2_train, read_exclusion_file, rgldv2_clean
from irlib.data.overlap import (
    OverlapCandidate,
    candidates_frame,
    merge_candidates,
    precision_recall,
    precision_recall_curve,
    sample_class_images,
    score_classes,
    verify_pair,
    write_exclusion_file,
)
from irlib.data.revisited import RevisitedDataset
from irlib.data.synthetic import DemoConfig, make_demo_data
from irlib.eval.extract import ExtractConfig
from irlib.eval.overlap import find_overlaps
from irlib.models import create_model
from irlib.viz.review import OverlapReviewer

# 4 test landmarks, 3 of them re-photographed as training classes among 10 others: about 3 s to generate.
PLANTED = DemoConfig(
    seed=1,
    n_test_landmarks=4,
    queries_per_landmark=2,
    views_per_landmark=2,
    n_distractors=0,
    n_train_landmarks=10,
    train_views_per_landmark=4,
    n_overlap_landmarks=3,
    image_size=(256, 192),
)


def _unit(*rows: list[float]) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------ descriptor level


def test_score_classes_aggregates_each_images_best_cosine() -> None:
    test = _unit([1, 0, 0], [0, 1, 0])
    # Class 7: one image on test 0, one half-way to test 1; class 3: three images of decreasing match.
    train = _unit([1, 0, 0], [0, 1, 1], [0.6, 0.8, 0], [0, 0.6, 0.8], [0, 0, 1])
    labels = np.array([7, 7, 3, 3, 3])
    best = [1.0, 1 / np.sqrt(2), 0.8, 0.6, 0.0]  # each image's best cosine to a test image
    for aggregate, want in {
        "mean": {7: (best[0] + best[1]) / 2, 3: (best[2] + best[3] + best[4]) / 3},
        "median": {7: (best[0] + best[1]) / 2, 3: best[3]},
        "max": {7: best[0], 3: best[2]},
    }.items():
        s = score_classes(train, labels, test, aggregate=aggregate, center=False)
        assert s.labels.tolist() == [7, 3]  # class 7 scores higher under every aggregate
        np.testing.assert_allclose(s.scores, [want[7], want[3]], rtol=1e-6)
        assert s.best_train.tolist() == [0, 2] and s.best_test.tolist() == [0, 1]
        np.testing.assert_allclose(s.similarity, [1.0, 0.8], rtol=1e-6)


def test_score_classes_breaks_ties_by_label_and_checks_its_input() -> None:
    test = _unit([1, 0])
    s = score_classes(_unit([0, 1], [1, 1], [1, 1]), np.array([5, 9, 2]), test, center=False)
    assert s.labels.tolist() == [2, 9, 5]
    with pytest.raises(ValueError, match="aggregate"):
        score_classes(_unit([1, 0]), np.array([0]), test, aggregate="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shapes"):
        score_classes(_unit([1, 0, 0]), np.array([0]), test)
    with pytest.raises(ValueError, match="labels"):
        score_classes(_unit([1, 0], [0, 1]), np.array([0]), test)


def test_centering_discounts_what_every_training_image_shares() -> None:
    # Every image is mostly the shared direction e3 (sky, street); the test image shows landmark e1 a little.
    train = _unit([0.3, 0, 1], [0, 0.05, 1], [-0.3, 0, 1])  # landmark e1, nearly pure background, other
    test = _unit([0.1, 0, 1])
    labels = np.array([10, 20, 30])
    assert score_classes(train, labels, test, center=False).labels[0] == 20
    centred = score_classes(train, labels, test, center=True)
    assert centred.labels.tolist()[0] == 10
    mean = train.mean(axis=0)
    manual = score_classes(_unit(*(train - mean)), labels, _unit(*(test - mean)), center=False)
    np.testing.assert_allclose(centred.scores, manual.scores, rtol=1e-5)


def test_sample_class_images_is_seeded_per_class() -> None:
    labels = np.repeat(np.arange(40) * 3 + 1, np.arange(40) % 7 + 1)  # classes of 1..7 images
    np.random.default_rng(0).shuffle(labels)
    chosen = sample_class_images(labels, 3, seed=5)
    assert chosen.tolist() == sorted(chosen.tolist()) and len(set(chosen.tolist())) == len(chosen)
    counts = np.bincount(labels[chosen], minlength=labels.max() + 1)
    assert all(counts[c] == min(3, (labels == c).sum()) for c in np.unique(labels))
    assert np.array_equal(sample_class_images(labels, 3, seed=5), chosen)
    assert not np.array_equal(sample_class_images(labels, 3, seed=6), chosen)
    # A class's images do not depend on which other classes are listed.
    keep = np.flatnonzero(labels != labels[0])
    assert set(keep[sample_class_images(labels[keep], 3, seed=5)].tolist()) == set(chosen.tolist()) - set(
        np.flatnonzero(labels == labels[0]).tolist()
    )
    with pytest.raises(ValueError):
        sample_class_images(labels, 0)


def test_precision_recall_at_k_and_over_ranks() -> None:
    ranked = [4, 8, 15, 16, 23]
    assert precision_recall(ranked, {8, 23, 42}, 2) == (0.5, 1 / 3)
    assert precision_recall(ranked, {8, 23, 42}, 5) == (0.4, 2 / 3)
    assert precision_recall(ranked[:2], {8}, 4) == (0.25, 1.0)  # precision counts k, not what is listed
    curve = precision_recall_curve(ranked, [8, 23])
    assert curve.index.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(curve["precision"], [0, 1 / 2, 1 / 3, 1 / 4, 2 / 5])
    np.testing.assert_allclose(curve["recall"], [0, 0.5, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError):
        precision_recall(ranked, [], 3)
    with pytest.raises(ValueError):
        precision_recall(ranked, [4], 0)


def test_exclusion_file_round_trip(tmp_path: Path) -> None:
    path = write_exclusion_file(
        tmp_path / "sub" / "excl.txt", [42, 7, 42, 1000], ["model gem/efficientnet_lite0", "two\nlines"], {7: "a\nb"}
    )
    text = path.read_text()
    assert read_exclusion_file(path) == [7, 42, 1000]
    assert "# model gem/efficientnet_lite0\n# two\n# lines\n" in text and "3 landmark ids" in text
    assert "\n7  # a b\n" in text and "\nlandmark_id\n" in text
    assert [p.name for p in path.parent.iterdir()] == ["excl.txt"]  # no temporary file left
    with pytest.raises(ValueError):
        write_exclusion_file(tmp_path / "bad.txt", [-1])


def test_merge_marks_each_candidate_by_its_evidence() -> None:
    visual = [
        OverlapCandidate(5, 0.6, 0.7, Path("t5.jpg"), Path("q.jpg"), None, "tower_00_000000", 40),
        OverlapCandidate(9, 0.4, 0.5, Path("t9.jpg"), Path("q.jpg"), None, "gate_01_000001"),
    ]
    nan = float("nan")
    text = [
        OverlapCandidate(7, 0.8, nan, None, None, None, "", source="text", matched_name="Gate", name_score=0.8),
        OverlapCandidate(9, 0.9, nan, None, None, None, "", source="text", matched_name="Porte", category="Porte X",
                         name_score=0.9, matched_landmark="gate_01"),
        OverlapCandidate(3, 1.0, nan, None, None, None, "", source="text", matched_name="Tour", name_score=1.0),
    ]  # fmt: skip
    merged = merge_candidates(visual, text)
    assert [(c.landmark_id, c.source) for c in merged] == [(5, "visual"), (9, "both"), (3, "text"), (7, "text")]
    both = merged[1]
    assert (both.score, both.similarity, both.train_image, both.query) == (0.4, 0.5, Path("t9.jpg"), "gate_01_000001")
    assert (both.matched_name, both.category, both.name_score, both.matched_landmark) == (
        "Porte",
        "Porte X",
        0.9,
        "gate_01",
    )
    assert merged[0] == visual[0] and merge_candidates(visual, []) == visual
    frame = candidates_frame(merged)
    assert frame["source"].tolist() == ["visual", "both", "text", "text"]
    with pytest.raises(ValueError, match="text candidates list a landmark_id twice"):
        merge_candidates(visual, [*text, text[0]])
    with pytest.raises(ValueError, match="source must be one of"):
        OverlapCandidate(1, 0.0, 0.0, None, None, None, "", source="name")  # type: ignore[arg-type]


def test_verify_pair_counts_inliers_of_a_homography(tmp_path: Path) -> None:
    photo = Image.fromarray(data.astronaut()).resize((256, 256))
    photo.save(tmp_path / "photo.jpg")
    view = (1.1, 0.1, -10, 0.05, 1.05, -5, 4e-4, 2e-4)  # a perspective view of the same plane
    photo.transform((240, 220), Image.Transform.PERSPECTIVE, view, Image.Resampling.BILINEAR).save(tmp_path / "v.jpg")
    Image.fromarray(data.coffee()).resize((256, 192)).save(tmp_path / "other.jpg")
    Image.new("RGB", (64, 48), (128, 128, 128)).save(tmp_path / "blank.jpg")
    same = verify_pair(tmp_path / "photo.jpg", tmp_path / "v.jpg")
    part = verify_pair(tmp_path / "photo.jpg", tmp_path / "v.jpg", box_b=(0, 0, 120, 110))
    other = verify_pair(tmp_path / "photo.jpg", tmp_path / "other.jpg")
    assert same > 10 * max(other, 5) and 0 < part < same  # the box crops the second image
    assert verify_pair(tmp_path / "photo.jpg", tmp_path / "blank.jpg") == 0


# ------------------------------------------------------------------------------ planted demo overlaps


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("overlap"), PLANTED, progress=False)


@pytest.fixture(scope="module")
def truth(demo: Path) -> dict[int, str]:
    info = json.loads((demo / "demo_info.json").read_text())
    return {int(lid): name for lid, name in info["overlap_landmarks"].items()}


@pytest.fixture(scope="module")
def model() -> Iterator[nn.Module]:
    """The demo model (offline ImageNet weights), run on one thread: other jobs share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield create_model("gem", backbone="efficientnet_lite0", pretrained=True)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def candidates(demo: Path, model: nn.Module) -> list[OverlapCandidate]:
    return find_overlaps(
        model,
        gldv2_train(demo),
        RevisitedDataset.from_dir(demo / "demo"),
        images_per_class=4,
        top=None,
        verify=True,
        cfg=ExtractConfig(image_size=256, scales=(1.0,)),
        progress=False,
    )


def test_planted_overlaps_rank_first(candidates: list[OverlapCandidate], truth: dict[int, str]) -> None:
    n = len(truth)
    at_n, at_2n = precision_recall(candidates, truth, n), precision_recall(candidates, truth, 2 * n)
    print(f"planted overlaps: precision/recall at k={n}: {at_n}, at k={2 * n}: {at_2n}")
    assert at_n == (1.0, 1.0) and at_2n == (0.5, 1.0)
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert len({c.landmark_id for c in candidates}) == len(candidates) == PLANTED.n_train_landmarks + n


def test_candidates_name_the_matched_query_and_pair(
    candidates: list[OverlapCandidate], truth: dict[int, str], demo: Path
) -> None:
    test = RevisitedDataset.from_dir(demo / "demo")
    train = gldv2_train(demo)
    image_class = {str(p): int(lid) for p, lid in zip(train.paths, train.original_labels, strict=True)}
    for c in candidates:
        q = test.qimlist.index(c.query)
        assert c.test_image == test.image_path(c.query) and c.test_box == tuple(test.bbx[q])
        assert image_class[str(c.train_image)] == c.landmark_id
        if c.landmark_id in truth:
            assert c.query.rsplit("_", 1)[0] == truth[c.landmark_id]
    frame = candidates_frame(candidates)
    assert frame.index[0] == 1 and frame["landmark_id"].tolist() == [c.landmark_id for c in candidates]


def test_sift_ransac_separates_planted_pairs(candidates: list[OverlapCandidate], truth: dict[int, str]) -> None:
    planted = [c.inliers for c in candidates if c.landmark_id in truth]
    others = [c.inliers for c in candidates if c.landmark_id not in truth]
    print(f"inliers of the verified pair: planted {planted}, others {others}")
    assert min(planted) > 2 * max(others)
    for c in candidates[:: len(candidates) // 3]:  # the pair shown is the pair counted
        assert verify_pair(c.train_image, c.test_image, box_b=c.test_box) == c.inliers


def test_reviewed_candidates_leave_rgldv2_clean(
    candidates: list[OverlapCandidate], truth: dict[int, str], demo: Path, tmp_path: Path
) -> None:
    reviewer = OverlapReviewer(candidates[: 2 * len(truth)], thumb_size=64)
    for c in candidates[: len(truth)]:
        reviewer.buttons[c.landmark_id][0].click()
    reviewer.write(tmp_path / "exclusions.txt")
    full = gldv2_train(demo)
    cleaned = rgldv2_clean(demo, tmp_path / "exclusions.txt")
    assert set(cleaned.label_map) == set(full.label_map) - set(truth)
    views = PLANTED.train_views_per_landmark
    assert cleaned.info["removed_classes"] == len(truth) and cleaned.info["removed_images"] == len(truth) * views
    assert (cleaned.info["classes"], cleaned.info["images"]) == (full.num_classes - len(truth), len(cleaned))
    assert cleaned.info["exclusions_not_found"] == ()


def test_database_positives_can_join_the_queries(demo: Path, model: nn.Module, truth: dict[int, str]) -> None:
    test = RevisitedDataset.from_dir(demo / "demo")
    found = find_overlaps(
        model,
        gldv2_train(demo),
        test,
        images_per_class=4,
        top=2 * len(truth),
        include_db=True,
        cfg=ExtractConfig(image_size=256, scales=(1.0,)),
        progress=False,
    )
    print("with database positives:", precision_recall(found, truth, len(truth)), [c.test_image.stem for c in found])
    assert precision_recall(found, truth, 2 * len(truth))[1] == 1.0
    for c in found:
        assert c.similarity >= c.score - 1e-6  # unverified: the class's best pair bounds the mean
        if c.test_box is None:  # a database image, shown with the query it is a positive of
            entry = test.gnd[test.qimlist.index(c.query)]
            assert test.imlist.index(c.test_image.stem) in entry["easy"] + entry["hard"]
        if c.landmark_id in truth:
            assert c.query.rsplit("_", 1)[0] == truth[c.landmark_id]
