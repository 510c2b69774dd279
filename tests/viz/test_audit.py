"""Audit figures, checked by content: which methods and sources are drawn, which cells have which verdict colour,
the bar lengths and the copy arrows."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba

from irlib.results.audit import VERDICTS, audit, copied_share, copy_graph, verdict_matrix
from irlib.results.published import COLUMNS, published_results
from irlib.viz.audit import (
    VERDICT_COLORS,
    plot_copied_share,
    plot_copy_graph,
    plot_reported_spread,
    plot_verdict_matrix,
)

SOURCES = pd.DataFrame(
    {"kind": "paper", "title": "", "venue": "", "year": [2020, 2021, 2022, 2023], "url": ""},
    index=pd.Index(["a-paper", "b-paper", "c-paper", "d-paper"], name="key"),
)


def audited(tmp_path) -> pd.DataFrame:
    """Method A (paper a) reported by b (copied) and c (re-run, stated); method B (paper b) by d (copied), with only
    one source for its medium cell."""

    def row(paper: str, source: str, kind: str, value: str, protocol: str = "hard") -> dict[str, str]:
        return dict.fromkeys(COLUMNS, "") | {
            "method": paper,
            "method_paper": paper,
            "reported_in": source,
            "kind": kind,
            "backbone": "R50",
            "dataset": "roxford5k",
            "protocol": protocol,
            "distractors": "none",
            "map": value,
            "source": source,
            "confidence": "verified",
        }

    rows = [
        row("a-paper", "a-paper", "original", "60.1"),
        row("a-paper", "b-paper", "unstated", "60.1"),
        row("a-paper", "c-paper", "re-run", "57.3"),
        row("b-paper", "b-paper", "original", "65.0"),
        row("b-paper", "d-paper", "unstated", "65.0"),
        row("b-paper", "b-paper", "original", "80.0", protocol="medium"),
    ]
    path = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return audit(published_results(path), SOURCES)


def test_spread_draws_each_method_with_every_source_and_rings_the_originals(tmp_path):
    fig = plot_reported_spread(audited(tmp_path), "roxford5k", "hard")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a-paper (R50)", "b-paper (R50)"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert set(legend) == {"a-paper", "b-paper", "c-paper", "d-paper", "original"}
    stars = [c for c in ax.collections if c.get_label() == "original"]
    assert len(stars) == 1 and sorted(stars[0].get_offsets()[:, 0].tolist()) == [60.1, 65.0]
    points = np.concatenate([c.get_offsets() for c in ax.collections if c.get_label() != "original"])
    assert sorted(points[:, 0].round(1).tolist()) == [57.3, 60.1, 60.1, 65.0, 65.0]
    empty = plot_reported_spread(audited(tmp_path), "roxford5k", "medium")  # one source only: nothing to compare
    assert "no method" in empty.axes[0].texts[0].get_text()


def test_matrix_colours_each_cell_by_its_verdict(tmp_path):
    matrix = verdict_matrix(audited(tmp_path))
    fig = plot_verdict_matrix(matrix)
    ax = fig.axes[0]
    assert (
        [t.get_text() for t in ax.get_yticklabels()]
        == list(matrix.index)
        == ["a-paper", "b-paper", "c-paper", "d-paper"]
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a-paper", "b-paper"]
    image = ax.get_images()[0]
    rgba = image.cmap(image.norm(image.get_array()))
    for (i, source), (j, method) in [((1, "b-paper"), (0, "a-paper")), ((2, "c-paper"), (0, "a-paper"))]:
        assert tuple(rgba[i, j]) == to_rgba(VERDICT_COLORS[matrix.loc[source, method]])
    assert matrix.loc["b-paper", "a-paper"] == "copied" and matrix.loc["c-paper", "a-paper"] == "re-run"
    assert np.ma.is_masked(image.get_array()[2, 1])  # c reports nothing of method b
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"original", "copied", "re-run"}


def test_share_bars_and_copy_arrows(tmp_path):
    rows = audited(tmp_path)
    share = copied_share(rows)
    fig = plot_copied_share(share)
    ax = fig.axes[0]
    widths = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches, strict=True)}
    assert widths == {"b-paper": 100.0, "d-paper": 100.0, "c-paper": 0.0}
    edges = copy_graph(rows)
    assert edges[["source", "target"]].values.tolist() == [["b-paper", "a-paper"], ["d-paper", "b-paper"]]
    graph = plot_copy_graph(edges, SOURCES).axes[0]
    arrows = [t for t in graph.texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 2
    assert sorted((a.xyann, a.xy) for a in arrows) == [((2021, 1), (2020, 0)), ((2023, 2), (2021, 1))]
    assert {t.get_text() for t in graph.texts if t not in arrows} == {"a-paper", "b-paper", "d-paper"}
    assert set(VERDICT_COLORS) == set(VERDICTS)
