"""GLDv2 retrieval mAP@100 on the DELF test fixture's values and hand cases."""

from __future__ import annotations

import pytest

from irlib.eval.metrics import gldv2_map_at_k

# The query/solution layout of DELF's metrics_test.py (tensorflow/models research/delf), whose expected
# values are 0.458333 at k=100 and 0.5 at k=1.
SOLUTION = {
    "0123456789abcdef": ["fedcba9876543210", "fedcba9876543220"],
    "0223456789abcdef": ["fedcba9876543210"],
    "0323456789abcdef": ["fedcba9876543230", "fedcba9876543240", "fedcba9876543250"],
    "0423456789abcdef": ["fedcba9876543230"],
}
PREDICTIONS = {
    "0223456789abcdef": ["fedcba9876543200", "fedcba9876543210"],
    "0323456789abcdef": ["fedcba9876543240"],
    "0423456789abcdef": ["fedcba9876543230", "fedcba9876543240"],
}


def test_matches_the_delf_reference_values():
    assert gldv2_map_at_k(PREDICTIONS, SOLUTION) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1) / 4)
    assert gldv2_map_at_k(PREDICTIONS, SOLUTION) == pytest.approx(0.458333, abs=1e-6)
    assert gldv2_map_at_k(PREDICTIONS, SOLUTION, k=1) == pytest.approx(0.5)


def test_duplicates_are_skipped_but_keep_their_position():
    solution = {"q": ["a", "b"]}
    assert gldv2_map_at_k({"q": ["a", "a", "b"]}, solution) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_only_the_first_k_predictions_count():
    solution = {"q": ["a"]}
    assert gldv2_map_at_k({"q": ["x"] * 100 + ["a"]}, solution) == 0.0
    assert gldv2_map_at_k({"q": ["x"] * 99 + ["a"]}, solution) == pytest.approx(1 / 100)


def test_unknown_query_is_an_error():
    with pytest.raises(ValueError, match="not in the solution"):
        gldv2_map_at_k({"zzz": ["a"]}, {"q": ["a"]})
