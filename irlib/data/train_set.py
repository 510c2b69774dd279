"""A classification training set: (image path, original label) pairs with a saved, numerically sorted label map.

Loaders (:mod:`irlib.data.gldv2`, :mod:`irlib.data.uned`) build a :class:`TrainSet`; the training engine reads
``labels``/``num_classes`` for its classifier head and saves the label map with the run, so a resumed run (or a
later evaluation) uses the same contiguous labels.

Differences from SpCa/Token (``spca-training.md`` §2.4, bugs 8 and 20):

* original ids are sorted **numerically** (Token reads them as strings, so ``"10" < "9"``);
* nothing is held out unless :meth:`TrainSet.split_validation` is called. SpCa silently sends
  ``max(1, floor(0.2 n))`` images of every class to validation (``--split 0.8``), so it trains on ~80 % of GLDv2-clean
  and crashes on one-image classes.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from irlib.data.images import load_image
from irlib.io import write_json

__all__ = ["LABEL_MAP_FORMAT", "OnMissing", "PathList", "TrainSet", "read_label_map"]

OnMissing = Literal["error", "skip"]
LABEL_MAP_FORMAT = "irlib.label_map"
_LABEL_MAP_VERSION = 1
_SHOW = 5  # missing files named in messages


class PathList(Sequence[Path]):
    """A read-only view of a set's image paths (built one at a time: sets can hold millions)."""

    def __init__(self, root: bytes, relpaths: np.ndarray) -> None:
        self._root = root
        self._relpaths = relpaths

    def __len__(self) -> int:
        return len(self._relpaths)

    def __getitem__(self, i: int | slice) -> Path | list[Path]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return Path(os.fsdecode(os.path.join(self._root, self._relpaths[i])))

    def __iter__(self) -> Iterator[Path]:
        return (Path(os.fsdecode(os.path.join(self._root, p))) for p in self._relpaths)


class TrainSet(Dataset):
    """Images with contiguous labels ``0..C-1``; ``__getitem__(i) -> (transform(image), label)``.

    Attributes:
        name: dataset name (used in image-decoding errors).
        root: folder the paths are relative to.
        paths: :class:`PathList` of image paths.
        labels: ``(N,)`` int64 contiguous labels.
        original_labels: ``(N,)`` int64 labels as listed (e.g. GLDv2 ``landmark_id``).
        label_map: original id -> contiguous label, original ids in increasing numeric order.
        num_classes: ``len(label_map)``.
        transform: applied to the decoded RGB PIL image; ``None`` returns the PIL image.
        dropped: :class:`PathList` of the files removed by ``on_missing="skip"`` (empty otherwise).
        info: loader metadata (source, counts, ...), saved with the label map.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike] | np.ndarray,
        labels: Sequence[int] | np.ndarray,
        *,
        root: str | os.PathLike = "",
        name: str = "train",
        transform: Callable[[Any], Any] | None = None,
        label_map: Mapping[int, int] | str | os.PathLike | None = None,
        on_missing: OnMissing = "error",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """Build from image ``paths`` (relative to ``root``; a ``bytes`` numpy array is used as is) and their
        original integer ``labels``.

        ``label_map``: a mapping or a file from :meth:`save_label_map`, so a resumed run keeps its labels; every
        listed label must be in it. Without one, the map is built from all listed labels, *before* missing files are
        dropped, so it does not depend on which images happen to be on disk.
        ``on_missing``: ``"error"`` raises FileNotFoundError naming the missing files; ``"skip"`` drops them, warns,
        and lists them in ``dropped``.
        """
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
        if isinstance(paths, np.ndarray) and paths.dtype.kind == "S":
            relpaths = paths
        else:
            relpaths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        original = _as_int64(labels, "labels")
        if relpaths.shape != original.shape or relpaths.ndim != 1:
            raise ValueError(f"{len(relpaths)} paths but {len(original)} labels")
        if label_map is None:
            ids = np.unique(original)
        else:
            ids = _ids_from_mapping(label_map if isinstance(label_map, Mapping) else read_label_map(label_map)[0])
        self._init(os.fsencode(root), relpaths, original, ids, name, transform, dict(info or {}))
        self.labels = _contiguous(original, ids, name)
        self.dropped = PathList(self._root, relpaths[:0])
        missing = self._missing_mask()
        if missing.any():
            self._handle_missing(missing, on_missing)

    def _init(
        self,
        root: bytes,
        relpaths: np.ndarray,
        original: np.ndarray,
        ids: np.ndarray,
        name: str,
        transform: Callable[[Any], Any] | None,
        info: dict[str, Any],
    ) -> None:
        self._root = root
        self._relpaths = relpaths
        self._ids = ids
        self.original_labels = original
        self.name = name
        self.transform = transform
        self.info = info
        self.label_map: dict[int, int] = {int(k): i for i, k in enumerate(ids.tolist())}

    @property
    def root(self) -> Path:
        """Folder the image paths are relative to."""
        return Path(os.fsdecode(self._root))

    @property
    def paths(self) -> PathList:
        """Image paths, as a lazy :class:`PathList`."""
        return PathList(self._root, self._relpaths)

    @property
    def num_classes(self) -> int:
        """Number of contiguous labels (classes of the label map, including any without images)."""
        return len(self._ids)

    @property
    def original_ids(self) -> np.ndarray:
        """Original id of each contiguous label: ``original_ids[label]``."""
        return self._ids.copy()

    def __len__(self) -> int:
        return len(self._relpaths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = load_image(self.paths[i], dataset=self.name)
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])

    def class_counts(self) -> np.ndarray:
        """``(num_classes,)`` number of images per contiguous label."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def missing_files(self) -> list[Path]:
        """Listed files that are not on disk now (one directory listing per folder, not one stat per file)."""
        return [self.paths[i] for i in np.flatnonzero(self._missing_mask())]

    def save_label_map(self, path: str | os.PathLike) -> None:
        """Write the label map (original ids in label order, plus ``info``) atomically as JSON."""
        write_json(
            path,
            {
                "format": LABEL_MAP_FORMAT,
                "version": _LABEL_MAP_VERSION,
                "name": self.name,
                "num_classes": self.num_classes,
                "original_ids": [int(v) for v in self._ids],
                "info": self.info,
            },
        )

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> TrainSet:
        """The images at ``indices``, with the same label map, transform and info."""
        idx = np.asarray(indices, dtype=np.int64)
        sub = TrainSet.__new__(TrainSet)
        sub._init(
            self._root,
            self._relpaths[idx],
            self.original_labels[idx],
            self._ids,
            name or self.name,
            self.transform,
            dict(self.info),
        )
        sub.labels = self.labels[idx]
        sub.dropped = PathList(self._root, self._relpaths[:0])
        return sub

    def split_validation(self, fraction: float, seed: int = 0) -> tuple[TrainSet, TrainSet]:
        """Hold out ``floor(fraction * n)`` random images of each class (capped at ``n - 1``) -> ``(train, val)``.

        Off unless called. Unlike SpCa (which always holds out ``max(1, floor(0.2 n))`` per class, ``--split 0.8``)
        every class keeps at least one training image, and one-image classes stay entirely in train. Both parts keep
        the full label map. Deterministic given ``seed``.
        """
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(len(self)), self.labels))  # by class, random within class
        counts = self.class_counts()
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        rank = np.empty(len(self), dtype=np.int64)
        rank[order] = np.arange(len(self)) - np.repeat(starts, counts)
        n_val = np.minimum(np.floor(fraction * counts).astype(np.int64), np.maximum(counts - 1, 0))
        is_val = rank < n_val[self.labels]
        return (
            self.subset(np.flatnonzero(~is_val), f"{self.name}:train"),
            self.subset(np.flatnonzero(is_val), f"{self.name}:val"),
        )

    def _missing_mask(self) -> np.ndarray:
        by_dir: dict[bytes, list[int]] = defaultdict(list)
        names: list[bytes] = []
        for i, rel in enumerate(self._relpaths.tolist()):
            folder, sep, fname = rel.rpartition(b"/")
            by_dir[folder or sep].append(i)  # "/x.jpg" lives in "/"
            names.append(fname)
        missing = np.zeros(len(self), dtype=bool)
        for folder, idx in by_dir.items():
            try:
                present = set(os.listdir(os.path.join(self._root, folder) if folder else (self._root or b".")))
            except (FileNotFoundError, NotADirectoryError):
                present = set()
            missing[[i for i in idx if names[i] not in present]] = True
        return missing

    def _handle_missing(self, missing: np.ndarray, on_missing: OnMissing) -> None:
        n = int(missing.sum())
        idx = np.flatnonzero(missing)
        shown = ", ".join(str(self.paths[i]) for i in idx[:_SHOW]) + (", ..." if n > _SHOW else "")
        if on_missing == "error":
            raise FileNotFoundError(
                f"{n} of {len(self)} images of dataset {self.name!r} are missing: {shown} "
                "(pass on_missing='skip' to train without them)"
            )
        self.dropped = PathList(self._root, self._relpaths[idx])
        keep = np.flatnonzero(~missing)
        empty = int(np.count_nonzero(np.bincount(self.labels[keep], minlength=self.num_classes) == 0))
        self._relpaths = self._relpaths[keep]
        self.original_labels = self.original_labels[keep]
        self.labels = self.labels[keep]
        warnings.warn(
            f"dataset {self.name!r}: skipped {n} missing images ({shown}); {len(self)} remain, and {empty} of "
            f"{self.num_classes} classes now have no image (their labels are kept)",
            stacklevel=3,
        )


def read_label_map(path: str | os.PathLike) -> tuple[dict[int, int], dict[str, Any]]:
    """Read a file from :meth:`TrainSet.save_label_map` -> ``(original id -> label, info)``."""
    with open(path) as f:
        obj = json.load(f)
    if not isinstance(obj, dict) or obj.get("format") != LABEL_MAP_FORMAT:
        raise ValueError(f"{path} is not an irlib label map (expected format {LABEL_MAP_FORMAT!r})")
    if obj.get("version") != _LABEL_MAP_VERSION:
        raise ValueError(f"{path}: unsupported label-map version {obj.get('version')!r}")
    ids = obj.get("original_ids")
    if not isinstance(ids, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
        raise ValueError(f"{path}: 'original_ids' must be a list of integers")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: 'original_ids' has duplicates")
    return {v: i for i, v in enumerate(ids)}, dict(obj.get("info") or {})


def _as_int64(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size == 0:
        return arr.astype(np.int64).reshape(-1)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(-1)


def _ids_from_mapping(label_map: Mapping[int, int]) -> np.ndarray:
    """Original ids ordered by their contiguous label; the labels must be exactly ``0..C-1``."""
    items = sorted((int(v), int(k)) for k, v in label_map.items())
    if [v for v, _ in items] != list(range(len(items))):
        raise ValueError("label_map values must be exactly 0..C-1")
    return np.array([k for _, k in items], dtype=np.int64)


def _contiguous(original: np.ndarray, ids: np.ndarray, name: str) -> np.ndarray:
    """Map original ids to their index in ``ids`` (sorted or not); unknown ids raise ValueError."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.searchsorted(sorted_ids, original).clip(max=max(len(ids) - 1, 0))
    known = (sorted_ids[pos] == original) if len(ids) else np.zeros(len(original), dtype=bool)
    if not known.all():
        unknown = np.unique(original[~known])
        raise ValueError(
            f"dataset {name!r}: {len(unknown)} labels are not in the label map (e.g. {unknown[:_SHOW].tolist()})"
        )
    return order[pos].astype(np.int64)
