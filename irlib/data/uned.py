"""UnED, the Universal Embedding Dataset (Ypsilantis et al., ICCV 2023; ``datasets.md`` §6).

Layout (nikosips/Universal-Image-Embeddings): ``<root>/info_files/<domain>/<split>.json`` (from ``info_files.zip``),
each a list of ``{"path": <path relative to <root>/images>, "class_id": int | list[int]}``, and the images under
``<root>/images/`` (``cars/car_ims``, ``food2k/Food2k_complete``, ``gldv2/images/...``, ``rp2k/all/...``, ...).

For training (:func:`uned_split`), a list ``class_id`` (multi-label) contributes its **first** id. Class ids restart
at 0 in every domain, so each domain's ids are shifted by an offset (the summed class-id ranges of the domains before
it, in :data:`DOMAINS` order) to make them unique; the offsets are saved with the label map and reused from it.

For the kNN benchmark (:func:`uned_knn`), every id of a list is kept (a query matches an index item of any of them,
as in the reference ``knn_utils.py``), and the offsets are computed over the query and index splits together.

RP2K paths contain non-ASCII characters. Like the reference ``convert_to_tfrecord_from_file.py``, a path that is
missing in its raw form is looked up in the escaped form (``\\uXXXX`` -> ``#UXXXX``, ``\\xXX`` -> ``#U00XX``);
the reference does this for RP2K only, irlib for any non-ASCII path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from irlib.data.train_set import OnMissing, PathList, TrainSet, read_label_map

__all__ = [
    "DOMAINS",
    "KNN_SPLITS",
    "SPLITS",
    "UNED_SIZES",
    "UnEDKnn",
    "escaped_path",
    "image_domains",
    "label_domains",
    "uned_knn",
    "uned_split",
]

DOMAINS: tuple[str, ...] = ("cars", "sop", "inshop", "inat", "met", "gldv2", "food2k", "rp2k")
"""The 8 UnED domains, in the order of their domain index (``dataset_infos.py``)."""

SPLITS: tuple[str, ...] = ("train", "val", "test", "index", "small_index")

UNED_SIZES: dict[str, dict[str, int]] = {
    "cars": {"train_classes": 78, "train": 6_346, "val": 1_708, "test": 8_131},
    "sop": {"train_classes": 9_054, "train": 48_942, "val": 10_609, "test": 60_502},
    "inshop": {"train_classes": 3_198, "train": 20_897, "val": 4_982, "test": 14_218, "index": 12_612},
    "inat": {"train_classes": 4_552, "train": 273_929, "val": 51_917, "test": 136_093},
    "met": {"train_classes": 224_408, "train": 397_121, "val": 129, "test": 1_003, "index": 397_121},
    "gldv2": {"train_classes": 73_182, "train": 1_422_914, "val": 157_556, "test": 1_129, "index": 761_757},
    "food2k": {"train_classes": 900, "train": 472_349, "val": 49_323, "test": 9_979},
    "rp2k": {"train_classes": 1_074, "train": 188_724, "val": 17_185, "test": 10_931},
}
"""Published split sizes (``datasets.md`` §6.1), checked by ``uned_split(..., strict=True)``."""

_SEPARATE_INDEX = {"test": {"inshop": "index", "met": "index", "gldv2": "index"}, "val": {"met": "small_index"}}
KNN_SPLITS: dict[str, dict[str, tuple[str, str]]] = {
    split: {d: (split, _SEPARATE_INDEX[split].get(d, split)) for d in DOMAINS} for split in ("test", "val")
}
"""``KNN_SPLITS[split][domain] = (query split, index split)`` of the kNN evaluations ``test_knn`` and ``val_knn``
(``datasets.py`` ``DATASET_INFO``): test -> test except inshop/met/gldv2 (test -> index), val -> val except met
(val -> small_index). A domain whose two splits are the same throws its first neighbour (``throw_1st``)."""

Label = int | tuple[int, ...]
"""A global UnED label: one class id, or the ids of a multi-label ``class_id`` list, shifted by the domain offset."""

_Entries = tuple[list[str], np.ndarray, dict[int, tuple[int, ...]]]
"""An info file read by ``_read_info``: paths, first class id of each entry, all ids of the multi-label entries."""


def uned_split(
    root: str | os.PathLike,
    domains: str | Iterable[str] | None = None,
    split: str = "train",
    transform: Callable[[Any], Any] | None = None,
    *,
    on_missing: OnMissing = "error",
    label_map: str | os.PathLike | None = None,
    strict: bool = False,
) -> TrainSet:
    """One split of some (default all) UnED domains as a :class:`TrainSet` with labels unique across domains.

    ``dataset.info`` records the domains, their offsets and class-id ranges, per-domain image counts, how many
    entries were multi-label (first id used) and how many paths resolved to their escaped form.
    ``label_map``: a file saved from an earlier run; its domain offsets and labels are reused.
    ``strict``: raise unless the sizes match :data:`UNED_SIZES` (for the complete data).
    """
    root = Path(root)
    names = _domains(domains)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; UnED info files are {SPLITS}")
    entries = {d: _read_info(root / "info_files" / d / f"{split}.json") for d in names}
    widths = {d: (int(ids.max()) + 1 if len(ids) else 0) for d, (_, ids, _) in entries.items()}
    saved = None
    if label_map is not None:
        saved, saved_info = read_label_map(label_map)
        offsets = _saved_offsets(saved_info, names, widths, label_map)
    else:
        offsets = dict(zip(names, np.cumsum([0] + [widths[d] for d in names[:-1]]).tolist(), strict=True))
    image_root = root / "images"
    paths: list[str] = []
    labels: list[np.ndarray] = []
    escaped = 0
    for d in names:
        rel, ids, _ = entries[d]
        resolved, n_escaped = _resolve(image_root, rel)
        paths += resolved
        escaped += n_escaped
        labels.append(ids + offsets[d])
    info = {
        "source": "uned",
        "split": split,
        "domains": list(names),
        "domain_offsets": offsets,
        "domain_widths": widths,
        "images": {d: len(entries[d][0]) for d in names},
        "classes": {d: len(np.unique(entries[d][1])) for d in names},
        "multi_label_entries": {d: len(entries[d][2]) for d in names},
        "escaped_paths": escaped,
    }
    if strict:
        _check_sizes(info, split)
    return TrainSet(
        paths,
        np.concatenate(labels) if labels else np.empty(0, np.int64),
        root=image_root,
        name=f"uned-{split}",
        transform=transform,
        label_map=saved,
        on_missing=on_missing,
        info=info,
    )


def label_domains(dataset: TrainSet) -> np.ndarray:
    """``(C,)`` int64: the domain of every contiguous label of a :func:`uned_split` set, as an index into
    ``dataset.info["domains"]``, read off the label's original (offset) id and the domains' ``[offset, offset +
    width)`` ranges; a per-domain classifier and the domain samplers use it."""
    info = dataset.info
    if info.get("source") != "uned" or "domain_offsets" not in info:
        raise ValueError(f"dataset {dataset.name!r} is not a UnED split: its info has no domain offsets")
    names = info["domains"]
    starts = np.array([info["domain_offsets"][d] for d in names], dtype=np.int64)
    stops = starts + np.array([info["domain_widths"][d] for d in names], dtype=np.int64)
    ids = dataset.original_ids
    domain = np.searchsorted(starts, ids, side="right") - 1
    if len(ids) and (domain.min() < 0 or (ids >= stops[domain]).any()):
        raise ValueError(f"dataset {dataset.name!r}: label ids outside every domain's range {starts}-{stops}")
    return domain.astype(np.int64)


def image_domains(dataset: TrainSet) -> np.ndarray:
    """``(N,)`` int64: the domain index (into ``dataset.info["domains"]``) of every image of a :func:`uned_split`
    set."""
    return label_domains(dataset)[dataset.labels]


@dataclass(frozen=True, eq=False)
class UnEDKnn:
    """The UnED merged kNN benchmark (``knn_utils.run_merged_knn``): the queries of every chosen domain and the
    concatenated index of all of them, ready for :func:`irlib.eval.metrics.uned_merged_metrics`.

    Attributes:
        root: the UnED root.
        split: ``"test"`` (the benchmark) or ``"val"``.
        domains: the chosen domains, in :data:`DOMAINS` order.
        query_paths, index_paths: :class:`PathList` of image paths, domain after domain.
        query_labels, index_labels: one :data:`Label` per item: the ``class_id`` plus the domain offset, so the same
            class id gets the same label in a domain's query and index splits and domains never share a label.
        query_domains, index_domains: ``(n,)`` arrays of domain names.
        throw_first: domain -> whether its query split is its index split (then the queries are in the index and
            the reference throws each query's first neighbour).
        query_in_index: ``(n_q,)`` int64, the index position of each query of a ``throw_first`` domain (its
            features need not be extracted twice), -1 for the others.
        info: splits, offsets, widths, counts, multi-label entries and escaped paths per domain.
    """

    root: Path
    split: str
    domains: tuple[str, ...]
    query_paths: PathList
    query_labels: list[Label]
    query_domains: np.ndarray
    index_paths: PathList
    index_labels: list[Label]
    index_domains: np.ndarray
    throw_first: dict[str, bool]
    query_in_index: np.ndarray
    info: dict[str, Any]


def uned_knn(root: str | os.PathLike, domains: str | Iterable[str] | None = None, split: str = "test") -> UnEDKnn:
    """The merged kNN benchmark of some (default all) UnED domains from ``<root>/info_files`` (see :class:`UnEDKnn`).

    Query and index splits follow :data:`KNN_SPLITS`; a domain whose query split is its index split reads it once.
    Each domain's offset is the summed class-id ranges (``max id + 1`` over its query and index entries, every id of
    a list included) of the domains before it. Image paths are resolved like :func:`uned_split` but not checked.
    """
    root = Path(root)
    names = _domains(domains)
    if split not in KNN_SPLITS:
        raise ValueError(f"unknown kNN split {split!r}; expected one of {tuple(KNN_SPLITS)}")
    throw_first = {d: KNN_SPLITS[split][d][0] == KNN_SPLITS[split][d][1] for d in names}
    queries = {d: _read_info(root / "info_files" / d / f"{KNN_SPLITS[split][d][0]}.json") for d in names}
    index = {
        d: queries[d] if throw_first[d] else _read_info(root / "info_files" / d / f"{KNN_SPLITS[split][d][1]}.json")
        for d in names
    }
    widths = {d: max(_max_id(queries[d]), _max_id(index[d])) + 1 for d in names}
    offsets = _starts(names, widths)
    index_start = _starts(names, {d: len(index[d][0]) for d in names})
    query_in_index = np.concatenate(
        [
            np.arange(index_start[d], index_start[d] + len(queries[d][0]))
            if throw_first[d]
            else np.full(len(queries[d][0]), -1)
            for d in names
        ]
    ).astype(np.int64)
    query_paths, query_labels, query_domains, query_escaped = _knn_side(root / "images", queries, offsets)
    index_paths, index_labels, index_domains, index_escaped = _knn_side(root / "images", index, offsets)
    info = {
        "source": "uned",
        "split": split,
        "domains": list(names),
        "splits": {d: list(KNN_SPLITS[split][d]) for d in names},
        "domain_offsets": offsets,
        "domain_widths": widths,
        "queries": {d: len(queries[d][0]) for d in names},
        "index_images": {d: len(index[d][0]) for d in names},
        "multi_label_queries": {d: len(queries[d][2]) for d in names},
        "multi_label_index_images": {d: len(index[d][2]) for d in names},
        "escaped_paths": {d: query_escaped[d] + (0 if throw_first[d] else index_escaped[d]) for d in names},
    }
    return UnEDKnn(
        root,
        split,
        tuple(names),
        query_paths,
        query_labels,
        query_domains,
        index_paths,
        index_labels,
        index_domains,
        throw_first,
        query_in_index,
        info,
    )


def escaped_path(path: str) -> str:
    """The reference's escaped spelling of a non-ASCII path: each ``\\uXXXX`` escape -> ``#UXXXX``, ``\\xXX`` ->
    ``#U00XX`` (Python's ``unicode-escape``, lowercase hex)."""
    return path.encode("unicode-escape").decode("ascii").replace("\\u", "#U").replace("\\x", "#U00")


def _domains(domains: str | Iterable[str] | None) -> list[str]:
    if domains is None:
        return list(DOMAINS)
    wanted = [domains] if isinstance(domains, str) else list(domains)
    unknown = [d for d in wanted if d not in DOMAINS]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        raise ValueError(f"domains must be distinct names from {DOMAINS}, got {wanted}")
    return [d for d in DOMAINS if d in wanted]


def _read_info(path: Path) -> _Entries:
    """``(paths, first class id of each entry, {entry: all its ids} for the multi-label entries)``; errors name the
    file and entry."""
    if not path.is_file():
        raise FileNotFoundError(f"UnED info file {path} does not exist (unpack info_files.zip into the UnED root)")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{'path', 'class_id'}} entries, got {type(data).__name__}")
    paths: list[str] = []
    first: list[int] = []
    multi: dict[int, tuple[int, ...]] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "path" not in entry or "class_id" not in entry:
            raise ValueError(f"{path}: entry {i} must be a dict with 'path' and 'class_id', got {entry!r}")
        p, cid = entry["path"], entry["class_id"]
        if not isinstance(p, str) or not p or os.path.isabs(p):
            raise ValueError(f"{path}: entry {i}: 'path' must be a non-empty relative path, got {p!r}")
        ids = cid if isinstance(cid, list) else [cid]
        if not ids:
            raise ValueError(f"{path}: entry {i} ({p}): 'class_id' is an empty list")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in ids):
            raise ValueError(f"{path}: entry {i} ({p}): 'class_id' must be a non-negative int or a list of them")
        paths.append(p)
        first.append(ids[0])
        if len(ids) > 1:
            multi[i] = tuple(ids)
    return paths, np.asarray(first, dtype=np.int64), multi


def _starts(names: list[str], sizes: dict[str, int]) -> dict[str, int]:
    """Where each domain starts when the domains' ranges of ``sizes`` are laid end to end in ``names`` order."""
    return dict(zip(names, np.cumsum([0] + [sizes[d] for d in names[:-1]]).tolist(), strict=True))


def _knn_side(
    image_root: Path, entries: dict[str, _Entries], offsets: dict[str, int]
) -> tuple[PathList, list[Label], np.ndarray, dict[str, int]]:
    """``(paths, global labels, domain of each item, escaped paths per domain)`` of the domains' entries, in order."""
    paths: list[str] = []
    labels: list[Label] = []
    escaped: dict[str, int] = {}
    for d, (rel, first, multi) in entries.items():
        resolved, escaped[d] = _resolve(image_root, rel)
        start = len(labels)
        paths += resolved
        labels += (first + offsets[d]).tolist()
        for i, ids in multi.items():
            labels[start + i] = tuple(c + offsets[d] for c in ids)
    domains = np.repeat(np.array(list(entries), dtype=str), [len(e[0]) for e in entries.values()])
    return (
        PathList(os.fsencode(image_root), np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)),
        labels,
        domains,
        escaped,
    )


def _max_id(entries: _Entries) -> int:
    """The largest class id of an info file's entries (every id of a list), -1 for none."""
    _, first, multi = entries
    return max([int(first.max()) if len(first) else -1] + [max(ids) for ids in multi.values()])


def _resolve(image_root: Path, paths: list[str]) -> tuple[list[str], int]:
    """``(paths, how many were replaced)``: a non-ASCII path missing on disk whose :func:`escaped_path` exists is
    replaced by it (``convert_to_tfrecord_from_file.py``)."""
    out = []
    for p in paths:
        if not p.isascii() and not (image_root / p).exists() and (image_root / escaped_path(p)).exists():
            p = escaped_path(p)
        out.append(p)
    return out, sum(a != b for a, b in zip(out, paths, strict=True))


def _saved_offsets(
    info: dict[str, Any], names: list[str], widths: dict[str, int], source: str | os.PathLike
) -> dict[str, int]:
    offsets = info.get("domain_offsets")
    if not isinstance(offsets, dict) or info.get("domains") != names:
        raise ValueError(f"{source} is not a UnED label map for domains {names} (it has {info.get('domains')})")
    saved_widths = info.get("domain_widths", {})
    grown = [d for d in names if widths[d] > saved_widths.get(d, 0)]
    if grown:
        raise ValueError(f"{source}: domains {grown} now have class ids beyond the saved label map's range")
    return {d: int(offsets[d]) for d in names}


def _check_sizes(info: dict[str, Any], split: str) -> None:
    wrong = []
    for d in info["domains"]:
        expected = UNED_SIZES[d]
        if split in expected and info["images"][d] != expected[split]:
            wrong.append(f"{d}: {info['images'][d]} images, expected {expected[split]}")
        if split == "train" and info["classes"][d] != expected["train_classes"]:
            wrong.append(f"{d}: {info['classes'][d]} classes, expected {expected['train_classes']}")
    if wrong:
        raise ValueError(f"UnED {split} split does not have the published sizes: {'; '.join(wrong)}")
