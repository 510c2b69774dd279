"""Retrieval figures: ranked results framed by their label under a protocol, precision-recall curves, per-query AP
differences between two methods and 2-D embeddings of descriptors.

Scores are ``(n_queries, n_db)`` similarities (or an :class:`irlib.eval.pipeline.EvalResult`, whose ``scores`` are
used); the ranking is ``np.argsort(-scores, kind="stable")``, i.e. ties go to the lower database index, as in
:func:`irlib.eval.revisited.evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw

from irlib.data.images import load_image
from irlib.data.revisited import RevisitedDataset
from irlib.eval.revisited import evaluate, protocol_gnd
from irlib.viz.datasets import BOX_COLOR
from irlib.viz.style import RESULT_COLORS

__all__ = [
    "ap_differences",
    "best_and_worst_queries",
    "pr_curve",
    "plot_ap_difference",
    "plot_embedding",
    "plot_pr_curves",
    "plot_retrieval_comparison",
    "plot_retrieval_grid",
    "query_ap",
    "ranking",
    "result_labels",
]

Scores = Any  # (n_queries, n_db) array or an object with a ``scores`` attribute (EvalResult)


def _scores(scores: Scores) -> np.ndarray:
    return np.asarray(getattr(scores, "scores", scores))


def _query_index(dataset: RevisitedDataset, query: int | str) -> int:
    return dataset.qimlist.index(query) if isinstance(query, str) else int(query)


def ranking(row: np.ndarray, k: int | None = None) -> np.ndarray:
    """Database indices ``(k,)`` of one score row ``(n_db,)``, best first, ties by lower index."""
    return np.argsort(-np.asarray(row), kind="stable")[:k]


def result_labels(gnd_entry: Mapping[str, Any], ranked_ids: Sequence[int], protocol: str) -> list[str]:
    """``"positive"``/``"junk"``/``"negative"`` for each ranked database index under ``protocol``."""
    pg = protocol_gnd([gnd_entry], protocol)[0]
    ok, junk = set(pg["ok"].tolist()), set(pg["junk"].tolist())
    return ["positive" if i in ok else "junk" if i in junk else "negative" for i in np.asarray(ranked_ids).tolist()]


def query_ap(dataset: RevisitedDataset, scores: Scores, query: int | str, protocol: str) -> float:
    """AP in percent of one query (revisitop, as :func:`evaluate`); NaN when it has no positive."""
    i = _query_index(dataset, query)
    row = _scores(scores)[i : i + 1]
    return float(evaluate([dataset.gnd[i]], scores=row, kappas=(1,), protocols=(protocol,))[protocol]["aps"][0] * 100)


def _framed(img: Image.Image, size: int, color: str | None, width: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """``img`` fitted into a ``(size, size, 3)`` white square, with a ``width``-pixel frame of ``color``; also where
    it lies: ``(left, top, x scale, y scale)`` mapping image coordinates onto the square's pixels."""
    img = img.convert("RGB")
    full = img.size
    inner = size - 2 * width
    img.thumbnail((inner, inner))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    left, top = (size - img.width) // 2, (size - img.height) // 2
    canvas.paste(img, (left, top))
    if color is not None:
        ImageDraw.Draw(canvas).rectangle([0, 0, size - 1, size - 1], outline=color, width=width)
    return np.asarray(canvas), (left, top, img.width / full[0], img.height / full[1])


def _draw_row(
    axes: Sequence[Axes],
    dataset: RevisitedDataset,
    scores: Scores,
    query: int,
    protocol: str,
    thumb: int,
    frame: int,
    label: str = "",
) -> None:
    """Query with its box, then ``len(axes) - 1`` results framed by label, on one row of axes."""
    k = len(axes) - 1
    ids = ranking(_scores(scores)[query], k)
    labels = result_labels(dataset.gnd[query], ids, protocol)
    pixels, (left, top, sx, sy) = _framed(dataset.load_query(query, crop=False), thumb, None, frame)
    axes[0].imshow(pixels)
    x1, y1, x2, y2 = (float(c) for c in dataset.gnd[query]["bbx"])
    # image coordinates (pixel edges at 0 and W) -> axes data coordinates (pixel centres at integers)
    axes[0].add_patch(
        Rectangle(
            (left - 0.5 + x1 * sx, top - 0.5 + y1 * sy),
            (x2 - x1) * sx,
            (y2 - y1) * sy,
            fill=False,
            edgecolor=np.array(BOX_COLOR) / 255,
            linewidth=1.0,
        )
    )
    ap = query_ap(dataset, scores, query, protocol)
    prefix = f"{label}: " if label else ""
    axes[0].set_title(f"{prefix}{dataset.qimlist[query]}\nAP {ap:.1f} ({protocol})", fontsize=7)
    paths = dataset.db_paths
    for rank, (ax, j, lab) in enumerate(zip(axes[1:], ids.tolist(), labels, strict=True), start=1):
        ax.imshow(_framed(load_image(paths[j]), thumb, RESULT_COLORS[lab], frame)[0])
        ax.set_title(f"{rank}. {paths[j].stem}" + (" (junk)" if lab == "junk" else ""), fontsize=6)
    for ax in axes:
        ax.set_axis_off()


def plot_retrieval_grid(
    dataset: RevisitedDataset,
    scores: Scores,
    queries: Sequence[int | str],
    *,
    protocol: str = "medium",
    k: int = 8,
    thumb: int = 128,
    frame: int = 6,
) -> Figure:
    """One row per query (index or name): the query with its ground-truth box (a rectangle patch) and AP, then its
    top-``k`` results framed green (positive), red (negative) or grey (junk, ignored by the protocol's AP)."""
    k = min(k, _scores(scores).shape[1])
    fig, axes = plt.subplots(
        len(queries), k + 1, figsize=(1.2 * (k + 1), 1.45 * len(queries)), squeeze=False, layout="constrained"
    )
    for row, q in zip(axes, queries, strict=True):
        _draw_row(row, dataset, scores, _query_index(dataset, q), protocol, thumb, frame)
    return fig


def plot_retrieval_comparison(
    dataset: RevisitedDataset,
    scores_a: Scores,
    scores_b: Scores,
    query: int | str,
    names: tuple[str, str] = ("A", "B"),
    *,
    protocol: str = "medium",
    k: int = 8,
    thumb: int = 128,
    frame: int = 6,
) -> Figure:
    """Two rows for one query: the top-``k`` of method A, then of method B (titles carry the method and AP)."""
    q = _query_index(dataset, query)
    k = min(k, _scores(scores_a).shape[1])
    fig, axes = plt.subplots(2, k + 1, figsize=(1.2 * (k + 1), 2.9), squeeze=False, layout="constrained")
    for row, s, name in zip(axes, (scores_a, scores_b), names, strict=True):
        _draw_row(row, dataset, s, q, protocol, thumb, frame, label=name)
    return fig


def best_and_worst_queries(per_query: pd.DataFrame, protocol: str, n: int = 5) -> tuple[list[str], list[str]]:
    """The ``n`` best (highest AP first) and ``n`` worst (lowest first) query names; NaN queries left out."""
    ap = per_query[protocol].dropna().sort_values(ascending=False, kind="stable")
    return ap.index[:n].tolist(), ap.index[::-1][:n].tolist()


def pr_curve(row: np.ndarray, gnd_entry: Mapping[str, Any], protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision ``(n_ok + 1,)`` at each positive of a score row, junk removed from the ranking
    (revisitop), starting at (0, 1); empty arrays when the query has no positive."""
    pg = protocol_gnd([gnd_entry], protocol)[0]
    n_ok = pg["ok"].size
    if n_ok == 0:
        return np.empty(0), np.empty(0)
    order = ranking(row)
    order = order[~np.isin(order, pg["junk"])]
    pos = np.flatnonzero(np.isin(order, pg["ok"]))  # 0-based junk-free positions, sorted
    hits = np.arange(1, n_ok + 1)
    return np.r_[0.0, hits / n_ok], np.r_[1.0, hits / (pos + 1)]


def plot_pr_curves(
    dataset: RevisitedDataset,
    methods: Mapping[str, Scores],
    protocol: str = "medium",
    query: int | str | None = None,
    recall_levels: int = 101,
) -> Figure:
    """Precision-recall of each method: for one query, or the mean over queries with positives of the
    interpolated precision (``max`` precision at recall >= r) at ``recall_levels`` evenly spaced recalls."""
    fig, ax = plt.subplots(figsize=(3.4, 2.8), layout="constrained")
    levels = np.linspace(0, 1, recall_levels)
    for name, s in methods.items():
        sc = _scores(s)
        if query is not None:
            q = _query_index(dataset, query)
            recall, precision = pr_curve(sc[q], dataset.gnd[q], protocol)
            ax.plot(recall, precision, marker=".", label=f"{name} (AP {query_ap(dataset, sc, q, protocol):.1f})")
            continue
        curves = []
        for q, entry in enumerate(dataset.gnd):
            recall, precision = pr_curve(sc[q], entry, protocol)
            if recall.size:
                best_after = np.maximum.accumulate(precision[::-1])[::-1]
                curves.append(best_after[np.searchsorted(recall, levels, side="left")])
        m = evaluate(dataset.gnd, scores=sc, kappas=(1,), protocols=(protocol,))[protocol]["map"] * 100
        ax.plot(levels, np.mean(curves, axis=0), label=f"{name} (mAP {m:.1f})")
    title = dataset.qimlist[_query_index(dataset, query)] if query is not None else f"mean of {dataset.n_queries}"
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"{title}, {protocol}")
    ax.legend()
    return fig


def ap_differences(per_query_a: pd.DataFrame, per_query_b: pd.DataFrame, protocol: str) -> pd.Series:
    """AP(B) - AP(A) in points per query under ``protocol``, largest gain of B first (ties in query order); queries
    without a positive (NaN) left out. ``.index[0]`` is the query where B gains most."""
    return (per_query_b[protocol] - per_query_a[protocol]).dropna().sort_values(ascending=False, kind="stable")


def plot_ap_difference(
    per_query_a: pd.DataFrame, per_query_b: pd.DataFrame, protocol: str, names: tuple[str, str] = ("A", "B")
) -> Figure:
    """Bars of AP(B) - AP(A) in points per query, largest gain first, green where B wins and red where A wins."""
    diff = ap_differences(per_query_a, per_query_b, protocol)
    colors = [RESULT_COLORS["positive"] if d > 0 else RESULT_COLORS["negative"] if d < 0 else "grey" for d in diff]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.18 * len(diff) + 1.5), 2.8), layout="constrained")
    ax.bar(range(len(diff)), diff.to_numpy(), color=colors, width=0.8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(diff)), diff.index, rotation=90, fontsize=5 if len(diff) > 40 else 7)
    a, b = names
    ax.set(ylabel=f"AP({b}) - AP({a})", title=f"{protocol}: {b} better on {int((diff > 0).sum())} of {len(diff)}")
    return fig


def plot_embedding(
    descriptors: np.ndarray, labels: Sequence[str], *, method: str = "tsne", seed: int = 0, perplexity: float = 30.0
) -> Figure:
    """2-D scatter of descriptors ``(N, D)`` coloured by landmark label ``(N,)``: t-SNE (scikit-learn) or PCA."""
    x = np.asarray(descriptors, dtype=np.float64)
    labels = np.asarray(labels)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as err:
            raise ImportError(
                "method='tsne' needs scikit-learn (pip install scikit-learn); or use method='pca'"
            ) from err
        xy = TSNE(2, perplexity=min(perplexity, len(x) - 1), init="pca", random_state=seed).fit_transform(x)
    elif method == "pca":
        centred = x - x.mean(axis=0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        xy = u[:, :2] * s[:2]
    else:
        raise ValueError(f"unknown method {method!r}; expected 'tsne' or 'pca'")
    classes = sorted(set(labels.tolist()))
    palette = sns.color_palette("husl" if len(classes) > 10 else "colorblind", len(classes))
    fig, ax = plt.subplots(figsize=(3.6, 3.2), layout="constrained")
    for c, color in zip(classes, palette, strict=True):
        pts = xy[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=8, color=color, label=c)
    ax.set(xticks=[], yticks=[], title=f"{method.upper()} of {len(x)} descriptors")
    if len(classes) <= 20:
        ax.legend(fontsize=6, markerscale=1.5, loc="best")
    return fig
