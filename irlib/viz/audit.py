"""Figures of the literature audit (:mod:`irlib.results.audit`): the spread of reported numbers per method, the
reporting source x method matrix of verdicts, the share of copied numbers per source and the copy graph."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from irlib.results.audit import VERDICTS, reported_spread

VERDICT_COLORS = dict(
    zip(
        VERDICTS,
        ("#1b1b1b", "#c0504d", "#3b75af", "#e69f00", "#8064a2", "#9e9e9e", "#d9d9d9", "#f4b6c2"),
        strict=True,
    )
)
"""One colour per verdict, shared by every audit figure."""


def plot_reported_spread(
    audited: pd.DataFrame, dataset: str = "roxford5k", protocol: str = "hard", distractors: str = "none"
) -> Figure:
    """:func:`irlib.results.audit.reported_spread` of one cell: per method (rows) every number reported, one colour
    per reporting source; the originals are ringed stars."""
    rows = reported_spread(audited, dataset, protocol, distractors)
    order = sorted(rows["label"].unique())
    fig, ax = plt.subplots(figsize=(8.0, 0.45 * len(order) + 1.8), layout="constrained")
    if rows.empty:
        ax.text(0.5, 0.5, "no method reported by two sources in this cell", ha="center", va="center")
        ax.set_axis_off()
        return fig
    sns.stripplot(rows, x="map", y="label", hue="reported_in", order=order, jitter=0.15, size=6, ax=ax)
    originals = rows[rows["verdict"].astype(str) == "original"]
    ax.scatter(
        originals["map"],
        [order.index(label) for label in originals["label"]],
        marker="*",
        s=220,
        facecolors="none",
        edgecolors="black",
        linewidths=1.2,
        label="original",
        zorder=5,
    )
    ax.set(xlabel=f"mAP (%) {dataset} {protocol}" + (" +1M" if distractors == "r1m" else ""), ylabel="")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="reported in", title_fontsize=8)
    return fig


def plot_verdict_matrix(matrix: pd.DataFrame) -> Figure:
    """:func:`irlib.results.audit.verdict_matrix` as a coloured grid: reporting sources (rows) x method papers."""
    codes = matrix.apply(lambda col: col.map({v: i for i, v in enumerate(VERDICTS)})).astype(float)
    codes = codes.where(matrix != "", np.nan)
    fig, ax = plt.subplots(figsize=(0.6 * matrix.shape[1] + 4.0, 0.35 * matrix.shape[0] + 2.2), layout="constrained")
    cmap = ListedColormap(list(VERDICT_COLORS.values())).with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(codes.to_numpy()), cmap=cmap, vmin=-0.5, vmax=len(VERDICTS) - 0.5, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(matrix.shape[0]), matrix.index, fontsize=8)
    ax.set(xlabel="method (paper)", ylabel="reported in")
    shown = [v for v in VERDICTS if (matrix == v).any().any()]
    handles = [Patch(facecolor=VERDICT_COLORS[v], edgecolor="0.5", label=v) for v in shown]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_copied_share(share: pd.DataFrame) -> Figure:
    """:func:`irlib.results.audit.copied_share` as horizontal bars: the share of a source's numbers for other
    methods that equal an original, with the counts."""
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(share) + 1.4), layout="constrained")
    y = np.arange(len(share))
    ax.barh(y, 100 * share["share"], color=VERDICT_COLORS["copied"])
    for i, (_, r) in enumerate(share.iterrows()):
        ax.text(100 * r["share"] + 1, i, f"{int(r['copied'])}/{int(r['numbers'])}", va="center", fontsize=7)
    ax.set_yticks(y, share.index, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 110), xlabel="numbers equal to an earlier source (%)")
    return fig


def plot_copy_graph(edges: pd.DataFrame, sources: pd.DataFrame) -> Figure:
    """:func:`irlib.results.audit.copy_graph`: sources placed by year (x), an arrow from the source that printed a
    number to the one it equals, as wide as the numbers copied."""
    nodes = sorted(set(edges["source"]) | set(edges["target"]))
    years = {n: int(sources["year"].get(n, 0)) for n in nodes}
    fig, ax = plt.subplots(figsize=(8.0, 0.5 * max(len(nodes), 2) + 1.5), layout="constrained")
    if not nodes:
        ax.text(0.5, 0.5, "no copied numbers", ha="center", va="center")
        ax.set_axis_off()
        return fig
    position = {n: (years[n], i) for i, n in enumerate(sorted(nodes, key=lambda n: (years[n], n)))}
    for _, e in edges.iterrows():
        ax.annotate(
            "",
            xy=position[e["target"]],
            xytext=position[e["source"]],
            arrowprops={
                "arrowstyle": "-|>",
                "lw": 0.6 + 0.25 * float(e["numbers"]) ** 0.5,
                "color": VERDICT_COLORS["copied"],
                "connectionstyle": "arc3,rad=0.2",
            },
        )
    for n, (x, y) in position.items():
        ax.plot(x, y, "o", color="0.2")
        ax.text(x, y + 0.25, n, ha="center", fontsize=7)
    ax.set(xlabel="year", yticks=[], ylim=(-1, len(nodes)))
    ax.set_xlim(min(years.values()) - 1, max(years.values()) + 1)
    return fig
