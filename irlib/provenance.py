"""Provenance of a run: the git state and library versions of the code that ran, and the run record ``run.json``
every evaluation and training writes into its folder (:func:`irlib.results.load_runs` tabulates them).

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

This module sits at the bottom of irlib (it imports only :mod:`irlib.io`), so evaluation, training and the results
registry all stamp their records the same way.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from irlib.io import write_json

RUN_FILE = "run.json"


def git_commit() -> dict[str, Any]:
    """The commit of the irlib code that runs and whether its tree had uncommitted changes (nulls outside git)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, check=True)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


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


def write_run(out: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``out/run.json`` (atomically); returns its path."""
    path = Path(out) / RUN_FILE
    write_json(path, record)
    return path
