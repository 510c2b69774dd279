"""Evaluation figures, saved as PNG and PDF under ``figures/`` with names derived from their parameters."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from irlib.io import atomic_path
from irlib.viz.style import PAPER_RC

MAX_NAME = 200
"""Longest figure-name stem (file systems allow 255 bytes, the suffix and temporary prefixes need the rest)."""

PROTOCOL_COLORS = {"easy": "#4c9f70", "medium": "#3b75af", "hard": "#c0504d"}


def plot_per_query_ap(per_query: pd.DataFrame, title: str = "") -> Figure:
    """Grouped bars of AP (percent) per query and protocol, queries sorted by Medium AP (NaN = no positive)."""
    order = per_query.sort_values(by=[c for c in ("medium", "hard", "easy") if c in per_query], ascending=False)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(order) + 2), 3.6), layout="constrained")
    protocols = [p for p in PROTOCOL_COLORS if p in order]
    width = 0.8 / len(protocols)
    for j, p in enumerate(protocols):
        positions = [i + (j - (len(protocols) - 1) / 2) * width for i in range(len(order))]
        mean = order[p].mean()
        ax.bar(positions, order[p].fillna(0), width, color=PROTOCOL_COLORS[p], label=f"{p} (mAP {mean:.1f})")
    ax.set_xticks(range(len(order)), order.index, rotation=90, fontsize=7)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncols=len(protocols), loc="upper right")
    ax.set_title(title)
    return fig


def plot_benchmark_breakdown(metrics: Mapping[str, object], title: str = "") -> Figure:
    """Bars of a universal benchmark's metrics (percent, ``metrics.json``'s ``"metrics"``) by group: per domain for
    UnED (R@1, mMP@k, mAP@k), per scale, clutter and category group for ILIAS; the headline values otherwise."""
    panels = []
    if isinstance(metrics.get("per_domain"), Mapping):
        panels.append(("per domain", pd.DataFrame(metrics["per_domain"]).T))
    for group in ("scale", "clutter", "categories"):
        if isinstance(metrics.get(group), Mapping):
            name = next((k for k in metrics if k.startswith("mAP@")), "AP")
            panels.append((group, pd.DataFrame({name: pd.Series(metrics[group], dtype=float)})))
    if not panels:
        headline = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        panels.append(("", pd.DataFrame({"value": pd.Series(headline, dtype=float)})))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), layout="constrained", squeeze=False)
    for ax, (name, table) in zip(axes[0], panels, strict=True):
        table.plot.bar(ax=ax, rot=30, legend=len(table.columns) > 1, fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.set_title(name)
    fig.suptitle(title)
    return fig


def _label(value: object) -> str:
    """A parameter value as file-name text: a path by its stem, a mapping as ``k=v`` and a sequence as its items,
    both joined by ``+``, None or ``""`` as ``none``; other characters than letters, digits and ``_.=-`` -> ``-``."""
    if isinstance(value, os.PathLike):
        return _label(Path(value).stem)
    if isinstance(value, Mapping):
        return "+".join(f"{_label(k)}={_label(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "+".join(_label(v) for v in value)
    return "none" if value is None or value == "" else re.sub(r"[^A-Za-z0-9_.=-]+", "-", str(value)).strip("-")


def figure_name(*parts: object, **params: object) -> str:
    """A file-name stem from everything that changes a figure: ``parts`` as they are (empty ones left out), then
    ``key=value`` per keyword (values as :func:`_label`), joined by ``_``. E.g. ``("04_pr", "demo", k=8,
    models=["GeM", "GeM + SuperGlobal"], weights=Path("runs/a/model.pth"))`` ->
    ``04_pr_demo_k=8_models=GeM+GeM-SuperGlobal_weights=model``. A name over :data:`MAX_NAME` characters is cut
    and ends with 10 hex digits of the full name's SHA-256, so distinct parameters keep distinct files."""
    name = "_".join([_label(p) for p in parts if p != ""] + [f"{k}={_label(v)}" for k, v in params.items()])
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 11]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    return name


def save_figure(fig: Figure, name: str, figures_dir: str | os.PathLike = "figures") -> list[Path]:
    """Write ``<figures_dir>/<name>.png`` and ``.pdf`` at the dpi and bounding box of the paper style
    (:data:`irlib.viz.style.PAPER_RC`), each atomically (rendered beside the target, then renamed onto it);
    returns both paths."""
    paths = [Path(figures_dir) / f"{name}.png", Path(figures_dir) / f"{name}.pdf"]
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=PAPER_RC["savefig.dpi"], bbox_inches=PAPER_RC["savefig.bbox"])
    return paths


def read_metrics_jsonl(path: str | os.PathLike) -> pd.DataFrame:
    """A training run's ``metrics.jsonl`` (one JSON record per logged step) as a DataFrame indexed by step."""
    return pd.read_json(path, lines=True).set_index("step")


def plot_training_curves(metrics: pd.DataFrame, title: str = "") -> Figure:
    """Loss (left) and learning rate (right) against the optimiser step."""
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
    ax_loss.plot(metrics.index, metrics["loss"], color="#3b75af")
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_lr.plot(metrics.index, metrics["lr"], color="#c0504d")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    fig.suptitle(title)
    return fig
