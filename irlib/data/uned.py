"""UnED, the Universal Embedding Dataset (Ypsilantis et al., ICCV 2023; ``datasets.md`` §6).

Layout (nikosips/Universal-Image-Embeddings): ``<root>/info_files/<domain>/<split>.json`` (from ``info_files.zip``),
each a list of ``{"path": <path relative to <root>/images>, "class_id": int | list[int]}``, and the images under
``<root>/images/`` (``cars/car_ims``, ``food2k/Food2k_complete``, ``gldv2/images/...``, ``rp2k/all/...``, ...).

For training, a list ``class_id`` (multi-label) contributes its **first** id. Class ids restart at 0 in every
domain, so each domain's ids are shifted by an offset (the summed class-id ranges of the domains before it, in
:data:`DOMAINS` order) to make them unique; the offsets are saved with the label map and reused from it.

RP2K paths contain non-ASCII characters. Like the reference ``convert_to_tfrecord_from_file.py``, a path that is
missing in its raw form is looked up in the escaped form (``\\uXXXX`` -> ``#UXXXX``, ``\\xXX`` -> ``#U00XX``);
the reference does this for RP2K only, irlib for any non-ASCII path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from irlib.data.train_set import OnMissing, TrainSet, read_label_map

__all__ = ["DOMAINS", "SPLITS", "UNED_SIZES", "escaped_path", "uned_split"]

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
        for p in rel:
            if not p.isascii() and not (image_root / p).exists() and (image_root / escaped_path(p)).exists():
                p = escaped_path(p)
                escaped += 1
            paths.append(p)
        labels.append(ids + offsets[d])
    info = {
        "source": "uned",
        "split": split,
        "domains": list(names),
        "domain_offsets": offsets,
        "domain_widths": widths,
        "images": {d: len(entries[d][0]) for d in names},
        "classes": {d: len(np.unique(entries[d][1])) for d in names},
        "multi_label_entries": {d: entries[d][2] for d in names},
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


def _read_info(path: Path) -> tuple[list[str], np.ndarray, int]:
    """``(paths, first class id of each entry, number of multi-label entries)``; errors name the file and entry."""
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
    ids: list[int] = []
    multi = 0
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "path" not in entry or "class_id" not in entry:
            raise ValueError(f"{path}: entry {i} must be a dict with 'path' and 'class_id', got {entry!r}")
        p, cid = entry["path"], entry["class_id"]
        if not isinstance(p, str) or not p or os.path.isabs(p):
            raise ValueError(f"{path}: entry {i}: 'path' must be a non-empty relative path, got {p!r}")
        if isinstance(cid, list):
            if not cid:
                raise ValueError(f"{path}: entry {i} ({p}): 'class_id' is an empty list")
            multi += len(cid) > 1
            cid = cid[0]
        if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
            raise ValueError(f"{path}: entry {i} ({p}): 'class_id' must be a non-negative int or a list of them")
        paths.append(p)
        ids.append(cid)
    return paths, np.asarray(ids, dtype=np.int64), multi


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
