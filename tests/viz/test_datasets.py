"""Dataset figures, checked by content: bar heights, thumbnails of the right class, boxes where the ground truth is."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from irlib.data.inspection import image_sizes, image_table
from irlib.data.overlap import OverlapCandidate, precision_recall_curve
from irlib.data.revisited import RevisitedDataset
from irlib.viz.datasets import (
    BOX_COLOR,
    draw_box,
    plot_image_sizes,
    plot_images_per_class,
    plot_overlap_pairs,
    plot_positives_per_query,
    plot_precision_recall,
    plot_query_boxes,
    sample_grid,
)


def test_images_per_class_histogram_counts_every_class_on_log_axes():
    counts = [1, 1, 2, 3, 5, 40, 900]
    fig = plot_images_per_class(counts)
    ax = fig.axes[0]
    assert sum(p.get_height() for p in ax.patches) == len(counts)
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert ax.get_title() == "7 classes, 952 images (median 3)"
    with pytest.raises(ValueError, match="positive class sizes"):
        plot_images_per_class([3, 0])


def test_image_sizes_scatter_holds_the_sizes(tiny_revisited):
    sizes = image_sizes(sorted((tiny_revisited / "jpg").glob("*.jpg")))
    fig = plot_image_sizes(sizes)
    points = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_array_equal(points, sizes[["width", "height"]].to_numpy())
    assert sum(p.get_height() for p in fig.axes[1].patches) == len(sizes)


def test_sample_grid_rows_show_images_of_their_class(tmp_path):
    colors = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}
    rows = []
    for label, color in colors.items():
        for k in range(3):
            path = tmp_path / f"{label}_{k}.png"
            Image.new("RGB", (60, 40), color).save(path)
            rows.append((str(path), label, "train"))
    table = pd.DataFrame(rows + [("unlabelled.png", "", "distractor")], columns=["path", "label", "role"])
    fig = sample_grid(table, n_classes=2, per_class=4, seed=3, thumb=32)
    axes = np.array(fig.axes).reshape(2, 4)
    for row in axes:
        title = row[0].get_title(loc="left")
        label = title.split(" ")[0]
        assert title == f"{label} (3)" and label in colors
        shown = [ax.images[0].get_array() for ax in row if ax.images]
        assert len(shown) == 3  # three images exist, the fourth cell stays empty
        for img in shown:
            assert tuple(img[16, 16]) == colors[label]  # centre of the letterboxed thumbnail
    with pytest.raises(ValueError, match="no labelled image"):
        sample_grid(table[table["label"] == ""])


def test_positives_per_query_bars_and_no_easy_marker():
    per_query = pd.DataFrame({"E": [0, 4], "M": [3, 9], "H": [3, 5]}, index=["q_a", "q_b"])
    ax = plot_positives_per_query(per_query).axes[0]
    heights = {c.get_label(): [b.get_height() for b in c] for c in ax.containers}
    assert heights == {"easy": [4, 0], "medium": [9, 3], "hard": [5, 3]}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["q_b", "q_a*"]


def test_draw_box_outlines_exactly_the_box():
    img = Image.new("RGB", (100, 80), (0, 0, 0))
    out = np.asarray(draw_box(img, [10.0, 20.0, 60.0, 70.0], width=2))
    assert tuple(out[20, 30]) == BOX_COLOR and tuple(out[45, 10]) == BOX_COLOR and tuple(out[70, 60]) == BOX_COLOR
    assert tuple(out[45, 30]) == (0, 0, 0) and tuple(out[5, 5]) == (0, 0, 0)
    assert np.asarray(img).max() == 0  # the input is not modified


def test_query_boxes_are_drawn_where_the_ground_truth_says(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    fig = plot_query_boxes(ds, cols=2)
    shown = fig.axes[0].images[0].get_array()
    x1, y1, x2, _ = (round(c) for c in ds.gnd[0]["bbx"])
    assert tuple(shown[y1, (x1 + x2) // 2]) == BOX_COLOR
    assert fig.axes[0].get_title() == "q_0" and fig.axes[1].get_title() == "q_1"
    assert len(image_table(ds)) == 8


def test_overlap_pairs_show_the_evidence_and_mark_planted_ones(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    box = ds.gnd[0]["bbx"]
    candidates = [
        OverlapCandidate(7, 0.61, 0.8, ds.db_paths[0], ds.query_paths[0], tuple(box), "q_0", inliers=40),
        OverlapCandidate(3, 0.20, 0.3, ds.db_paths[1], ds.db_paths[2], None, "q_1"),
    ]
    fig = plot_overlap_pairs(candidates, truth=[7])
    axes = np.array(fig.axes).reshape(2, 2)
    assert axes[0, 0].get_title(loc="left") == "landmark 7 (planted): score 0.610"
    assert axes[0, 1].get_title(loc="left") == "q_0: cosine 0.800, 40 inliers"
    assert axes[1, 0].get_title(loc="left") == "landmark 3: score 0.200"
    shown = axes[0, 1].images[0].get_array()
    x1, y1, x2, _ = (round(c) for c in box)
    assert tuple(shown[y1, (x1 + x2) // 2]) == BOX_COLOR  # the query box is drawn on the test image
    np.testing.assert_array_equal(axes[1, 1].images[0].get_array(), np.asarray(Image.open(ds.db_paths[2])))
    with pytest.raises(ValueError, match="no candidate"):
        plot_overlap_pairs([])


def test_overlap_pairs_of_a_text_only_candidate_say_no_image():
    c = OverlapCandidate(
        31, 0.9, float("nan"), None, None, None, "", source="text", matched_name="Les Invalides",
        matched_landmark="paris_invalides",
    )  # fmt: skip
    ax_train, ax_test = plot_overlap_pairs([c]).axes
    assert not ax_train.images and ax_train.texts[0].get_text() == "no image"
    assert ax_test.get_title(loc="left") == "name: Les Invalides (paris_invalides)"


def test_precision_recall_figure_plots_the_curve():
    curve = precision_recall_curve([5, 9, 2, 4], true_ids=[5, 2])
    ax = plot_precision_recall(curve).axes[0]
    precision, recall = (line.get_ydata().tolist() for line in ax.lines)
    assert precision == [1.0, 0.5, 2 / 3, 0.5] and recall == [0.5, 0.5, 1.0, 1.0]
