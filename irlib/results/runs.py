"""Run records: every evaluation and training writes ``run.json`` into its folder; :func:`load_runs` tabulates them.

``run.json`` holds::

    {"id": "3f2a9c1b0d4e",                 # sha256 of (created, absolute run folder) [:12]: stable once written
     "kind": "eval" | "train",
     "created": "2025-01-31T12:00:00.123456+00:00",
     "params": {...},                      # eval: method, backbone and settings; train: the TrainConfig fields
     "metrics": {...},                     # eval: easy/medium/hard {"map", "mp@k"} in percent; train: last log
     "git": {"commit": "...", "dirty": false},   # nulls outside a git checkout
     "versions": {"irlib", "torch", "timm", "numpy", "python"},
     "dataset": {"name": "roxford5k", "distractors": "none" | "r1m", "gnd_sha256": "..."},
                                           # train: also "train_split_files" {path: sha256} and "train_split_sha256"
     "weights_sha256": "..." | null,       # the weights file (eval: null for built-in weights; train: model.pth)
     "state_dict_sha256": "..." | null,    # eval: fingerprint of the weights evaluated, built-in ones included
     "seconds": 12.3}                      # wall time of the run
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from irlib.eval.revisited import PROTOCOLS
from irlib.io import write_json

RUN_FILE = "run.json"
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


def library_versions() -> dict[str, str | None]:
    """Installed versions of irlib, torch, timm and numpy (None when missing) and of Python."""
    versions: dict[str, str | None] = {}
    for name in ("irlib", "torch", "timm", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions | {"python": platform.python_version()}


def _run_id(created: str, out: Path) -> str:
    return hashlib.sha256(f"{created}\n{out.resolve()}".encode()).hexdigest()[:12]


def new_record(
    kind: str,
    out: str | os.PathLike,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    dataset: Mapping[str, Any] | None = None,
    weights_sha256: str | None = None,
    state_dict_sha256: str | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """A run record for the run in folder ``out``, stamped now with the git state and library versions."""
    from irlib.train.engine import git_commit  # the helper checkpoints use; imports torch, so only when writing

    created = datetime.now(timezone.utc).isoformat()
    return {
        "id": _run_id(created, Path(out)),
        "kind": kind,
        "created": created,
        "params": dict(params),
        "metrics": dict(metrics),
        "git": git_commit(),
        "versions": library_versions(),
        "dataset": dict(dataset or {"name": None, "distractors": None, "gnd_sha256": None}),
        "weights_sha256": weights_sha256,
        "state_dict_sha256": state_dict_sha256,
        "seconds": seconds,
    }


def _eval_fields(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The record fields of an evaluation's ``metrics.json`` content, apart from the id, time, git and versions."""
    settings = dict(metrics.get("settings", {}))
    seconds = settings.pop("seconds", None)
    for key in ("versions", "gnd_sha256", "weights_sha256", "state_dict_sha256"):
        settings.pop(key, None)
    name, _, suffix = str(metrics.get("dataset")).partition("+")
    distractors = "none" if not suffix else "r1m" if suffix == "1m" else suffix
    return {
        "params": {"method": metrics.get("method"), "backbone": metrics.get("backbone"), **settings},
        "metrics": {p: metrics[p] for p in PROTOCOLS if p in metrics},
        "dataset": {"name": name, "distractors": distractors, "gnd_sha256": metrics["settings"].get("gnd_sha256")},
        "weights_sha256": metrics["settings"].get("weights_sha256"),
        "state_dict_sha256": metrics["settings"].get("state_dict_sha256"),
        "seconds": round(sum(seconds.values()), 3) if isinstance(seconds, Mapping) else seconds,
    }


def eval_record(metrics: Mapping[str, Any], out: str | os.PathLike) -> dict[str, Any]:
    """The run record of an evaluation from its ``metrics.json`` content (written by ``save_result``)."""
    return new_record("eval", out, **_eval_fields(metrics))


def write_run(out: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``out/run.json`` (atomically); returns its path."""
    path = Path(out) / RUN_FILE
    write_json(path, record)
    return path


def _legacy_record(path: Path) -> dict[str, Any]:
    """A record for a folder with ``metrics.json`` only: created, git and versions unknown (None)."""
    return {
        "id": hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:12],
        "kind": "eval",
        "created": None,
        "git": {"commit": None, "dirty": None},
        **_eval_fields(json.loads(path.read_text())),
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
