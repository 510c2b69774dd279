"""Detect training landmarks that are also test landmarks (train-test class overlap), for RGLDv2-clean.

CiDeR (Song et al., "On Train-Test Class Overlap and Detection for Image Retrieval", CVPR 2024) showed that
GLDv2-clean shares landmarks with ROxford/RParis and removed them to make RGLDv2-clean, but did not publish the
list. Their procedure: ANN search of GLDv2-clean with the Oxford/Paris images as queries, SIFT matching with
RANSAC on the hits, removal of the most-matched landmark id, and a human check. This module does the same at
class level with a global descriptor:

1. :func:`sample_class_images` picks a few images per training class (seeded);
2. :func:`irlib.eval.overlap.find_overlaps` embeds them and the test queries (cropped to their boxes, as the
   protocol does; optionally also the database positives) and ranks the classes with :func:`score_classes`;
3. optionally, :func:`verify_pair` counts SIFT + RANSAC inliers on each candidate's best image pair;
4. CiDeR's text step, :func:`irlib.data.landmark_names.match_landmark_names`, matches the GLDv2 category names
   against the test landmarks' names; :func:`merge_candidates` joins its candidates to the visual ones, each
   marked by its evidence (``source``: ``"visual"``, ``"text"`` or ``"both"``);
5. a person reviews the candidates (:class:`irlib.viz.review.OverlapReviewer`) and :func:`write_exclusion_file`
   writes the accepted ids, which :func:`irlib.data.gldv2.rgldv2_clean` reads.

On the demo data (:mod:`irlib.data.synthetic`) the overlaps are planted, so :func:`precision_recall` measures
the detector against the truth in ``demo_info.json``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from irlib.data.images import load_image
from irlib.data.revisited import crop_query
from irlib.io import atomic_path

__all__ = [
    "AGGREGATES",
    "ClassScores",
    "OverlapCandidate",
    "SOURCES",
    "candidates_frame",
    "merge_candidates",
    "precision_recall",
    "precision_recall_curve",
    "sample_class_images",
    "score_classes",
    "verify_pair",
    "write_exclusion_file",
]

Aggregate = Literal["mean", "median", "max"]
AGGREGATES: tuple[str, ...] = ("mean", "median", "max")
Source = Literal["visual", "text", "both"]
SOURCES: tuple[str, ...] = ("visual", "text", "both")
Box = tuple[float, float, float, float]

_CHUNK = 8192  # training descriptors compared with the test set at a time


@dataclass(frozen=True)
class ClassScores:
    """Per-class overlap scores, classes sorted by decreasing score (ties: increasing label).

    Attributes:
        labels: ``(C,)`` class labels.
        scores: ``(C,)`` aggregate over the class's images of each image's best cosine to any test image.
        best_train: ``(C,)`` index (into the training descriptors) of the class's best-matching image.
        matches: ``(N,)`` index (into the test descriptors) of each training image's best-matching test image.
        match_similarity: ``(N,)`` cosine of each training image and its match.
    """

    labels: np.ndarray
    scores: np.ndarray
    best_train: np.ndarray
    matches: np.ndarray
    match_similarity: np.ndarray

    @property
    def best_test(self) -> np.ndarray:
        """``(C,)`` the test image that each class's best-matching image matches."""
        return self.matches[self.best_train]

    @property
    def similarity(self) -> np.ndarray:
        """``(C,)`` cosine of each class's best pair."""
        return self.match_similarity[self.best_train]


@dataclass(frozen=True)
class OverlapCandidate:
    """A training landmark that may also be a test landmark.

    Attributes:
        landmark_id: the training ``landmark_id``.
        score: its class score (see :func:`score_classes`); for a text-only candidate (``source == "text"``) the
            name score of :func:`irlib.data.landmark_names.match_landmark_names` instead.
        similarity: cosine of the (training image, test image) pair shown as evidence: the class's best pair
            or, when verified, the pair with the most inliers; NaN for a text-only candidate.
        train_image: that training image (a text-only candidate: one image of the landmark, or None).
        test_image: that test image (a query, or a database positive with ``include_db``; text-only: a query of
            the test landmark named, or None).
        test_box: the query box the test image was cropped to (``None`` for a database image).
        query: the query whose landmark the test image shows (the test image itself when it is a query; ``""``
            for a text-only candidate without a test set).
        inliers: SIFT + RANSAC inliers of the pair, when verified.
        source: the evidence: ``"visual"`` (descriptors), ``"text"`` (category name) or ``"both"``.
        matched_name: the test-landmark name (or synonym) that the category matched (text evidence).
        category: the training landmark's category name, decoded (text evidence).
        name_score: the name score in [0.5, 1] (text evidence).
        matched_landmark: key (query-name prefix, e.g. ``"paris_invalides"``) of the test landmark that the
            category names (text evidence).
    """

    landmark_id: int
    score: float
    similarity: float
    train_image: Path | None
    test_image: Path | None
    test_box: Box | None
    query: str
    inliers: int | None = None
    source: Source = "visual"
    matched_name: str | None = None
    category: str | None = None
    name_score: float | None = None
    matched_landmark: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


def sample_class_images(labels: np.ndarray, images_per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``images_per_class`` images of every class in ``labels`` ``(N,)``.

    Each class draws from its own stream ``(seed, label)``, so its choice does not depend on the other classes.
    """
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    uniq, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    chosen = []
    for label, start, count in zip(uniq.tolist(), starts.tolist(), counts.tolist(), strict=True):
        members = order[start : start + count]
        if count > images_per_class:
            members = np.random.default_rng([seed, label]).choice(members, images_per_class, replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)


def score_classes(
    train_desc: np.ndarray,
    train_labels: np.ndarray,
    test_desc: np.ndarray,
    *,
    aggregate: Aggregate = "mean",
    center: bool = True,
) -> ClassScores:
    """Score every training class against the test set.

    ``train_desc`` ``(N, D)`` and ``test_desc`` ``(M, D)`` are L2-normalised; ``train_labels`` ``(N,)``. With
    ``center``, the mean training descriptor is subtracted from both sides (then re-normalised): what all
    training photos share (sky, street, the backbone's bias) stops counting as similarity. Each training image
    gets its best cosine to any test image; a class's score is the ``aggregate`` (``"mean"``, ``"median"`` or
    ``"max"``) of its images' best cosines: the mean asks every sampled image to look like a test image, the max
    trusts one.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    train_labels = np.asarray(train_labels, dtype=np.int64)
    if train_desc.ndim != 2 or test_desc.ndim != 2 or train_desc.shape[1] != test_desc.shape[1]:
        raise ValueError(f"descriptor shapes {train_desc.shape} and {test_desc.shape} do not match")
    if len(train_labels) != len(train_desc) or len(test_desc) == 0:
        raise ValueError(f"{len(train_desc)} training descriptors, {len(train_labels)} labels, {len(test_desc)} tests")
    mean = np.asarray(train_desc, np.float32).mean(axis=0) if center else np.zeros(train_desc.shape[1], np.float32)
    best = np.empty(len(train_desc), np.float32)
    match = np.empty(len(train_desc), np.int64)
    test = _normalise(np.asarray(test_desc, np.float32) - mean)
    for start in range(0, len(train_desc), _CHUNK):
        sims = _normalise(np.asarray(train_desc[start : start + _CHUNK], np.float32) - mean) @ test.T
        match[start : start + len(sims)] = sims.argmax(axis=1)
        best[start : start + len(sims)] = sims.max(axis=1)
    uniq, inverse, counts = np.unique(train_labels, return_inverse=True, return_counts=True)
    order = np.lexsort((best, inverse))  # by class, then by increasing best cosine
    ranked = best[order]
    starts = np.cumsum(counts) - counts
    if aggregate == "mean":
        scores = np.bincount(inverse, weights=best) / counts
    elif aggregate == "median":
        scores = (ranked[starts + (counts - 1) // 2] + ranked[starts + counts // 2]) / 2
    else:
        scores = ranked[starts + counts - 1]
    top_image = order[starts + counts - 1]
    by_score = np.lexsort((uniq, -scores))
    return ClassScores(
        labels=uniq[by_score],
        scores=scores[by_score].astype(np.float32),
        best_train=top_image[by_score],
        matches=match,
        match_similarity=best,
    )


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def verify_pair(
    image_a: str | os.PathLike,
    image_b: str | os.PathLike,
    *,
    box_b: Sequence[float] | None = None,
    max_side: int = 640,
    ratio: float = 0.8,
    ransac_threshold: float = 5.0,
) -> int:
    """Inliers of a RANSAC homography between two images' SIFT matches (Lowe's ratio test), 0 when none fits.

    ``image_b`` is cropped to ``box_b`` first (a query box); both are shrunk to at most ``max_side`` pixels.
    """
    keypoints, descriptors = [], []
    sift = cv2.SIFT_create()
    for path, box in ((image_a, None), (image_b, box_b)):
        img = load_image(path)
        if box is not None:
            img = crop_query(img, box)
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        kp, desc = sift.detectAndCompute(np.asarray(img.convert("L")), None)
        keypoints.append(kp)
        descriptors.append(desc)
    if descriptors[0] is None or descriptors[1] is None or len(descriptors[1]) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(descriptors[0], descriptors[1], k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if len(good) < 4:
        return 0
    src = np.float32([keypoints[0][m.queryIdx].pt for m in good])
    dst = np.float32([keypoints[1][m.trainIdx].pt for m in good])
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, ransac_threshold)
    return 0 if mask is None else int(mask.sum())


def candidates_frame(candidates: Sequence[OverlapCandidate]) -> pd.DataFrame:
    """The candidates as a table, one row each in rank order (rank 1 first)."""
    frame = pd.DataFrame([asdict(c) for c in candidates], columns=list(OverlapCandidate.__dataclass_fields__))
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="rank")
    return frame


def merge_candidates(visual: Sequence[OverlapCandidate], text: Sequence[OverlapCandidate]) -> list[OverlapCandidate]:
    """Union of visual and text candidates by ``landmark_id``, each marked by its evidence (CiDeR's two steps).

    A landmark in both lists keeps its visual fields (score, pair, inliers, rank) and gains the text fields
    (``matched_name``, ``category``, ``name_score``, ``matched_landmark``), with ``source="both"``. The visual
    candidates come first in their order, then the text-only ones by decreasing name score (ties: input order).
    A landmark listed twice in one list raises ValueError.
    """
    for what, cands in (("visual", visual), ("text", text)):
        ids = [c.landmark_id for c in cands]
        if len(set(ids)) != len(ids):
            raise ValueError(f"the {what} candidates list a landmark_id twice")
    by_id = {c.landmark_id: c for c in text}
    out = []
    for c in visual:
        t = by_id.pop(c.landmark_id, None)
        if t is None:
            out.append(c)
        else:
            out.append(
                replace(
                    c,
                    source="both",
                    matched_name=t.matched_name,
                    category=t.category,
                    name_score=t.name_score if t.name_score is not None else t.score,
                    matched_landmark=t.matched_landmark,
                )
            )
    rest = sorted(by_id.values(), key=lambda c: -(c.name_score if c.name_score is not None else c.score))
    out += [replace(c, source="text") for c in rest]
    return out


def _ids(ranked: Sequence[OverlapCandidate] | Sequence[int]) -> list[int]:
    return [c.landmark_id if isinstance(c, OverlapCandidate) else int(c) for c in ranked]


def precision_recall(
    ranked: Sequence[OverlapCandidate] | Sequence[int], true_ids: Iterable[int], k: int
) -> tuple[float, float]:
    """``(precision, recall)`` of the first ``k`` ranked candidates (or landmark ids) against ``true_ids``.

    Precision divides by ``k`` even when fewer than ``k`` candidates are given.
    """
    truth = {int(i) for i in true_ids}
    if k < 1 or not truth:
        raise ValueError("need k >= 1 and at least one true id")
    hits = len(set(_ids(ranked)[:k]) & truth)
    return hits / k, hits / len(truth)


def precision_recall_curve(ranked: Sequence[OverlapCandidate] | Sequence[int], true_ids: Iterable[int]) -> pd.DataFrame:
    """Precision and recall at every rank ``k = 1..len(ranked)`` (index ``k``)."""
    truth = {int(i) for i in true_ids}
    if not truth:
        raise ValueError("need at least one true id")
    hits = np.cumsum([i in truth for i in _ids(ranked)])
    k = np.arange(1, len(hits) + 1)
    return pd.DataFrame({"precision": hits / k, "recall": hits / len(truth)}, index=pd.Index(k, name="k"))


def write_exclusion_file(
    path: str | os.PathLike,
    landmark_ids: Iterable[int],
    comments: Sequence[str] = (),
    notes: Mapping[int, str] | None = None,
) -> Path:
    """Write ``landmark_ids`` (sorted, unique) one per line, atomically, for :func:`irlib.data.gldv2.rgldv2_clean`.

    The header records the date, the count and ``comments`` (e.g. the model and how the ids were reviewed);
    ``notes`` adds a trailing comment to an id's line (e.g. its score and matched query).
    """
    ids = sorted({int(i) for i in landmark_ids})
    if any(i < 0 for i in ids):
        raise ValueError("landmark ids must be non-negative")
    notes = notes or {}
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    header = [
        "RGLDv2-clean exclusion list: training landmarks that overlap the test set (CiDeR, CVPR 2024)",
        f"written {stamp} by irlib.data.overlap.write_exclusion_file; {len(ids)} landmark ids",
        *comments,
    ]
    lines = [f"# {part}" for text in header for part in str(text).splitlines()] + ["landmark_id"]
    lines += [f"{i}  # {' '.join(str(notes[i]).split())}" if i in notes else str(i) for i in ids]
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
