"""CiDeR's published RGLDv2-clean counts and the reconstruction report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from irlib.data.gldv2 import GLDV2_CLEAN_COUNTS, RGLDV2_CLEAN_COUNTS
from irlib.data.overlap import OverlapCandidate, write_exclusion_file
from irlib.data.rgldv2 import CIDER_COUNTS, rgldv2_report

NAN = float("nan")


def _visual(lid: int, query: str, source: str = "visual", **text: object) -> OverlapCandidate:
    return OverlapCandidate(lid, 0.5, 0.6, Path("t.jpg"), Path("q.jpg"), None, query, source=source, **text)  # type: ignore[arg-type]


def _text(lid: int, key: str, name: str) -> OverlapCandidate:
    return OverlapCandidate(
        lid, 0.9, NAN, None, None, None, "", source="text", matched_name=name, name_score=0.9, matched_landmark=key
    )


def _row(report: pd.DataFrame, field: str) -> tuple:
    (row,) = report[report["field"] == field].itertuples(index=False)
    return tuple(None if pd.isna(v) else v for v in (row.published, row.reconstructed, row.difference))


def test_published_counts_are_consistent() -> None:
    assert (CIDER_COUNTS.removed_classes, CIDER_COUNTS.removed_images) == (18, 1_565)
    assert CIDER_COUNTS.gldv2_clean == GLDV2_CLEAN_COUNTS and CIDER_COUNTS.rgldv2_clean == RGLDV2_CLEAN_COUNTS
    before, after = CIDER_COUNTS.gldv2_clean, CIDER_COUNTS.rgldv2_clean
    assert (before[0] - after[0], before[1] - after[1]) == (18, 1_565)
    assert [(g.name, g.overlapping_queries) for g in CIDER_COUNTS.groups] == [
        ("roxford5k", 38),
        ("rparis6k", 36),
        ("text", None),
    ]
    assert "RGLDv2-clean" in CIDER_COUNTS.source and "Table_01" in CIDER_COUNTS.source


def test_report_on_a_small_listing_lists_the_known_differences() -> None:
    counts = {11: 50, 12: 20, 21: 100, 31: 23, 40: 7, 41: 3}
    excluded = [
        _visual(11, "christ_church_000179"),
        _visual(12, "oxford_002985"),  # a generic ROxf query name: the query map says All Souls
        _visual(21, "paris_eiffel_000266", "both", matched_name="Tour Eiffel", matched_landmark="paris_eiffel"),
        _text(31, "paris_invalides", "Hôtel des Invalides"),
        _visual(99, "paris_louvre_000081"),  # not in the listing
    ]
    queries = {
        "christ_church_000179": "christ_church",
        "oxford_002985": "all_souls",
        "all_souls_000013": "all_souls",
        "paris_eiffel_000266": "paris_eiffel",
        "paris_general_002985": "paris_eiffel",
        "paris_invalides_000355": "paris_invalides",
        "paris_louvre_000081": "paris_louvre",
    }
    report = rgldv2_report(counts, excluded, queries=queries)
    rows = report.rows
    assert list(rows.columns) == ["field", "published", "reconstructed", "difference", "note"]
    assert not report.complete
    assert _row(rows, "GLDv2-clean classes (input)") == (81_313, 6, 6 - 81_313)
    assert _row(rows, "classes removed") == (18, 4, -14)
    assert _row(rows, "images removed") == (1_565, 193, 193 - 1_565)
    assert _row(rows, "classes removed: roxford5k") == (6, 2, -4)
    assert _row(rows, "images removed: roxford5k") == (315, 70, -245)
    assert _row(rows, "classes removed: rparis6k") == (11, 1, -10)
    assert _row(rows, "images removed: rparis6k") == (1_227, 100, -1_127)
    assert _row(rows, "classes removed: text") == (1, 1, 0) and _row(rows, "images removed: text") == (23, 23, 0)
    assert _row(rows, "RGLDv2-clean classes") == (81_295, 2, 2 - 81_295)
    assert "not the complete GLDv2-clean" in rows.loc[rows["field"] == "RGLDv2-clean images", "note"].item()
    assert _row(rows, "queries: roxford5k") == (70, 3, -67)
    assert _row(rows, "queries whose landmark overlaps: roxford5k") == (38, 3, -35)
    assert _row(rows, "queries whose landmark overlaps: rparis6k") == (36, 3, -33)  # Eiffel x2, Invalides by text
    assert _row(rows, "excluded ids not in the CSV") == (0, 1, 1)
    assert report.by_source == {"text": [31], "visual": [11, 12, 99], "both": [21], "listed": []}
    frame = report.landmarks.set_index("landmark_id")
    assert frame.loc[12, "query_landmark"] == "all_souls" and frame.loc[31, "group"] == "text"
    assert frame.loc[21, "matched_landmark"] == "paris_eiffel" and not frame.loc[99, "in_csv"]
    assert set(report.differences()["field"]) >= {"classes removed", "images removed: rparis6k"}
    assert "classes removed: text" not in set(report.differences()["field"])


def test_report_of_the_complete_listing_matches_the_published_totals(tmp_path: Path) -> None:
    """A stand-in for the complete GLDv2-clean (81,313 classes, 1,580,470 images) whose 18 excluded classes have
    CiDeR's group sizes: every difference is 0."""
    groups = {"roxford5k": [50, 50, 50, 50, 50, 65], "rparis6k": [111] * 10 + [117], "text": [23]}
    counts: dict[int, int] = {}
    group_of: dict[int, str] = {}
    for name, sizes in groups.items():
        for size in sizes:
            group_of[len(counts)] = name
            counts[len(counts)] = size
    kept_classes, kept_images = CIDER_COUNTS.rgldv2_clean
    base, extra = divmod(kept_images, kept_classes)
    for k in range(kept_classes):
        counts[1_000 + k] = base + (k < extra)
    report = rgldv2_report(counts, list(group_of), groups=group_of)
    assert report.complete
    assert (report.rows["difference"] == 0).all() and len(report.differences()) == 0
    assert _row(report.rows, "RGLDv2-clean images") == (1_578_905, 1_578_905, 0)
    assert report.by_source["listed"] == sorted(group_of)
    excl = write_exclusion_file(tmp_path / "excl.txt", group_of)
    from_file = rgldv2_report(counts, excl, groups=group_of)
    pd.testing.assert_frame_equal(from_file.rows, report.rows)
    table = tmp_path / "index_clean.csv"
    table.write_text("id\n0123456789abcdef\n")
    with pytest.raises(ValueError, match=r"index_clean\.csv: an image-id table"):
        rgldv2_report(counts, table)
    with pytest.raises(ValueError, match="excluded twice"):
        rgldv2_report(counts, [1, 1])


def test_report_reads_train_clean_csv(tmp_path: Path) -> None:
    (tmp_path / "train_clean.csv").write_text(
        "landmark_id,images\n5,0123456789abcdef 0123456789abcde0\n6,fedcba9876543210\n"
    )
    report = rgldv2_report(tmp_path, [_text(6, "paris_invalides", "Les Invalides")])
    assert _row(report.rows, "images removed: text") == (23, 1, -22)
    assert _row(report.rows, "GLDv2-clean images (input)") == (1_580_470, 3, 3 - 1_580_470)
