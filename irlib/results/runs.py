"""The results registry's view of run records: :func:`load_runs` tabulates the ``run.json`` every evaluation and
training writes (format and writers in :mod:`irlib.provenance`), older ``metrics.json``-only folders included."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from irlib.eval.records import eval_fields
from irlib.provenance import RUN_FILE

LEGACY_FILE = "metrics.json"
COLUMNS = (
    "id",
    "kind",
    "path",
    "created",
    "dataset",
    "distractors",
    "method",
    "backbone",
    "rerank",
    "git_commit",
    "git_dirty",
    "gnd_sha256",
    "train_split_sha256",
    "weights_sha256",
    "state_dict_sha256",
    "seconds",
)


def _legacy_record(path: Path) -> dict[str, Any]:
    """A record for a folder with ``metrics.json`` only: created, git and versions unknown (None)."""
    return {
        "id": hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:12],
        "kind": "eval",
        "created": None,
        "git": {"commit": None, "dirty": None},
        **eval_fields(json.loads(path.read_text())),
    }


def _row(record: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    params, dataset, git = record.get("params", {}), record.get("dataset") or {}, record.get("git") or {}
    rerank = params.get("rerank")
    row = {
        "id": record.get("id"),
        "kind": record.get("kind"),
        "path": str(folder),
        "created": record.get("created"),
        "dataset": dataset.get("name"),
        "distractors": dataset.get("distractors"),
        "method": params.get("method"),
        "backbone": params.get("backbone"),
        "rerank": rerank.get("method") if isinstance(rerank, Mapping) else rerank,
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "gnd_sha256": dataset.get("gnd_sha256"),
        "train_split_sha256": dataset.get("train_split_sha256"),
        "weights_sha256": record.get("weights_sha256"),
        "state_dict_sha256": record.get("state_dict_sha256"),
        "seconds": record.get("seconds"),
    }
    flat = pd.json_normalize(record.get("metrics") or {}, sep=".")
    return row | ({k: v for k, v in flat.iloc[0].items() if k not in row} if len(flat.columns) else {})


def _record_files(roots: Iterable[Path]) -> list[Path]:
    """``run.json`` files under ``roots``, and ``metrics.json`` files that have no ``run.json`` beside them."""
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif not root.is_dir():
            raise FileNotFoundError(f"no run folder or file {root}")
        else:
            runs = set(root.rglob(RUN_FILE))
            files += runs | {p for p in root.rglob(LEGACY_FILE) if p.with_name(RUN_FILE) not in runs}
    return sorted(set(files))


def load_runs(root_or_paths: str | os.PathLike | Iterable[str | os.PathLike], kind: str | None = None) -> pd.DataFrame:
    """One row per run found under folders (recursively) or given as ``run.json``/``metrics.json`` files.

    Columns: ``id``, ``kind`` (eval/train), ``path`` (the run folder), ``created`` (UTC timestamp), ``dataset``
    (base name, e.g. ``roxford5k``), ``distractors`` (none/r1m, as in :func:`published_results`), ``method``,
    ``backbone``, ``rerank`` (reranker name or None), ``git_commit``, ``git_dirty``, ``gnd_sha256``,
    ``train_split_sha256``, ``weights_sha256``, ``state_dict_sha256``, ``seconds``, then the metrics flattened with
    dots: ``easy.map``, ``medium.map``, ``hard.map``, ``medium.mp@k.5`` ... for evaluations, ``loss``, ``step`` ...
    for training.

    Legacy evaluation folders with ``metrics.json`` but no ``run.json`` are loaded as ``kind="eval"`` with unknown
    ``created``/``git_*`` (missing values) and an id hashed from their folder. ``kind`` keeps only that kind.
    """
    roots = [root_or_paths] if isinstance(root_or_paths, (str, os.PathLike)) else list(root_or_paths)
    rows = []
    for path in _record_files(Path(r) for r in roots):
        try:
            record = json.loads(path.read_text()) if path.name != LEGACY_FILE else _legacy_record(path)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            warnings.warn(f"skipping unreadable run record {path}: {err!r}", stacklevel=2)
            continue
        if kind is None or record.get("kind") == kind:
            rows.append(_row(record, path.parent))
    table = pd.DataFrame(rows)
    table = table.reindex(columns=[*COLUMNS, *[c for c in table.columns if c not in COLUMNS]])
    table["created"] = pd.to_datetime(table["created"], utc=True)
    return table
