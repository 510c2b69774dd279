"""Per-query AP figure: bars carry the AP values, files are written under the derived name."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd

from irlib.viz.plots import figure_name, plot_per_query_ap, save_figure


def test_bars_show_each_query_ap_sorted_by_medium(tmp_path):
    per_query = pd.DataFrame(
        {"easy": [np.nan, 80.0, 10.0], "medium": [20.0, 90.0, 50.0], "hard": [5.0, 70.0, 30.0]},
        index=pd.Index(["q_a", "q_b", "q_c"], name="query"),
    )
    fig = plot_per_query_ap(per_query, "demo")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["q_b", "q_c", "q_a"]
    heights = {c.get_label(): [b.get_height() for b in c] for c in ax.containers}
    assert heights["medium (mAP 53.3)"] == [90.0, 50.0, 20.0]
    assert heights["easy (mAP 45.0)"] == [80.0, 10.0, 0.0]  # NaN (no positive) drawn as an empty bar
    paths = save_figure(fig, figure_name("03", "demo", "gem", "efficientnet_lite0", "pretrained=True"), tmp_path)
    assert [p.name for p in paths] == [
        "03_demo_gem_efficientnet_lite0_pretrained=True.png",
        "03_demo_gem_efficientnet_lite0_pretrained=True.pdf",
    ]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_training_curves_plot_the_logged_loss_and_lr(tmp_path):
    import json

    from irlib.viz.plots import plot_training_curves, read_metrics_jsonl

    records = [{"step": s, "loss": 5.0 / s, "lr": 0.01 * s / 3} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = plot_training_curves(read_metrics_jsonl(tmp_path / "metrics.jsonl"))
    loss_line, lr_line = fig.axes[0].lines[0], fig.axes[1].lines[0]
    assert list(loss_line.get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(loss_line.get_ydata(), [5.0, 2.5, 5.0 / 3])
    np.testing.assert_allclose(lr_line.get_ydata(), [0.01 / 3, 0.02 / 3, 0.01])
