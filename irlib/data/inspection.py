"""What a dataset holds, before any training or evaluation: images per class, sizes, ground-truth statistics, and a
scan for missing, corrupt and duplicate files (notebook 01).

Every registered dataset becomes one table of images (:func:`image_table`: ``path``, ``label``, ``role``), so the
statistics and the figures of :mod:`irlib.viz.datasets` work the same on ROxf, GLDv2-clean, UnED or ILIAS.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from irlib.data.gldv2 import GLDv2Retrieval
from irlib.data.ilias import IliasDataset
from irlib.data.revisited import Distractors, RevisitedDataset
from irlib.data.train_set import TrainSet
from irlib.io import write_json

__all__ = ["ScanReport", "image_sizes", "image_table", "positives_per_query", "revisited_landmark", "scan_images"]

_NUMBERED = re.compile(r"^(.*?)_?\d+$")


def revisited_landmark(name: str) -> str:
    """The landmark of an Oxford/Paris-style image name: ``all_souls_000013`` -> ``all_souls``."""
    m = _NUMBERED.match(name)
    return m.group(1) if m and m.group(1) else name


def image_table(dataset: Any) -> pd.DataFrame:
    """One row per image: ``path`` (str), ``label`` (class: landmark, instance or training label; ``""`` when the
    set has none, e.g. distractors) and ``role`` (``query``, ``database``, ``distractor``, ``train``, ``positive``,
    ``index``). Accepts the objects :func:`irlib.data.registry.load_dataset` returns."""
    rows: list[tuple[str, str, str]]
    if isinstance(dataset, RevisitedDataset):
        rows = [(str(dataset.image_path(n)), revisited_landmark(n), "query") for n in dataset.qimlist]
        rows += [(str(dataset.image_path(n)), revisited_landmark(n), "database") for n in dataset.imlist]
        rows += [(str(p), "", "distractor") for p in dataset.distractors]
    elif isinstance(dataset, TrainSet):
        labels = dataset.original_labels.astype(str)
        rows = [(str(p), lab, "train") for p, lab in zip(dataset.paths, labels, strict=True)]
    elif isinstance(dataset, IliasDataset):
        rows = [(str(dataset.path(q.id)), q.instance, "query") for q in dataset.image_queries]
        rows += [(str(dataset.path(p.id)), p.instance, "positive") for p in dataset.positives]
    elif isinstance(dataset, GLDv2Retrieval):
        rows = [(str(p), "", "query") for p in dataset.query_paths()]
        rows += [(str(p), "", "index") for p in dataset.index_paths()]
    elif isinstance(dataset, Distractors):
        rows = [(str(p), "", "distractor") for p in dataset.paths]
    else:
        raise TypeError(f"no image table for {type(dataset).__name__}; expected a dataset of irlib.data.registry")
    return pd.DataFrame(rows, columns=["path", "label", "role"])


def positives_per_query(dataset: RevisitedDataset) -> pd.DataFrame:
    """Per query (index: query name): sizes of ``easy``/``hard``/``junk`` and the positives under each protocol,
    ``E`` = easy, ``M`` = easy + hard, ``H`` = hard (revisitop ``example_evaluate.py``)."""
    counts = {k: [len(g[k]) for g in dataset.gnd] for k in ("easy", "hard", "junk")}
    df = pd.DataFrame(counts, index=pd.Index(dataset.qimlist, name="query"))
    return df.assign(E=df["easy"], M=df["easy"] + df["hard"], H=df["hard"])


def image_sizes(
    paths: Sequence[str | os.PathLike], *, sample: int | None = None, seed: int = 0, workers: int = 8
) -> pd.DataFrame:
    """``width``, ``height`` and ``aspect`` (w / h) of images from their headers only (no decoding); with ``sample``,
    of a seeded random subset of that many. Unreadable files get NaN (the scan reports them)."""
    chosen = list(paths)
    if sample is not None and sample < len(chosen):
        idx = np.sort(np.random.default_rng(seed).choice(len(chosen), sample, replace=False))
        chosen = [chosen[i] for i in idx]

    def size(path: str | os.PathLike) -> tuple[float, float]:
        try:
            with Image.open(path) as img:
                return img.size
        except (OSError, UnidentifiedImageError, ValueError):
            return (np.nan, np.nan)

    with ThreadPoolExecutor(workers) as pool:
        wh = np.array(list(pool.map(size, chosen)), dtype=np.float64).reshape(-1, 2)
    return pd.DataFrame({"path": [str(p) for p in chosen], "width": wh[:, 0], "height": wh[:, 1]}).assign(
        aspect=lambda d: d["width"] / d["height"]
    )


@dataclass
class ScanReport:
    """Result of :func:`scan_images`.

    Attributes:
        n_files: files listed.
        missing: listed files that do not exist.
        corrupt: file -> decoding error, for files that exist but do not decode fully (truncated, not an image).
        duplicates: groups (size >= 2) of listed files with identical bytes.
        repeated: paths listed more than once.
    """

    n_files: int
    missing: list[str] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)
    duplicates: list[list[str]] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.duplicates or self.repeated)

    def summary(self) -> str:
        extra = sum(len(g) - 1 for g in self.duplicates)
        return (
            f"{self.n_files} files: {len(self.missing)} missing, {len(self.corrupt)} corrupt, "
            f"{len(self.duplicates)} groups of identical files ({extra} redundant copies), "
            f"{len(self.repeated)} paths listed twice"
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per problem: ``path``, ``problem`` (missing/corrupt/duplicate/repeated), ``detail``."""
        rows = [(p, "missing", "") for p in self.missing]
        rows += [(p, "corrupt", err) for p, err in self.corrupt.items()]
        rows += [(p, "duplicate", f"same bytes as {g[0]}") for g in self.duplicates for p in g[1:]]
        rows += [(p, "repeated", "listed more than once") for p in self.repeated]
        return pd.DataFrame(rows, columns=["path", "problem", "detail"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON (atomically)."""
        write_json(path, {"summary": self.summary(), **asdict(self)})


def scan_images(
    paths: Sequence[str | os.PathLike], *, decode: bool = True, workers: int = 4, progress: bool = True
) -> ScanReport:
    """Check every file: does it exist, does it decode completely (``decode=False`` only reads the header), and
    which files are byte-identical copies of each other (BLAKE2b of the bytes)."""
    listed = [str(p) for p in paths]
    counts = Counter(listed)
    repeated = sorted(p for p, n in counts.items() if n > 1)
    unique = list(counts)

    def check(path: str) -> tuple[str, str | None, str | None]:
        """(path, digest or None, error or None); digest None and error None means missing."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return path, None, None
        except OSError as err:
            return path, None, f"unreadable: {err}"
        try:
            with Image.open(io.BytesIO(data)) as img:
                if decode:
                    img.load()
                else:
                    img.verify()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            return path, None, str(err) or type(err).__name__
        return path, hashlib.blake2b(data, digest_size=16).hexdigest(), None

    report = ScanReport(n_files=len(listed), repeated=repeated)
    by_digest: dict[str, list[str]] = {}
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(check, unique)
        for path, digest, error in tqdm(results, total=len(unique), desc="scan", unit="img", disable=not progress):
            if error is not None:
                report.corrupt[path] = error
            elif digest is None:
                report.missing.append(path)
            else:
                by_digest.setdefault(digest, []).append(path)
    report.duplicates = [group for group in by_digest.values() if len(group) > 1]
    return report
