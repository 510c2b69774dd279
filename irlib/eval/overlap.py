"""Train-test overlap detection with a model (CiDeR, Song et al., CVPR 2024): embed sampled training images and
the test images, rank the training classes (:mod:`irlib.data.overlap` holds the scoring, verification, review and
exclusion-file parts that need no model)."""

from __future__ import annotations

import numpy as np

from irlib.data.overlap import Aggregate, Box, OverlapCandidate, sample_class_images, score_classes, verify_pair
from irlib.data.revisited import RevisitedDataset
from irlib.data.train_set import TrainSet
from irlib.eval.extract import ExtractConfig, extract_descriptors
from irlib.models.base import RetrievalModel


def find_overlaps(
    model: RetrievalModel,
    train_set: TrainSet,
    test_set: RevisitedDataset,
    *,
    images_per_class: int = 4,
    top: int | None = 50,
    aggregate: Aggregate = "mean",
    center: bool = True,
    include_db: bool = False,
    verify: bool = False,
    cfg: ExtractConfig = ExtractConfig(image_size=512, scales=(1.0,)),
    seed: int = 0,
    progress: bool = True,
) -> list[OverlapCandidate]:
    """The ``top`` training classes most similar to the test set (all with ``top=None``), best first.

    ``images_per_class`` images of each class (:func:`sample_class_images` with ``seed``) and the test queries,
    cropped to their boxes unless ``cfg.crop_queries`` is off, are embedded by ``model`` with ``cfg``;
    ``include_db`` adds the database images that are easy or hard positives of some query. Classes are ranked by
    :func:`score_classes` with ``aggregate`` and ``center``. ``verify`` pairs each sampled image of a candidate with
    its best-matching test image, counts SIFT + RANSAC inliers (:func:`verify_pair`, a few hundredths of a second a
    pair) and shows the pair with the most; the order does not change.
    """
    chosen = sample_class_images(train_set.original_labels, images_per_class, seed)
    train_paths = [train_set.paths[int(i)] for i in chosen]
    names, queries = list(test_set.qimlist), list(test_set.qimlist)
    boxes: list[Box | None] = [tuple(b) for b in test_set.bbx.tolist()] if cfg.crop_queries else [None] * len(names)
    if include_db:
        shows: dict[int, str] = {}  # database index -> first query listing it as a positive
        for name, entry in zip(test_set.qimlist, test_set.gnd, strict=True):
            for i in entry["easy"] + entry["hard"]:
                shows.setdefault(i, name)
        for i in sorted(shows):
            names.append(test_set.imlist[i])
            queries.append(shows[i])
            boxes.append(None)
    test_paths = [test_set.image_path(n) for n in names]
    train_desc = extract_descriptors(model, train_paths, cfg=cfg, desc="training classes", progress=progress)
    test_desc = extract_descriptors(
        model, test_paths, boxes=boxes, cfg=cfg, dataset=test_set.name, desc="test images", progress=progress
    )
    chosen_labels = train_set.original_labels[chosen]
    scored = score_classes(train_desc, chosen_labels, test_desc, aggregate=aggregate, center=center)
    out = []
    for k in range(len(scored.labels) if top is None else min(top, len(scored.labels))):
        i, inliers = int(scored.best_train[k]), None
        if verify:
            images = np.flatnonzero(chosen_labels == scored.labels[k])
            images = images[np.argsort(-scored.match_similarity[images], kind="stable")]  # ties: higher cosine
            counts = [
                verify_pair(train_paths[j], test_paths[t], box_b=boxes[t])
                for j, t in zip(images, scored.matches[images], strict=True)
            ]
            i, inliers = int(images[np.argmax(counts)]), max(counts)
        t = int(scored.matches[i])
        out.append(
            OverlapCandidate(
                landmark_id=int(scored.labels[k]),
                score=float(scored.scores[k]),
                similarity=float(scored.match_similarity[i]),
                train_image=train_paths[i],
                test_image=test_paths[t],
                test_box=boxes[t],
                query=queries[t],
                inliers=inliers,
            )
        )
    return out
