from pathlib import Path

import pandas as pd
import pytest

from irlib.results import published_results

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "published-results.csv"


def test_published_results_are_typed_and_validated():
    table = published_results()
    assert list(table.columns) == [
        "method",
        "backbone",
        "train_set",
        "dataset",
        "protocol",
        "distractors",
        "map",
        "source",
        "confidence",
        "note",
    ]
    assert table["map"].dtype == float and table["map"].between(0, 100).all()
    assert set(table["protocol"].cat.categories) == {"easy", "medium", "hard"}
    assert set(table["distractors"]) <= {"none", "r1m"}
    assert set(table["confidence"]) <= {"verified", "recalled", "derived"}
    assert (table["source"] != "").all()


def test_known_published_rows():
    table = published_results()
    rgem = table[table["method"].str.startswith("R-GeM (revisitop") & (table["distractors"] == "none")]
    got = rgem.set_index(["dataset", "protocol"])["map"].to_dict()
    assert got[("roxford5k", "medium")] == pytest.approx(64.67)
    assert got[("rparis6k", "hard")] == pytest.approx(56.32)
    assert set(rgem["confidence"]) == {"verified"}


def test_package_copy_matches_the_shared_reference():
    if not SHARED.is_file():
        pytest.skip(f"the shared reference {SHARED} is not present in this checkout")
    shared = pd.read_csv(SHARED, keep_default_na=False, dtype=str)
    ours = published_results().astype({"protocol": str, "distractors": str, "confidence": str})
    assert len(ours) == len(shared)
    pd.testing.assert_series_equal(ours["map"], shared["map"].astype(float))
    for column in shared.columns.drop("map"):
        assert ours[column].tolist() == shared[column].tolist(), column
