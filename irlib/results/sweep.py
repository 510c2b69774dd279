"""Notebook sweeps: papermill over a parameter grid into ``<out>/<sweep>/<point>/``, resumable; ``<sweep>``
defaults to the notebook's stem.

Each point folder holds the executed notebook, ``point.json`` (name, parameters, status ``done``/``failed``,
seconds) and, when it failed, ``error.txt``. A point whose ``point.json`` says ``done`` is skipped on a rerun; a
failed point is run again. ``<out>/<sweep>/sweep.json`` lists the notebook, the grid and its points.
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import itertools
import json
import os
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from irlib.io import atomic_path, write_json

POINT_FILE = "point.json"
ERROR_FILE = "error.txt"
MANIFEST = "sweep.json"


@dataclass
class PointResult:
    """The outcome of one grid point: ``status`` is ``done`` (ran now), ``skipped`` (done before) or ``failed``."""

    name: str
    parameters: dict[str, Any]
    status: str
    seconds: float
    error: str | None = None


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """The defaults of a notebook's ``parameters`` cell, ``{name: value}``: exactly one cell tagged
    ``parameters``, assignments of literals only (papermill replaces them; nothing derived). A notebook that
    breaks these rules raises ValueError naming it."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    defaults = {}
    for node in ast.parse(cells[0].source).body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if len(targets) != 1 or not isinstance(targets[0], ast.Name) or getattr(node, "value", None) is None:
            raise ValueError(f"{notebook}: the parameters cell holds assignments only, not {ast.unparse(node)!r}")
        try:
            defaults[targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(
                f"{notebook}: parameter {targets[0].id} is not a literal ({ast.unparse(node.value)})"
            ) from None
    return defaults


def grid(parameters: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the parameter values, the last parameter varying fastest."""
    names = list(parameters)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*parameters.values())]


def notebook_values(point: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A grid point as the notebook's parameters: a dotted name (``model_kwargs.pooling``) sets one key inside the
    dict parameter it starts with, whose other keys come from the point (an undotted value of it) or else from the
    notebook's ``defaults``; so a grid can vary the parts of one dict independently. ValueError when the parameter
    is not a dict."""
    values = {k: v for k, v in point.items() if "." not in k}
    for name, value in point.items():
        if "." not in name:
            continue
        top, *inner, last = name.split(".")
        target = values.setdefault(top, copy.deepcopy(defaults.get(top)))
        for key in inner:
            target = target.setdefault(key, {}) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise ValueError(f"-p {name}: {top} is not a dict parameter (its value: {values[top]!r})")
        target[last] = value
    return values


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _shortened(text: str, limit: int) -> str:
    """``text`` itself, or, when longer than ``limit``, its start and a hash of all of it."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 9]}@{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def point_name(point: Mapping[str, Any]) -> str:
    """A deterministic, filesystem-safe folder name: ``backbone=resnet50,lr=0.01`` (other characters -> ``_``); a
    value longer than 24 characters (a list of loss terms) and a name longer than 200 keep their start and a hash."""
    parts = [re.sub(r"[^\w.+=@-]", "_", f"{k}={_shortened(_text(v), 24)}") for k, v in point.items()]
    return _shortened(",".join(parts), 200) or "default"


def _short(err: BaseException) -> str:
    """The exception's type and the last line of its message (papermill ends with the cell's error)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1].strip()}" if lines else type(err).__name__


def run_sweep(
    notebook: str | os.PathLike,
    sweep: str | None,
    parameters: Mapping[str, Sequence[Any]],
    *,
    out: str | os.PathLike = "runs",
    kernel: str = "python3",
    cwd: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> list[PointResult]:
    """Execute ``notebook`` once per grid point into ``out/sweep/<point>/``, skipping points already done;
    ``sweep`` None: the notebook's stem (``04_visualization``).

    The notebook gets the point's parameters and ``out_dir`` (the absolute point folder); it runs in ``cwd``
    (default: the notebook's folder). A parameter the notebook's ``parameters`` cell does not define raises before
    anything runs (papermill would inject it silently and the notebook use its default). A dotted name sets one key
    of a dict parameter (:func:`notebook_values`), e.g. ``model_kwargs.pooling`` x ``model_kwargs.batch_attention``
    for an ablation of composed models. A failing point is recorded and the sweep goes on.
    """
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"no notebook {notebook}")
    known = notebook_parameters(notebook)
    unknown = sorted({name.split(".")[0] for name in parameters} - set(known))
    if unknown:
        close = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
        hints = ", ".join(f"{u!r} (did you mean {c[0]!r}?)" if c else repr(u) for u, c in close.items())
        raise ValueError(f"{notebook.name} has no parameter {hints}; its parameters: {', '.join(known)}")
    points = grid(parameters)
    names = [point_name(p) for p in points]
    values = [notebook_values(p, known) for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"parameter values give clashing folder names: {names}")
    root = Path(out) / (sweep or notebook.stem)
    write_json(
        root / MANIFEST,
        {
            "notebook": str(notebook),
            "parameters": {k: list(v) for k, v in parameters.items()},
            "points": [{"name": n, "parameters": p} for n, p in zip(names, values, strict=True)],
        },
    )
    results = []
    for name, point in zip(names, values, strict=True):
        folder = root / name
        record = folder / POINT_FILE
        if record.is_file() and json.loads(record.read_text()).get("status") == "done":
            log(f"{name}: done before, skipped")
            results.append(PointResult(name, point, "skipped", 0.0))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ERROR_FILE).unlink(missing_ok=True)
        log(f"{name}: running")
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook),
                str(folder / notebook.name),
                parameters={**point, "out_dir": str(folder.resolve())},
                kernel_name=kernel,
                cwd=str(cwd if cwd is not None else notebook.parent),
                progress_bar=False,
            )
            result = PointResult(name, point, "done", round(time.perf_counter() - t0, 3))
        except Exception as err:  # any failure of the point is reported and the sweep continues
            with atomic_path(folder / ERROR_FILE) as tmp:
                tmp.write_text("".join(traceback.format_exception(err)))
            result = PointResult(name, point, "failed", round(time.perf_counter() - t0, 3), _short(err))
            log(f"{name}: failed ({result.error}), see {folder / ERROR_FILE}")
        write_json(record, {"name": name, "parameters": point, "status": result.status, "seconds": result.seconds})
        results.append(result)
    return results


def summary(results: Sequence[PointResult]) -> pd.DataFrame:
    """Point, status and seconds per point."""
    return pd.DataFrame(
        [{"point": r.name, "status": r.status, "seconds": r.seconds} for r in results],
        columns=["point", "status", "seconds"],
    )
