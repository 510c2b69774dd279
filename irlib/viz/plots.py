"""Evaluation figures, saved as PNG and PDF under ``figures/`` with names derived from their parameters."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

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


def figure_name(*parts: object) -> str:
    """A file-name stem from parameters, e.g. ``("03", "demo", "gem", True)`` -> ``03_demo_gem_True``."""
    return "_".join(re.sub(r"[^A-Za-z0-9_.=-]+", "-", str(p)).strip("-") for p in parts if p != "")


def save_figure(fig: Figure, name: str, figures_dir: str | os.PathLike = "figures") -> list[Path]:
    """Write ``<figures_dir>/<name>.png`` (150 dpi) and ``.pdf``; returns both paths."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
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
