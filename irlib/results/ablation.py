"""The composed-method ablation (pooling x batch attention x objective) as one notebook sweep of notebook 02, and
its results as a table: each grid cell is a training run with an evaluation record (``eval_after/run.json``), so
the cells join the comparison table (:func:`irlib.results.table.comparison_cells`) as re-run rows."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from irlib.models.compose import BATCH_ATTENTIONS, POOLINGS
from irlib.results.runs import load_runs
from irlib.results.sweep import POINT_FILE
from irlib.train.config import RECIPES

OBJECTIVES: dict[str, list[dict[str, Any]]] = {
    "arcface": [{"name": "arcface", "kwargs": {"s": 30.0, "m": 0.15, "fallback": "none"}}],
    "roadmap": [{"name": "roadmap"}],
    "compose_rank": list(RECIPES["compose_rank"].losses or []),
}
"""Named objectives of the ablation (composite loss terms, :class:`irlib.losses.LossTerm` specs); ``compose_rank``
is the objective of ``recipe("compose_rank")``, whose comment explains the classification-ranking equivalence."""

CLASS_BALANCED = {"sampler": "class_balanced"}
"""The ablation's sampler (every cell alike): ranking terms need several images per class in a batch."""


def ablation_grid(
    poolings: Sequence[str],
    batch_attentions: Sequence[str],
    objectives: Sequence[str],
    *,
    fixed: Mapping[str, Any] | None = None,
) -> dict[str, list[Any]]:
    """The sweep parameters of notebook 02 for ``poolings x batch_attentions x objectives`` (names of
    :data:`irlib.models.compose.POOLINGS`, :data:`~irlib.models.compose.BATCH_ATTENTIONS` and :data:`OBJECTIVES`),
    each cell ``method="compose"``; ``fixed``: other notebook parameters, one value each (``overrides`` gets the
    class-balanced sampler added)."""
    for kind, given, known in (
        ("pooling", poolings, POOLINGS.names()),
        ("batch attention", batch_attentions, BATCH_ATTENTIONS),
        ("objective", objectives, list(OBJECTIVES)),
    ):
        unknown = sorted(set(given) - set(known))
        if unknown or not given:
            raise ValueError(f"unknown or no {kind} {unknown}; available: {', '.join(known)}")
    fixed = dict(fixed or {})
    overrides = CLASS_BALANCED | dict(fixed.pop("overrides", {}))
    return {
        "method": ["compose"],
        **{name: [value] for name, value in fixed.items()},
        "overrides": [overrides],
        "model_kwargs.pooling": list(poolings),
        "model_kwargs.batch_attention": list(batch_attentions),
        "losses": [OBJECTIVES[name] for name in objectives],
    }


def objective_name(losses: Sequence[Mapping[str, Any]]) -> str:
    """The :data:`OBJECTIVES` name of a list of loss terms, or the terms' names joined by ``+``."""
    named = {json.dumps(terms, sort_keys=True): name for name, terms in OBJECTIVES.items()}
    return named.get(json.dumps(list(losses), sort_keys=True), "+".join(str(t["name"]) for t in losses))


def ablation_results(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per finished cell of an ablation sweep folder, from its ``point.json`` and ``eval_after`` record:
    ``cell_dir`` (the training run, with ``model.pth``), ``model_kwargs`` (they rebuild the model with
    ``create_model("compose", ...)``), ``pooling``, ``batch_attention``, ``objective``, ``label`` (``"<method label> ·
    <objective>"``), and the evaluation run's ``id``, ``dataset`` and metrics (``medium.map``, ``hard.map``, ...)."""
    rows = []
    for point_file in sorted(Path(sweep_dir).glob(f"*/{POINT_FILE}")):
        point = json.loads(point_file.read_text())
        if point.get("status") != "done":
            continue
        params = point["parameters"]
        kwargs, objective = params.get("model_kwargs", {}), objective_name(params.get("losses") or [])
        for _, run in load_runs(point_file.parent / "eval_after", kind="eval").iterrows():
            cell = {
                "cell_dir": str(point_file.parent),
                "model_kwargs": kwargs,
                "pooling": kwargs.get("pooling", "gem"),
                "batch_attention": kwargs.get("batch_attention", "none"),
                "objective": objective,
                "label": f"{run['method']} · {objective}",
            }
            rows.append(cell | run.to_dict())
    if not rows:
        raise FileNotFoundError(f"no finished ablation cell (point.json 'done' + eval_after/run.json) in {sweep_dir}")
    return pd.DataFrame(rows)


def ablation_table(results: pd.DataFrame, metrics: Sequence[str] = ("medium.map", "hard.map")) -> pd.DataFrame:
    """``metrics`` per (pooling, batch attention) row and objective column, from :func:`ablation_results`."""
    table = results.pivot_table(index=["pooling", "batch_attention"], columns="objective", values=list(metrics))
    return table.round(2)
