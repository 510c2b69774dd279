"""The literature audit on hand-made rows: copied to the printed precision, re-run, different setting, chains, flags;
irlib's runs join as one more source and agree with the comparison table."""

from __future__ import annotations

import pandas as pd
import pytest

from irlib.results.audit import (
    VERDICTS,
    audit,
    audit_summary,
    backbone_key,
    copied_share,
    copy_graph,
    run_papers,
    runs_as_reported,
    verdict_matrix,
)
from irlib.results.published import COLUMNS, published_results
from irlib.results.table import comparison_cells

SOURCES = pd.DataFrame(
    {"kind": "paper", "title": "", "venue": "", "year": [2021, 2022, 2023, 2024, 2024], "url": ""},
    index=pd.Index(["orig", "early", "late", "rerun", "other"], name="key"),
)


def row(reported_in: str, kind: str, value: str, **fields: str) -> dict[str, str]:
    base = {c: "" for c in COLUMNS}
    base |= {"method": "M", "method_paper": "orig", "backbone": "R50", "train_set": "gldv2-clean"}
    base |= {"dataset": "roxford5k", "protocol": "medium", "distractors": "none", "confidence": "verified"}
    return base | {"reported_in": reported_in, "kind": kind, "map": value, "source": reported_in} | fields


def load(rows: list[dict[str, str]], tmp_path) -> pd.DataFrame:
    path = tmp_path / "rows.csv"
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return published_results(path, include_not_found=True)


def test_verdicts_of_hand_made_rows(tmp_path):
    rows = [
        row("orig", "original", "81.52", query_crop="yes"),
        row("early", "unstated", "81.5"),  # equal at the coarser precision: copied
        row("late", "unstated", "81.5"),  # equal too: copied from the original, not the earlier copy
        row("rerun", "re-run", "79.30", query_crop="yes"),  # differs, same stated setting: re-run
        row("other", "unstated", "83.1", query_crop="no"),  # differs, the crop differs: different setting
        row("early", "copied", "81.6", protocol="hard"),  # no original for hard: no original
        row("orig", "original", "60.00", protocol="hard", backbone="R101"),
        row("late", "copied", "61.00", protocol="hard", backbone="resnet101"),  # says copied, differs: flagged
        row("rerun", "re-run", "60.0", protocol="hard", backbone="ResNet-101"),  # says re-run, equals: flagged
        row("other", "unstated", "81.6"),  # 81.52 -> 81.5 at one decimal: not equal
        row("orig", "recalled", "50.0", dataset="rparis6k", confidence="recalled"),
        row("other", "not_found", "", dataset="rparis6k"),
    ]
    audited = audit(load(rows, tmp_path), SOURCES)
    got = list(zip(audited["reported_in"], audited["verdict"].astype(str), audited["reference"], strict=True))
    assert got == [
        ("orig", "original", ""),
        ("early", "copied", "orig"),
        ("late", "copied", "orig"),
        ("rerun", "re-run", "orig"),
        ("other", "different setting", "orig"),
        ("early", "no original", ""),
        ("orig", "original", ""),
        ("late", "differs", "orig"),
        ("rerun", "copied", "orig"),
        ("other", "differs", "orig"),
        ("orig", "unverifiable", ""),
        ("other", "not found", ""),
    ]
    assert audited.loc[3, "delta"] == pytest.approx(79.30 - 81.52)
    assert audited.loc[4, "setting_diff"] == "query_crop: no vs yes"
    assert audited.loc[7, "flag"] == "stated copied, but differs"
    assert audited.loc[8, "flag"] == "stated re-run, but equals orig"
    assert audited["flag"].astype(bool).sum() == 2


def test_a_copy_of_a_copy_points_at_the_earlier_source(tmp_path):
    rows = [
        row("orig", "original", "70.1"),
        row("early", "re-run", "72.4"),  # a re-run printed first ...
        row("late", "unstated", "72.4"),  # ... and copied from it later
        row("other", "unstated", "72.4"),  # same year as nobody earlier with 72.4? early (2022) is earlier
    ]
    audited = audit(load(rows, tmp_path), SOURCES)
    assert audited["verdict"].astype(str).tolist() == ["original", "re-run", "copied", "copied"]
    assert audited["reference"].tolist() == ["", "orig", "early", "early"]
    edges = copy_graph(audited)
    assert edges[["source", "target", "numbers"]].values.tolist() == [["late", "early", 1], ["other", "early", 1]]


def test_summaries_matrix_and_shares(tmp_path):
    rows = [
        row("orig", "original", "81.52"),
        row("orig", "original", "60.10", protocol="hard"),
        row("early", "unstated", "81.5"),
        row("early", "unstated", "60.1", protocol="hard"),
        row("rerun", "re-run", "79.0"),
        row("rerun", "re-run", "58.0", protocol="hard"),
        row("late", "unstated", "81.5"),
        row("late", "unstated", "59.0", protocol="hard"),
    ]
    audited = audit(load(rows, tmp_path), SOURCES)
    share = copied_share(audited)
    assert (
        share.loc["early", "share"] == 1.0 and share.loc["late", "share"] == 0.5 and share.loc["rerun", "copied"] == 0
    )
    assert list(share.index) == ["early", "late", "rerun"]
    matrix = verdict_matrix(audited)
    assert matrix.loc["early", "orig"] == "copied" and matrix.loc["rerun", "orig"] == "re-run"
    assert matrix.loc["late", "orig"] == "copied"  # a tie (1 copied, 1 differs) goes to the earlier verdict
    summary = audit_summary(audited).set_index("reported_in")
    assert summary.loc["late", ["copied", "differs", "numbers"]].tolist() == [1, 1, 2]
    assert summary.loc["rerun", "max_abs_delta"] == pytest.approx(2.52)
    assert set(summary.columns) >= set(VERDICTS)


def test_backbone_names_compare_across_sources():
    assert {backbone_key(b) for b in ("R101", "resnet101", "ResNet-101", "r101")} == {"R101"}
    assert backbone_key("ViT-B/16") == "vit-b/16"


def test_runs_join_the_audit_as_one_more_source_and_agree_with_the_table(tmp_path):
    runs = pd.DataFrame(
        [
            {
                "id": "abc123",
                "created": "2026-12-01T10:00:00Z",
                "path": "runs/dolg",
                "dataset": "roxford5k",
                "distractors": "none",
                "method": "dolg",
                "backbone": "resnet50",
                "rerank": None,
                "medium.map": 80.512,
                "hard.map": 61.004,
            },
            {"id": "zzz", "created": None, "path": "runs/x", "dataset": "roxford5k", "distractors": "none"}
            | {"method": "compose", "backbone": "resnet50", "rerank": None, "medium.map": 70.0, "hard.map": 50.0},
        ]
    )
    reported = runs_as_reported(runs, train_set="gldv2-clean")
    assert reported["reported_in"].unique().tolist() == ["run:abc123"]  # no paper proposed "compose"
    assert reported["map"].tolist() == [80.51, 61.0]
    published = pd.concat(
        [
            load(
                [
                    row("dolg-iccv2021", "original", "80.5", method_paper="dolg-iccv2021"),
                    row("dolg-iccv2021", "original", "61.0", method_paper="dolg-iccv2021", protocol="hard"),
                ],
                tmp_path,
            ),
            reported,
        ],
        ignore_index=True,
    )
    sources = pd.concat([SOURCES, run_papers(runs)])
    audited = audit(published, sources).set_index("reported_in").loc["run:abc123"]
    assert audited["verdict"].astype(str).tolist() == ["copied", "copied"]  # equal to the printed precision
    assert run_papers(runs).loc["run:abc123", "year"] == 2026
    cells = comparison_cells(runs.iloc[:1], published_results().iloc[:0])
    table_values = cells.set_index("protocol")["map"]
    assert table_values["medium"] == pytest.approx(audited["map"].iloc[0], abs=0.005)
    assert table_values["hard"] == pytest.approx(audited["map"].iloc[1], abs=0.005)


def test_the_shipped_numbers_show_who_copied_whom():
    audited = audit(published_results(include_not_found=True))
    edges = copy_graph(audited).set_index(["source", "target"])["numbers"]
    assert edges[("token-aaai2022", "dolg-iccv2021")] >= 40  # Token's table repeats DOLG's DELG/HOW/AP-GeM rows
    assert ("dolg-iccv2021", "repo:filipradenovic/cnnimageretrieval-pytorch") in edges.index
    share = copied_share(audited)
    assert share.loc["issue:feymanpriv/DOLG-paddle#3", "copied"] == 0  # an independent retest copies nothing
    retest = audited[audited["reported_in"] == "issue:feymanpriv/DOLG-paddle#3"]
    assert set(retest["verdict"].astype(str)) == {"re-run"} and retest["delta"].abs().max() > 10
    assert (audited["verdict"] == "not found").sum() == (audited["kind"] == "not_found").sum() > 0
