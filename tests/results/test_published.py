"""Published numbers at citation level: typed and validated, the first-format CSV migrated, every cited source known."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from irlib.results import published_results
from irlib.results.published import COLUMNS, KINDS, LEGACY_COLUMNS, SETTING_FIELDS, papers

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "published-results.csv"


def test_published_results_are_typed_and_validated():
    table = published_results()
    assert list(table.columns) == [*COLUMNS, "decimals"]
    assert table["map"].dtype == float and table["map"].between(0, 100).all()
    assert set(table["protocol"].cat.categories) == {"easy", "medium", "hard"}
    assert set(table["distractors"]) <= {"none", "r1m"}
    assert set(table["confidence"]) <= {"verified", "recalled", "derived"}
    assert set(table["kind"]) <= set(KINDS) - {"not_found"}
    assert (table["source"] != "").all() and (table["method_paper"] != "").all() and (table["reported_in"] != "").all()
    assert set(SETTING_FIELDS) <= set(table.columns)
    everything = published_results(include_not_found=True)
    assert everything["map"][everything["kind"] == "not_found"].isna().all()
    assert len(everything) >= len(table)


def test_every_cited_source_is_in_the_papers_table():
    table, sources = published_results(include_not_found=True), papers()
    assert set(table["method_paper"]) | set(table["reported_in"]) <= set(sources.index)
    assert sources["year"].between(2000, 2030).all() and set(sources["kind"]) <= {"paper", "readme", "issue", "run"}


def test_known_published_rows():
    table = published_results()
    rgem = table[table["method"].str.startswith("R-GeM (revisitop") & (table["distractors"] == "none")]
    got = rgem.set_index(["dataset", "protocol"])["map"].to_dict()
    assert got[("roxford5k", "medium")] == pytest.approx(64.67)
    assert got[("rparis6k", "hard")] == pytest.approx(56.32)
    assert set(rgem["confidence"]) == {"verified"} and set(rgem["kind"]) == {"original"}
    assert set(rgem["decimals"]) == {2}


def test_the_first_format_still_loads(tmp_path):
    legacy = tmp_path / "old.csv"
    pd.DataFrame(
        [
            [
                "DOLG (paper)",
                "R50",
                "gldv2-clean",
                "roxford5k",
                "medium",
                "none",
                "80.5",
                "DOLG Table 1",
                "verified",
                "",
            ],
            ["CVNet", "R50", "gldv2-clean", "roxford5k", "hard", "none", "62.30", "CVNet paper", "recalled", "memo"],
        ],
        columns=LEGACY_COLUMNS,
    ).to_csv(legacy, index=False)
    table = published_results(legacy)
    assert list(table.columns) == [*COLUMNS, "decimals"]
    assert table["reported_in"].tolist() == ["DOLG Table 1", "CVNet paper"]
    assert table["kind"].astype(str).tolist() == ["unstated", "recalled"]
    assert table["decimals"].tolist() == [1, 2] and table["map"].tolist() == [80.5, 62.3]
    assert (table[["method_paper", "image_size", "query_crop", "reranking"]] == "").all().all()


def test_bad_rows_name_the_file_line_and_field(tmp_path):
    good = published_results(include_not_found=True).head(3).drop(columns="decimals")
    good = good.astype(str).replace("nan", "")
    cases = [
        ("kind", "guessed", "line 3: field kind is 'guessed'"),
        ("map", "101", "line 3: field map is '101'"),
        ("source", "", "line 3: field source is ''"),
    ]
    for field, value, message in cases:
        bad = good.copy()
        bad.loc[bad.index[1], field] = value
        path = tmp_path / f"bad_{field}.csv"
        bad.to_csv(path, index=False)
        with pytest.raises(ValueError, match=message):
            published_results(path)
    not_found = good.copy()
    not_found.loc[not_found.index[0], "kind"] = "not_found"
    not_found.to_csv(tmp_path / "nf.csv", index=False)
    with pytest.raises(ValueError, match="line 2: field map .* expected empty for a not_found row"):
        published_results(tmp_path / "nf.csv")
    with pytest.raises(ValueError, match="columns"):
        good.drop(columns="kind").to_csv(tmp_path / "cols.csv", index=False)
        published_results(tmp_path / "cols.csv")


def test_package_copy_holds_every_row_of_the_shared_reference():
    if not SHARED.is_file():
        pytest.skip(f"the shared reference {SHARED} is not present in this checkout")
    shared = pd.read_csv(SHARED, keep_default_na=False, dtype=str)
    ours = published_results().astype({c: str for c in ("protocol", "distractors", "confidence")})
    ours = ours.assign(map=ours["map"].map(repr))
    shared = shared.assign(map=shared["map"].astype(float).map(repr))
    merged = shared.merge(ours[list(LEGACY_COLUMNS)].drop_duplicates(), how="left", indicator=True)
    missing = merged[merged["_merge"] != "both"]
    assert missing.empty, missing.head().to_dict("records")
    assert np.isfinite(ours["map"].astype(float)).all()
