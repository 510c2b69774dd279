"""Dataset figures for notebook 01: class sizes, image sizes, sample grids, revisited ground truth, query boxes and
train-test overlap candidates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from irlib.data.images import load_image
from irlib.data.overlap import OverlapCandidate
from irlib.data.revisited import RevisitedDataset
from irlib.viz.plots import PROTOCOL_COLORS

__all__ = [
    "draw_box",
    "plot_image_sizes",
    "plot_images_per_class",
    "plot_overlap_pairs",
    "plot_positives_per_query",
    "plot_precision_recall",
    "plot_query_boxes",
    "sample_grid",
]

BOX_COLOR = (230, 40, 40)


def plot_images_per_class(counts: Sequence[int] | np.ndarray | pd.Series, title: str = "") -> Figure:
    """Histogram of images per class with logarithmic axes (class sizes of landmark sets span 1 to 10^4)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0 or counts.min() < 1:
        raise ValueError("counts must be a non-empty list of positive class sizes")
    hi = int(counts.max())
    bins = np.unique(np.round(np.geomspace(1, hi + 1, num=min(40, hi + 1)))) if hi > 1 else np.array([1, 2])
    fig, ax = plt.subplots(figsize=(5.5, 3.2), layout="constrained")
    ax.hist(counts, bins=bins, color="#3b75af", edgecolor="white", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="images per class", ylabel="classes")
    ax.set_title(title or f"{counts.size} classes, {counts.sum()} images (median {np.median(counts):g})")
    return fig


def plot_image_sizes(sizes: pd.DataFrame, title: str = "") -> Figure:
    """Width against height (left) and the aspect-ratio distribution on a log2 axis (right), from ``image_sizes``."""
    ok = sizes.dropna(subset=["width", "height"])
    fig, (ax_wh, ax_ar) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    if len(ok) > 2000:
        ax_wh.hexbin(ok["width"], ok["height"], gridsize=40, bins="log", cmap="Blues")
    else:
        ax_wh.scatter(ok["width"], ok["height"], s=6, alpha=0.5, color="#3b75af")
    ax_wh.set(xlabel="width (px)", ylabel="height (px)", title=f"{len(ok)} images")
    ticks = np.array([1 / 3, 1 / 2, 3 / 4, 1, 4 / 3, 2, 3])
    edge = np.log2(3.5)
    log_aspect = np.clip(np.log2(ok["aspect"]), -edge, edge)  # extreme panoramas land in the outer bins
    ax_ar.hist(log_aspect, bins=np.linspace(-edge, edge, 49), color="#4c9f70", edgecolor="white", linewidth=0.5)
    ax_ar.set_xticks(np.log2(ticks), [f"{t:.2g}" for t in ticks])
    ax_ar.set(xlabel="aspect ratio (w / h)", ylabel="images", title="landscape > 1 > portrait")
    fig.suptitle(title)
    return fig


def _thumbnail(path: str, size: int) -> np.ndarray:
    img = load_image(path)
    img.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return np.asarray(canvas)


def sample_grid(
    table: pd.DataFrame, *, n_classes: int = 6, per_class: int = 6, seed: int = 0, thumb: int = 128
) -> Figure:
    """A grid of thumbnails: one row per randomly chosen class (label), ``per_class`` random images of it.

    ``table`` is an :func:`irlib.data.inspection.image_table`; unlabelled rows are ignored.
    """
    labelled = table[table["label"] != ""]
    if labelled.empty:
        raise ValueError("the table has no labelled image to show")
    rng = np.random.default_rng(seed)
    classes = sorted(labelled["label"].unique())
    chosen = [classes[i] for i in np.sort(rng.choice(len(classes), min(n_classes, len(classes)), replace=False))]
    fig, axes = plt.subplots(
        len(chosen), per_class, figsize=(1.3 * per_class, 1.4 * len(chosen)), squeeze=False, layout="constrained"
    )
    for row, label in zip(axes, chosen, strict=True):
        paths = labelled.loc[labelled["label"] == label, "path"].tolist()
        picks = [paths[i] for i in np.sort(rng.choice(len(paths), min(per_class, len(paths)), replace=False))]
        for j, ax in enumerate(row):
            ax.set_axis_off()
            if j < len(picks):
                ax.imshow(_thumbnail(picks[j], thumb))
        row[0].set_title(f"{label} ({len(paths)})", fontsize=7, loc="left")
    return fig


def plot_positives_per_query(per_query: pd.DataFrame, title: str = "") -> Figure:
    """Bars of the positives of each query under Easy/Medium/Hard (from ``positives_per_query``), sorted by Medium;
    queries without an easy positive (left out of Easy mAP) are marked with ``*``."""
    order = per_query.sort_values("M", ascending=False)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(order) + 2), 3.4), layout="constrained")
    width = 0.27
    for j, (col, name) in enumerate((("E", "easy"), ("M", "medium"), ("H", "hard"))):
        ax.bar(np.arange(len(order)) + (j - 1) * width, order[col], width, color=PROTOCOL_COLORS[name], label=name)
    labels = [f"{q}*" if n == 0 else q for q, n in zip(order.index, order["E"], strict=True)]
    ax.set_xticks(range(len(order)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("positives")
    ax.legend(fontsize=8, ncols=3)
    ax.set_title(title)
    return fig


def draw_box(
    img: Image.Image, box: Sequence[float], color: tuple[int, int, int] = BOX_COLOR, width: int = 0
) -> Image.Image:
    """A copy of ``img`` with the ``[x1, y1, x2, y2]`` box outlined (line width defaults to 1/150 of the image)."""
    out = img.convert("RGB")
    width = width or max(2, round(max(out.size) / 150))
    ImageDraw.Draw(out).rectangle([float(c) for c in box], outline=color, width=width)
    return out


def plot_query_boxes(dataset: RevisitedDataset, indices: Sequence[int] | None = None, cols: int = 4) -> Figure:
    """Query images (uncropped) with their ground-truth boxes drawn; default: the first ``2 * cols`` queries."""
    indices = list(range(min(2 * cols, dataset.n_queries))) if indices is None else list(indices)
    rows = max(1, -(-len(indices) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, indices, strict=False):
        ax.imshow(draw_box(dataset.load_query(i, crop=False), dataset.gnd[i]["bbx"]))
        ax.set_title(dataset.qimlist[i], fontsize=7)
    return fig


def plot_overlap_pairs(candidates: Sequence[OverlapCandidate], n: int = 6, truth: Iterable[int] = ()) -> Figure:
    """The evidence of the first ``n`` overlap candidates: training image (left) beside the test image with its query
    box (right); a title per pair with landmark id, score and cosine, marked "planted" when in ``truth``."""
    shown = list(candidates)[:n]
    if not shown:
        raise ValueError("no candidate to show")
    truth = {int(t) for t in truth}
    fig, axes = plt.subplots(len(shown), 2, figsize=(6.0, 2.3 * len(shown)), squeeze=False, layout="constrained")
    for (ax_train, ax_test), c in zip(axes, shown, strict=True):
        if c.train_image is not None:
            ax_train.imshow(load_image(c.train_image))
        else:
            ax_train.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=8, transform=ax_train.transAxes)
        if c.test_image is not None:
            test = load_image(c.test_image)
            ax_test.imshow(draw_box(test, c.test_box) if c.test_box is not None else test)
        else:
            ax_test.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=8, transform=ax_test.transAxes)
        for ax in (ax_train, ax_test):
            ax.set_axis_off()
        mark = " (planted)" if c.landmark_id in truth else ""
        inliers = "" if c.inliers is None else f", {c.inliers} inliers"
        ax_train.set_title(f"landmark {c.landmark_id}{mark}: score {c.score:.3f}", fontsize=8, loc="left")
        if c.source == "text":
            ax_test.set_title(f"name: {c.matched_name} ({c.matched_landmark})", fontsize=8, loc="left")
        else:
            ax_test.set_title(f"{c.query}: cosine {c.similarity:.3f}{inliers}", fontsize=8, loc="left")
    return fig


def plot_precision_recall(curve: pd.DataFrame, title: str = "") -> Figure:
    """Precision and recall of ranked candidates against the truth at every cut-off k (``precision_recall_curve``)."""
    fig, ax = plt.subplots(figsize=(5.0, 3.0), layout="constrained")
    ax.plot(curve.index, curve["precision"], marker="o", ms=3, color="#3b75af", label="precision")
    ax.plot(curve.index, curve["recall"], marker="s", ms=3, color="#c0504d", label="recall")
    ax.set(xlabel="candidates kept (k)", ylabel="fraction", ylim=(0, 1.05), title=title)
    ax.legend(fontsize=8)
    return fig
