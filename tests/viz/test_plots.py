"""Per-query AP figure: bars carry the AP values; figure names cover their parameters; files are written under
the derived name, atomically, at the paper style's dpi."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from irlib.viz import style
from irlib.viz.plots import MAX_NAME, figure_name, plot_benchmark_breakdown, plot_per_query_ap, save_figure


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


def test_benchmark_breakdown_shows_domains_groups_or_headline_values():
    uned = {
        "R@1": 60.0,
        "per_domain": {"cars": {"R@1": 50.0, "mMP@5": 40.0}, "gldv2": {"R@1": 70.0, "mMP@5": 30.0}},
        "official_rounded": {"R@1": 0.6},
    }
    ax = plot_benchmark_breakdown(uned, "uned").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cars", "gldv2"]
    assert {c.get_label(): [b.get_height() for b in c] for c in ax.containers} == {
        "R@1": [50.0, 70.0],
        "mMP@5": [40.0, 30.0],
    }
    ilias = {"mAP@1000": 40.0, "scale": {"0-0.07": 10.0, "0.07-inf": 60.0}, "clutter": {"0-18": 45.0}}
    axes = plot_benchmark_breakdown(ilias).axes
    assert [a.get_title() for a in axes] == ["scale", "clutter"]
    assert [b.get_height() for b in axes[0].containers[0]] == [10.0, 60.0]
    gldv2 = plot_benchmark_breakdown({"private mAP@100": 20.0, "public mAP@100": 25.0}).axes[0]
    assert [b.get_height() for b in gldv2.containers[0]] == [20.0, 25.0]
    plt.close("all")


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


def test_figure_name_spells_out_every_parameter():
    name = figure_name(
        "04_pr",
        "demo",
        "",
        models=["GeM", "GeM + SuperGlobal"],
        weights_b=Path("runs/x/fine-tuned/model.pth"),
        rerank="",
        rerank_params={"M": 50},
        k=8,
        size=384,
    )
    assert name == "04_pr_demo_models=GeM+GeM-SuperGlobal_weights_b=model_rerank=none_rerank_params=M=50_k=8_size=384"
    assert figure_name("04", k=8) != figure_name("04", k=10)
    long_a, long_b = figure_name("x" * 300, k=1), figure_name("x" * 300, k=2)
    assert len(long_a) == MAX_NAME and long_a[:189] == "x" * 189 and long_a != long_b


def _png_figure() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    return fig


def test_save_figure_uses_the_style_dpi(tmp_path, monkeypatch):
    png, pdf = save_figure(_png_figure(), "line", tmp_path)
    assert Image.open(png).info["dpi"] == pytest.approx((style.PAPER_RC["savefig.dpi"],) * 2, abs=0.01)
    assert pdf.read_bytes().startswith(b"%PDF")
    monkeypatch.setitem(style.PAPER_RC, "savefig.dpi", 100)
    png, _ = save_figure(_png_figure(), "line", tmp_path)
    assert Image.open(png).info["dpi"] == pytest.approx((100, 100), abs=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.pdf", "line.png"]  # no temporary file left


def test_save_figure_keeps_the_previous_file_when_rendering_fails(tmp_path):
    fig = _png_figure()
    png, pdf = save_figure(fig, "line", tmp_path)
    before = png.read_bytes(), pdf.read_bytes()

    def broken(path, **kwargs):
        Path(path).write_bytes(b"half a figure")
        raise RuntimeError("disk full")

    fig.savefig = broken
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, "line", tmp_path)
    assert (png.read_bytes(), pdf.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.pdf", "line.png"]
