"""The comparison table: every cell says re-run (run id) or copied (source, confidence), with re-run − published."""

from __future__ import annotations

import pandas as pd

from irlib.results.table import comparison_cells, comparison_table, provenance_notes, to_latex, to_markdown

RUNS = pd.DataFrame(
    {
        "id": ["aaa111", "bbb222"],
        "dataset": ["roxford5k", "rparis6k"],
        "distractors": [None, "r1m"],
        "method": ["gem", "gem"],
        "backbone": ["resnet101", "resnet101"],
        "rerank": [None, "superglobal"],
        "medium.map": [66.0, 50.5],
        "hard.map": [40.0, float("nan")],
    }
)
PUBLISHED = pd.DataFrame(
    {
        "method": ["GeM", "GeM", "CVNet"],
        "backbone": ["R101", "R101", "R50"],
        "dataset": ["roxford5k", "roxford5k", "roxford5k"],
        "protocol": ["medium", "hard", "medium"],
        "distractors": ["none", "none", "none"],
        "map": [64.7, 38.5, 81.0],
        "source": ["cirtorch README", "cirtorch README", "CVNet paper Table 2"],
        "confidence": ["verified", "verified", "recalled"],
    }
)


def test_cells_carry_provenance_and_the_difference_to_the_published_value():
    cells = comparison_cells(
        RUNS,
        PUBLISHED,
        datasets=("roxford5k", "rparis6k"),
        aliases={"ours (GeM R101)": "GeM (R101)"},
        labels={"aaa111": "ours (GeM R101)"},
    )
    ours = cells[cells["row"] == "ours (GeM R101)"].set_index("protocol")
    assert ours.loc["medium", "provenance"] == "re-run" and ours.loc["medium", "ref"] == "aaa111"
    assert round(ours.loc["medium", "diff"], 6) == round(66.0 - 64.7, 6)
    assert round(ours.loc["hard", "diff"], 6) == round(40.0 - 38.5, 6)
    sg = cells[cells["row"] == "gem/resnet101 + superglobal"]
    assert sg[["dataset", "distractors", "protocol", "map"]].values.tolist() == [["rparis6k", "r1m", "medium", 50.5]]
    assert sg["diff"].isna().all()  # no alias: nothing to compare with
    cvnet = cells[cells["row"] == "CVNet (R50)"].iloc[0]
    assert (cvnet["provenance"], cvnet["ref"], cvnet["confidence"]) == ("copied", "CVNet paper Table 2", "recalled")
    assert len(cells) == 3 + 3  # two re-run cells of run 1, one of run 2 (hard is NaN), three copied


def test_table_and_exports_mark_every_cell():
    cells = comparison_cells(RUNS, PUBLISHED, labels={"aaa111": "ours"}, aliases={"ours": "GeM (R101)"})
    table = comparison_table(cells)
    assert list(table.columns)[:2] == [("roxford5k", "none", "medium"), ("roxford5k", "none", "hard")]
    assert table.loc["ours", ("roxford5k", "none", "medium")] == "66.0 [r1] (+1.3)"
    assert table.loc["GeM (R101)", ("roxford5k", "none", "medium")] == "64.7 [c1]"
    assert table.loc["CVNet (R50)", ("roxford5k", "none", "hard")] == "–"
    notes = provenance_notes(cells)
    assert "[r1] re-run: run aaa111" in notes and "[c2] copied from CVNet paper Table 2 (recalled)" in notes
    markdown = to_markdown(cells)
    assert (
        "| ours | 66.0 [r1] (+1.3) | 40.0 [r1] (+1.5) |" in markdown
        and "- [c1] copied from cirtorch README" in markdown
    )
    latex = to_latex(cells)
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert "% [r2] re-run: run bbb222" in latex


def test_the_most_reliable_source_wins_a_disputed_cell():
    disputed = pd.concat(
        [
            PUBLISHED.assign(confidence=["derived", "verified", "recalled"], map=[60.0, 38.5, 81.0]),
            PUBLISHED.iloc[[0]].assign(source="other paper", confidence="recalled"),
            PUBLISHED.iloc[[0]].assign(source="a third paper", confidence="derived", map=61.0),
        ]
    )
    cells = comparison_cells(RUNS.iloc[:0], disputed)
    gem = cells[(cells["row"] == "GeM (R101)") & (cells["protocol"] == "medium")].iloc[0]
    assert (gem["map"], gem["ref"], gem["confidence"]) == (64.7, "other paper", "recalled")
