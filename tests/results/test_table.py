"""The comparison table: every cell says re-run (run id) or copied (source, confidence), with re-run − published."""

from __future__ import annotations

import re
import warnings

import pandas as pd
import pytest

from irlib.results import published_results
from irlib.results.table import (
    comparison_cells,
    comparison_table,
    export_table,
    provenance_notes,
    run_labels,
    to_latex,
    to_markdown,
)

RUNS = pd.DataFrame(
    {
        "id": ["aaa111", "bbb222"],
        "path": ["/r/gem", "/r/sg"],
        "created": pd.to_datetime(["2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"], utc=True),
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
        "train_set": ["sfm120k", "sfm120k", "gldv2-clean"],
        "dataset": ["roxford5k", "roxford5k", "roxford5k"],
        "protocol": ["medium", "hard", "medium"],
        "distractors": ["none", "none", "none"],
        "map": [64.7, 38.5, 81.0],
        "source": ["cirtorch README", "cirtorch README", "CVNet paper Table 2"],
        "confidence": ["verified", "verified", "recalled"],
        "note": ["", "", ""],
    }
)
GEM = "GeM (R101, sfm120k)"


def test_cells_carry_provenance_and_the_difference_to_the_published_value():
    cells = comparison_cells(RUNS, PUBLISHED, aliases={"ours (GeM R101)": GEM}, labels={"aaa111": "ours (GeM R101)"})
    ours = cells[cells["row"] == "ours (GeM R101)"].set_index("protocol")
    assert ours.loc["medium", "provenance"] == "re-run" and ours.loc["medium", "ref"] == "aaa111"
    assert ours.loc["medium", "diff"] == pytest.approx(66.0 - 64.7)
    assert ours.loc["hard", "diff"] == pytest.approx(40.0 - 38.5)
    sg = cells[cells["row"] == "gem/resnet101 + superglobal"]
    assert sg[["dataset", "distractors", "protocol", "map"]].values.tolist() == [["rparis6k", "r1m", "medium", 50.5]]
    assert sg["diff"].isna().all()  # no alias: nothing to compare with
    cvnet = cells[cells["row"] == "CVNet (R50, gldv2-clean)"].iloc[0]
    assert (cvnet["provenance"], cvnet["ref"], cvnet["confidence"]) == ("copied", "CVNet paper Table 2", "recalled")
    assert len(cells) == 3 + 3  # two re-run cells of run 1, one of run 2 (hard is NaN), three copied


def test_table_and_exports_mark_every_cell():
    cells = comparison_cells(RUNS, PUBLISHED, labels={"aaa111": "ours"}, aliases={"ours": GEM})
    table = comparison_table(cells)
    assert list(table.columns)[:2] == [("roxford5k", "none", "medium"), ("roxford5k", "none", "hard")]
    assert table.loc["ours", ("roxford5k", "none", "medium")] == "66.0 [r1] (+1.3)"
    assert table.loc[GEM, ("roxford5k", "none", "medium")] == "64.7 [c1]"
    assert table.loc["CVNet (R50, gldv2-clean)", ("roxford5k", "none", "hard")] == "–"
    notes = provenance_notes(cells)
    assert "[r1] re-run: run aaa111" in notes and "[c2] copied from CVNet paper Table 2 (recalled)" in notes
    markdown = to_markdown(cells)
    assert "| ours | 66.0 [r1] (+1.3) | 40.0 [r1] (+1.5) |" in markdown
    assert "- [c1] copied from cirtorch README (verified)" in markdown
    latex = to_latex(cells)
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert "ours & 66.0 {[}r1{]} (+1.3) & 40.0 {[}r1{]} (+1.5) &" in latex
    # the legend is visible text after the tabular, not comments
    legend = latex[latex.index(r"\end{tabular}") :]
    assert r"\footnotesize" in legend and r"{[}r2{]} re-run: run bbb222\par" in legend and "%" not in latex


def test_training_sets_are_separate_rows_and_aliases_pick_theirs():
    gldv1 = PUBLISHED.iloc[:2].assign(train_set="gldv1", map=[67.3, 44.3])
    cells = comparison_cells(RUNS.iloc[:1], pd.concat([PUBLISHED, gldv1]), labels={"aaa111": "ours"})
    medium = cells[(cells["protocol"] == "medium") & (cells["provenance"] == "copied")].set_index("row")["map"]
    assert medium[GEM] == 64.7 and medium["GeM (R101, gldv1)"] == 67.3
    aliased = comparison_cells(
        RUNS.iloc[:1], pd.concat([PUBLISHED, gldv1]), labels={"aaa111": "ours"}, aliases={"ours": "GeM (R101, gldv1)"}
    )
    assert aliased.set_index(["row", "protocol"]).loc[("ours", "hard"), "diff"] == pytest.approx(40.0 - 44.3)


def test_a_label_naming_different_rows_with_different_values_raises():
    # same label "GeM (R101, a, b)" from backbone "R101, a" + train "b" and backbone "R101" + train "a, b"
    clash = pd.concat(
        [
            PUBLISHED.iloc[[0]].assign(backbone="R101, a", train_set="b"),
            PUBLISHED.iloc[[0]].assign(train_set="a, b", map=70.0),
        ]
    )
    with pytest.raises(ValueError, match=r"'GeM \(R101, a, b\)' names different rows"):
        comparison_cells(RUNS.iloc[:0], clash)
    same_value = pd.concat([clash.iloc[[0]], clash.iloc[[1]].assign(map=64.7)])
    assert len(comparison_cells(RUNS.iloc[:0], same_value)) == 1  # agreeing rows are no conflict


def test_a_label_both_re_run_and_published_raises():
    with pytest.raises(ValueError, match="name both re-run and published rows"):
        comparison_cells(RUNS, PUBLISHED, labels={"aaa111": GEM})


def test_a_disputed_cell_shows_the_most_reliable_value_marked_with_the_alternatives_in_the_notes():
    disputed = pd.concat(
        [
            PUBLISHED.assign(confidence=["derived", "verified", "recalled"], map=[60.0, 38.5, 81.0]),
            PUBLISHED.iloc[[0]].assign(source="other paper", confidence="recalled", note="CONFLICT: see third"),
            PUBLISHED.iloc[[0]].assign(source="a third paper", confidence="derived", map=61.0, note="from a figure"),
            PUBLISHED.iloc[[0]].assign(source="a fourth paper", confidence="verified", map=64.7),  # agrees
        ]
    )
    cells = comparison_cells(RUNS.iloc[:0], disputed)
    gem = cells[(cells["row"] == GEM) & (cells["protocol"] == "medium")].iloc[0]
    assert (gem["map"], gem["ref"], gem["confidence"]) == (64.7, "a fourth paper", "verified")
    assert gem["alternatives"] == (
        (60.0, "cirtorch README", "derived", ""),
        (61.0, "a third paper", "derived", "from a figure"),
    )
    hard = cells[(cells["row"] == GEM) & (cells["protocol"] == "hard")].iloc[0]
    assert hard["alternatives"] == ()
    table = comparison_table(cells)
    assert table.loc[GEM, ("roxford5k", "none", "medium")] == "64.7 [c2, d1]"
    assert table.loc[GEM, ("roxford5k", "none", "hard")] == "38.5 [c1]"
    dispute = provenance_notes(cells)[-1]
    assert dispute.startswith(f"[d1] disputed: {GEM}, roxford5k none medium: shown 64.7 from a fourth paper (verified)")
    assert (
        "other values: 60 from cirtorch README (derived); 61 from a third paper (derived; note: from a figure)"
        in dispute
    )
    assert "[c2, d1]" in to_markdown(cells) and "{[}c2, d1{]}" in to_latex(cells)


def test_the_shipped_numbers_keep_training_sets_apart_and_mark_the_superglobal_conflict():
    cells = comparison_cells(RUNS.iloc[:0], published_results()).set_index(
        ["row", "dataset", "distractors", "protocol"]
    )
    gem = "GeM tl-gem-w (FC whitening, multi-scale) (R101, {})"
    assert cells.loc[(gem.format("gldv1"), "roxford5k", "none", "medium"), "map"] == 67.3
    assert cells.loc[(gem.format("sfm120k"), "roxford5k", "none", "medium"), "map"] == 67.8
    sg = cells.loc[("SuperGlobal (+rerank) (R50, gldv2-clean)", "roxford5k", "none", "hard")]
    assert sg["map"] == 77.1 and [a[0] for a in sg["alternatives"]] == [76.1] and "CONFLICT" in sg["note"]


def test_an_alias_to_an_unknown_row_raises_with_close_matches():
    with pytest.raises(ValueError, match=r"unknown published row 'GeM \(R101, sfm12k\)'.*'GeM \(R101, sfm120k\)'"):
        comparison_cells(RUNS, PUBLISHED, labels={"aaa111": "ours"}, aliases={"ours": "GeM (R101, sfm12k)"})
    with pytest.raises(ValueError, match=r"unknown re-run row 'our'.*'ours'"):
        comparison_cells(RUNS, PUBLISHED, labels={"aaa111": "ours"}, aliases={"our": GEM})


def test_an_alias_warns_when_backbone_or_reranking_disagree():
    published = pd.concat([PUBLISHED, PUBLISHED.iloc[[0]].assign(method="SuperGlobal (+rerank)")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resnet101 without reranking matches GeM (R101)
        comparison_cells(RUNS, published, labels={"aaa111": "ours"}, aliases={"ours": GEM})
    with pytest.warns(UserWarning, match="run backbone 'resnet101', published 'R50'"):
        comparison_cells(RUNS, published, labels={"aaa111": "ours"}, aliases={"ours": "CVNet (R50, gldv2-clean)"})
    with pytest.warns(UserWarning, match=r"run does not rerank, published 'SuperGlobal \(\+rerank\)' does"):
        comparison_cells(
            RUNS, published, labels={"aaa111": "ours"}, aliases={"ours": "SuperGlobal (+rerank) (R101, sfm120k)"}
        )
    reranked = RUNS.assign(dataset="roxford5k", distractors=None).iloc[[1]]
    with pytest.warns(UserWarning, match="run reranks"):
        comparison_cells(
            reranked,
            published.assign(method="SuperGlobal (no rerank)"),
            labels={"bbb222": "sg"},
            aliases={"sg": "SuperGlobal (no rerank) (R101, sfm120k)"},
        )


def test_a_run_with_distractors_is_compared_only_with_the_published_value_with_distractors():
    run = RUNS.iloc[[0]].assign(distractors="r1m")
    cells = comparison_cells(run, PUBLISHED, labels={"aaa111": "ours"}, aliases={"ours": GEM})
    ours = cells[cells["row"] == "ours"]
    assert set(ours["distractors"]) == {"r1m"} and ours["published"].isna().all() and ours["diff"].isna().all()
    r1m = PUBLISHED.iloc[[0]].assign(distractors="r1m", map=45.0)
    cells = comparison_cells(run, pd.concat([PUBLISHED, r1m]), labels={"aaa111": "ours"}, aliases={"ours": GEM})
    medium = cells[(cells["row"] == "ours") & (cells["protocol"] == "medium")].iloc[0]
    assert (medium["published"], medium["diff"]) == (45.0, pytest.approx(66.0 - 45.0))


def test_the_latest_run_of_a_label_is_shown_whatever_the_path_order():
    runs = pd.concat(
        [
            RUNS.iloc[[0]].assign(id="new", created=pd.Timestamp("2025-03-01", tz="UTC"), **{"medium.map": 70.0}),
            RUNS.iloc[[0]].assign(id="old", created=pd.Timestamp("2025-02-01", tz="UTC")),
            RUNS.iloc[[0]].assign(id="legacy", created=pd.NaT),
        ]
    )
    cells = comparison_cells(runs, PUBLISHED.iloc[:0])
    assert cells[["ref", "map"]].values.tolist() == [["new", 70.0], ["new", 40.0]]


def test_run_labels_name_the_folder_method_backbone_and_reranking():
    assert run_labels(RUNS, "/r") == {"aaa111": "gem: gem/resnet101", "bbb222": "sg: gem/resnet101 + superglobal"}
    assert run_labels(RUNS.iloc[:1], "/r/gem") == {"aaa111": "gem: gem/resnet101"}  # the root is the run folder


def _assert_valid_latex(latex: str, n_columns: int) -> None:
    """What a LaTeX run would trip over first: raw specials, unbalanced braces or environments, ragged rows."""
    assert latex.isascii()
    raw = re.sub(r"\\[&%$#_{}]", "", latex)  # drop the escaped specials
    assert not re.search(r"[%$#_^~]", raw), raw
    depth = 0
    for char in raw:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", latex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack.pop() == env
    assert not stack
    assert not re.search(r"\\\\\s*\[", latex)  # "\\" then "[" reads as an optional length
    body = latex[latex.index(r"\midrule") : latex.index(r"\bottomrule")].splitlines()[1:]
    assert body and all(line.endswith(r"\\") and len(re.findall(r"(?<!\\)&", line)) == n_columns for line in body)


def test_latex_escapes_specials_in_labels_and_sources():
    nasty = PUBLISHED.assign(
        method=["R_GeM & co 100% #1 $x$ {a}", "R_GeM & co 100% #1 $x$ {a}", "[x] net↑ ~^\\"],
        source=["src_a &\nb % #", "src_a &\nb % #", "paper $5 – p.3"],
    )
    cells = comparison_cells(RUNS, nasty, labels={"aaa111": "[ours]_1 | x"})
    latex = to_latex(cells)
    _assert_valid_latex(latex, n_columns=comparison_table(cells).shape[1])
    assert r"R\_GeM \& co 100\% \#1 \$x\$ \{a\} (R101, sfm120k) & 64.7" in latex
    assert r"{[}c1{]} copied from src\_a \& b \% \# (verified)\par" in latex  # newline flattened
    assert r"{[}x{]} net\ensuremath{\uparrow} \textasciitilde{}\textasciicircum{}\textbackslash{} (R50" in latex
    assert r"paper \$5 -- p.3" in latex and r"{[}ours{]}\_1 \textbar{} x & " in latex


def test_markdown_escapes_pipes_and_flattens_newlines():
    piped = PUBLISHED.assign(method="A|B", source="table 1 | row\n2")
    markdown = to_markdown(comparison_cells(RUNS, piped, labels={"aaa111": "x|y"}))
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    n = len(table[0].replace(r"\|", "").split("|"))
    assert all(len(line.replace(r"\|", "").split("|")) == n for line in table)  # no row has extra columns
    assert r"| A\|B (R101, sfm120k) | 64.7 [c1]" in markdown and r"| x\|y | 66.0 [r1]" in markdown
    assert r"- [c1] copied from table 1 \| row 2 (verified)" in markdown


def test_export_table_writes_latex_and_markdown_and_replaces_old_files(tmp_path):
    cells = comparison_cells(RUNS, PUBLISHED)
    (tmp_path / "t.tex").write_text("old")
    paths = export_table(cells, tmp_path, "t")
    assert [p.name for p in paths] == ["t.tex", "t.md"]
    assert paths[0].read_text() == to_latex(cells) and paths[1].read_text() == to_markdown(cells)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.md", "t.tex"]  # no temporary files left
    assert export_table(cells, tmp_path / "new" / "dir", "u")[0].is_file()  # creates the folder


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"published lacks columns \['train_set'\]"):
        comparison_cells(RUNS, PUBLISHED.drop(columns="train_set"))
    with pytest.raises(ValueError, match=r"runs lacks columns \['created'\]"):
        comparison_cells(RUNS.drop(columns="created"), PUBLISHED)


def test_a_published_rows_note_reaches_the_legend_of_its_cells():
    dolg = PUBLISHED.iloc[[2, 2]].assign(
        method=["DOLG (with crop)", "DOLG (without crop)"],
        map=[78.0, 80.5],
        source="DOLG retest",
        note=["", "INVALID protocol: queries not cropped"],
    )
    cells = comparison_cells(RUNS.iloc[:0], dolg)
    table = comparison_table(cells)
    assert table.loc["DOLG (with crop) (R50, gldv2-clean)"].iloc[0] == "78.0 [c1]"
    assert table.loc["DOLG (without crop) (R50, gldv2-clean)"].iloc[0] == "80.5 [c2]"  # same source, own note
    assert provenance_notes(cells) == [
        "[c1] copied from DOLG retest (recalled)",
        "[c2] copied from DOLG retest (recalled; note: INVALID protocol: queries not cropped)",
    ]
    assert "INVALID protocol" in to_markdown(cells) and "INVALID protocol" in to_latex(cells)
