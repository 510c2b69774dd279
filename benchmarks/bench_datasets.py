"""GLDv2-clean at full size: parsing ``train_clean.csv`` and indexing the image folder, against a per-row baseline.

A generated ``train_clean.csv`` with GLDv2-clean's counts (81,313 landmarks, 1,580,470 image ids; ids 16 hex
characters, space-separated in one field) is parsed and turned into a training set (labels, relative paths, the
missing-file check against the folder listing; the images are absent, so every file is reported missing and
skipped). Baseline: the straightforward loader — ``csv.reader`` row by row, a ``Path`` per id, ``os.path.exists``
per file. Both must find the same counts.

Run: ``.venv/bin/python benchmarks/bench_datasets.py [--landmarks 81313] [--images 1580470]``
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from irlib.data.gldv2 import gldv2_counts, gldv2_train


def write_csv(path: Path, landmarks: int, images: int) -> None:
    rng = np.random.default_rng(0)
    ids = np.array([f"{v:016x}" for v in rng.integers(0, 2**63, images, dtype=np.int64)])
    cuts = np.sort(rng.choice(np.arange(1, images), landmarks - 1, replace=False))
    landmark_ids = np.sort(rng.choice(200_000, landmarks, replace=False))
    with open(path, "w", newline="") as f:
        f.write("landmark_id,images\n")
        for lid, group in zip(landmark_ids, np.split(ids, cuts), strict=True):
            f.write(f"{lid},{' '.join(group)}\n")


def baseline(root: Path) -> tuple[int, int, int]:
    """Row-by-row parse, one Path and one stat per image: (classes, images, missing)."""
    classes, paths = set(), []
    with open(root / "train_clean.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for landmark_id, images in reader:
            classes.add(int(landmark_id))
            for image_id in images.split(" "):
                paths.append(root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg")
    missing = sum(not os.path.exists(p) for p in paths)
    return len(classes), len(paths), missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landmarks", type=int, default=81_313)
    parser.add_argument("--images", type=int, default=1_580_470)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_csv(root / "train_clean.csv", args.landmarks, args.images)
        (root / "train").mkdir()
        size = (root / "train_clean.csv").stat().st_size
        print(f"generated train_clean.csv: {size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        counts = gldv2_counts(root)
        t_counts = time.perf_counter() - t0
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = gldv2_train(root, on_missing="skip")
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        classes, images, missing = baseline(root)
        t_base = time.perf_counter() - t0

    assert (counts.classes, counts.images) == (classes, images) == (args.landmarks, args.images)
    assert len(dataset.dropped) == missing == images
    print(f"irlib gldv2_counts (parse only):                 {t_counts:.2f} s")
    print(f"irlib gldv2_train (parse, labels, paths, check):  {t_train:.2f} s")
    print(f"baseline (csv rows, Path + os.path.exists each):  {t_base:.2f} s ({t_base / t_train:.1f}x slower)")


if __name__ == "__main__":
    main()
