"""Retrieval figures, checked by content: frame colours = ground-truth labels, the query box where the ground truth
puts it, AP in titles = evaluate's, bar heights and order, PR points of a hand case, scatter points per label."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from irlib.data.revisited import RevisitedDataset
from irlib.eval.revisited import evaluate
from irlib.viz.datasets import BOX_COLOR
from irlib.viz.retrieval import (
    ap_differences,
    best_and_worst_queries,
    plot_ap_difference,
    plot_embedding,
    plot_pr_curves,
    plot_retrieval_comparison,
    plot_retrieval_grid,
    pr_curve,
    result_labels,
)
from irlib.viz.style import RESULT_COLORS, paper_style

# q_0: easy [0, 2], hard [4], junk [1]; q_1: easy [1], hard [3, 5]
SCORES = np.array(
    [
        [0.7, 0.9, 0.3, 0.8, 0.2, 0.5],  # q_0 ranking: 1 3 0 5 2 4
        [0.1, 0.2, 0.3, 0.9, 0.5, 0.5],  # q_1 ranking: 3 4 5 (tie, lower id first) 2 1 0
    ]
)


def _rgb(name: str) -> np.ndarray:
    return np.round(np.array(to_rgb(RESULT_COLORS[name])) * 255)


def test_result_labels_follow_each_protocol(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    ranked = [1, 3, 0, 5, 2, 4]
    assert result_labels(ds.gnd[0], ranked, "medium") == ["junk", "negative", "positive", "negative"] + ["positive"] * 2
    assert result_labels(ds.gnd[0], ranked, "easy") == ["junk", "negative", "positive", "negative", "positive", "junk"]
    assert result_labels(ds.gnd[0], ranked, "hard") == ["junk", "negative", "junk", "negative", "junk", "positive"]


@pytest.mark.parametrize("protocol", ["medium", "hard"])
def test_grid_frames_match_ground_truth_and_title_has_the_ap(tiny_revisited, protocol):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    fig = plot_retrieval_grid(ds, SCORES, [0, "q_1"], protocol=protocol, k=5, thumb=48, frame=4)
    axes = np.array(fig.axes).reshape(2, 6)
    aps = evaluate(ds.gnd, scores=SCORES, protocols=(protocol,))[protocol]["aps"] * 100
    for q, row in enumerate(axes):
        ranked = np.argsort(-SCORES[q], kind="stable")[:5]
        assert row[0].get_title().endswith(f"AP {aps[q]:.1f} ({protocol})")
        assert row[0].get_title().splitlines()[0] == ds.qimlist[q]
        for ax, j, lab in zip(row[1:], ranked, result_labels(ds.gnd[q], ranked, protocol), strict=True):
            pixels = ax.images[0].get_array()
            np.testing.assert_array_equal(pixels[0, 0], _rgb(lab))
            np.testing.assert_array_equal(pixels[-2, 24], _rgb(lab))
            assert ds.imlist[j] in ax.get_title()
            assert ax.get_title().endswith("(junk)") == (lab == "junk")
    # the query panels: no frame, and the ground-truth box as a rectangle over the displayed image
    for q, ax in enumerate(axes[:, 0]):
        shown = ax.images[0].get_array()
        np.testing.assert_array_equal(shown[0, 0], [255, 255, 255])
        rows, cols = np.nonzero((shown != 255).any(axis=-1))  # the image (its pixels are never pure white)
        left, top, width, height = cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()
        full_w, full_h = ds.load_query(q, crop=False).size
        x1, y1, x2, y2 = ds.gnd[q]["bbx"]
        (box,) = ax.patches
        assert box.get_xy() == pytest.approx((left - 0.5 + x1 * width / full_w, top - 0.5 + y1 * height / full_h))
        assert box.get_width() == pytest.approx((x2 - x1) * width / full_w)
        assert box.get_height() == pytest.approx((y2 - y1) * height / full_h)
        assert box.get_edgecolor()[:3] == pytest.approx(np.array(BOX_COLOR) / 255) and not box.get_fill()
    # q_1's box is the whole image: the rectangle is the displayed image's outline
    (box,) = axes[1, 0].patches
    assert box.get_width() == pytest.approx(40) and box.get_height() == pytest.approx(27)


def test_comparison_rows_rank_each_method(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    other = SCORES[:, ::-1].copy()
    fig = plot_retrieval_comparison(ds, SCORES, other, "q_0", ("gem", "dolg"), k=3, thumb=32, frame=3)
    axes = np.array(fig.axes).reshape(2, 4)
    assert axes[0, 0].get_title().startswith("gem: q_0") and axes[1, 0].get_title().startswith("dolg: q_0")
    assert [ax.get_title().split()[1] for ax in axes[1, 1:]] == ["db_4", "db_2", "db_5"]
    np.testing.assert_array_equal(axes[1, 1].images[0].get_array()[0, 0], _rgb("positive"))


def test_best_and_worst_queries_skip_nan():
    per_query = pd.DataFrame({"medium": [50.0, np.nan, 90.0, 10.0]}, index=["a", "b", "c", "d"])
    assert best_and_worst_queries(per_query, "medium", 2) == (["c", "a"], ["d", "a"])


def test_pr_curve_hand_case_and_endpoints(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    # q_0 medium, junk 1 removed: 3 0 5 2 4 -> negative, positive, negative, positive, positive
    recall, precision = pr_curve(SCORES[0], ds.gnd[0], "medium")
    np.testing.assert_allclose(recall, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 4, 3 / 5])
    fig = plot_pr_curves(ds, {"a": SCORES, "b": SCORES[:, ::-1].copy()}, "medium", query=0)
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), recall)
    assert "AP" in line.get_label()
    mean = plot_pr_curves(ds, {"a": SCORES}, "medium", recall_levels=11).axes[0].lines[0]
    assert mean.get_xdata()[-1] == 1.0
    # at recall 1 both queries' interpolated precision is the precision at their last positive
    p1 = pr_curve(SCORES[1], ds.gnd[1], "medium")[1][-1]
    assert mean.get_ydata()[-1] == pytest.approx((3 / 5 + p1) / 2)
    assert mean.get_ydata()[0] == 1.0


def test_ap_difference_bars_sorted_and_coloured_by_sign():
    a = pd.DataFrame({"hard": [10.0, 50.0, 30.0, np.nan]}, index=["q1", "q2", "q3", "q4"])
    b = pd.DataFrame({"hard": [40.0, 20.0, 30.0, 5.0]}, index=["q1", "q2", "q3", "q4"])
    assert ap_differences(a, b, "hard").to_dict() == {"q1": 30.0, "q3": 0.0, "q2": -30.0}  # the largest gain first
    fig = plot_ap_difference(a, b, "hard", ("gem", "dolg"))
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [30.0, 0.0, -30.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["q1", "q3", "q2"]
    assert ax.patches[0].get_facecolor()[:3] == pytest.approx(to_rgb(RESULT_COLORS["positive"]))
    assert ax.patches[2].get_facecolor()[:3] == pytest.approx(to_rgb(RESULT_COLORS["negative"]))
    assert ax.get_title() == "hard: dolg better on 1 of 3"


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_scatter_has_every_point_coloured_by_label(method):
    rng = np.random.default_rng(0)
    labels = ["all_souls"] * 20 + ["radcliffe"] * 25
    x = np.r_[rng.normal(0, 0.1, (20, 16)) + 3, rng.normal(0, 0.1, (25, 16))]
    with paper_style():
        fig = plot_embedding(x, labels, method=method, perplexity=10)
    ax = fig.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [20, 25]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["all_souls", "radcliffe"]
    colors = [tuple(c.get_facecolor()[0]) for c in ax.collections]
    assert colors[0] != colors[1]
    # the two landmarks stay apart: every point is nearer its own landmark's centre than the other one's
    first, second = (np.asarray(c.get_offsets()) for c in ax.collections)
    for own, other in ((first, second), (second, first)):
        d_own = np.linalg.norm(own - own.mean(0), axis=1)
        d_other = np.linalg.norm(own - other.mean(0), axis=1)
        assert (d_own < d_other).all()
    with pytest.raises(ValueError, match="unknown method"):
        plot_embedding(x, labels, method="umap")
