"""UnED R@1 / mMP@5 (merged protocol, throw_1st) and ILIAS mAP@k on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from irlib.eval.metrics import ilias_map_at_k, top_k_ids, uned_metrics

# Index of the merged-protocol case: label 0 exists in domains "a" and "b" (a collision).
INDEX_LABELS = [0, 0, 1, 1, 0, 2]
INDEX_DOMAINS = ["a", "a", "a", "a", "b", "a"]
QUERY_LABELS = [0, 1, 0]
QUERY_DOMAINS = ["a", "a", "b"]
SCORES = np.array(
    [
        [0.1, 0.9, 0.5, 0.3, 0.95, 0.2],  # order 4 1 2 3 5 0: item 4 is label 0 of domain b, not a hit
        [0.5, 0.5, 0.5, 0.8, 0.1, 0.5],  # order 3 0 1 2 5 4 (ties by index)
        [0.0, 0.0, 0.0, 0.0, 0.4, 0.0],  # order 4 ...: its only relevant item
    ]
)


def test_merged_protocol_needs_label_and_domain():
    out = uned_metrics(SCORES, QUERY_LABELS, QUERY_DOMAINS, INDEX_LABELS, INDEX_DOMAINS, throw_first=False)
    # MP@5: q0 looks at min(5, 2) = 2 -> [4, 1] -> 1/2; q1 [3, 0] -> 1/2; q2 [4] -> 1/1.
    assert out == pytest.approx({"R@1": 2 / 3, "mMP@5": (0.5 + 0.5 + 1) / 3})
    ranks = np.argsort(-SCORES, axis=1, kind="stable")
    assert uned_metrics(
        ranks, QUERY_LABELS, QUERY_DOMAINS, INDEX_LABELS, INDEX_DOMAINS, throw_first=False, ranks=True
    ) == pytest.approx(out)


def test_throw_first_with_ranks():
    labels, domains = [0, 0, 0, 1, 1, 1], ["a"] * 5 + ["b"]
    ranks = np.array([[0, 3, 1], [1, 0, 2], [2, 5, 4], [3, 5, 4], [4, 3, 0]])
    out = uned_metrics(ranks, labels[:5], domains[:5], labels, domains, throw_first=True, k=2, ranks=True)
    # MP@2 looks at min(2 + 1, n_same) neighbours, minus the query, over min(n_same - 1, 2):
    # q0 (2 - 1) / 2; q1 (3 - 1) / 2; q2 (1 - 1) / 2; q3 [3, 5] (5 is domain b) -> 0 / 1; q4 [4, 3] -> 1 / 1.
    assert out == pytest.approx({"R@1": 2 / 5, "mMP@2": (0.5 + 1 + 0 + 0 + 1) / 5})
    with pytest.raises(ValueError, match=r"ranks must be an integer \(5, >= 3\)"):
        uned_metrics(ranks[:, :2], labels[:5], domains[:5], labels, domains, throw_first=True, k=2, ranks=True)


def test_throw_first_with_scores_of_the_query_itself():
    labels, domains = [0, 0, 1, 1], ["a", "a", "b", "a"]
    scores = np.array([[1.0, 0.8, 0.3, 0.0], [0.5, 1.0, 0.5, 0.2], [0.0, 0.0, 1.0, 0.9], [0.0, 0.0, 0.9, 1.0]])
    with pytest.raises(ValueError, match=r"query 2 \(label 1, domain 'b'\) has no relevant index item besides itself"):
        uned_metrics(scores, labels, domains, labels, domains, throw_first=True)
    # q0 order 0 1 2 3; q1 order 1 0 2 3 (0 and 2 tie at 0.5, broken by index): both 2nd neighbours are hits.
    out = uned_metrics(scores[:2], labels[:2], domains[:2], labels, domains, throw_first=True)
    assert out == pytest.approx({"R@1": 1.0, "mMP@5": 1.0})
    swapped = scores[:2][:, [2, 1, 0, 3]]  # now the tie puts the miss (item 0, label 1 of domain b) first for q1
    out = uned_metrics(swapped, labels[:2], domains[:2], [1, 0, 0, 1], ["b", "a", "a", "a"], throw_first=True)
    assert out == pytest.approx({"R@1": 0.5, "mMP@5": 0.5})


def test_top_k_is_exact_with_ties_by_index():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(20, 30)).astype(np.float32)
    full = np.argsort(-scores, axis=1, kind="stable")
    for m in (1, 5, 29, 30):
        np.testing.assert_array_equal(top_k_ids(scores, m), full[:, :m])


def test_ilias_map_hand_cases():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    assert ilias_map_at_k(scores, [{1, 3}]) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert ilias_map_at_k(scores, [[1, 3]], k=3) == pytest.approx((1 / 2) / 2)
    assert ilias_map_at_k(scores, [[1, 3]], k=1) == 0.0
    assert ilias_map_at_k(scores, [[0, 1, 2, 3]], k=2) == pytest.approx(1.0)  # divided by min(k, |gt|) = 2
    two = np.vstack([scores, scores])
    assert ilias_map_at_k(two, [[0], [4]], k=3, percent=True) == pytest.approx(50.0)


def test_ilias_ties_are_grouped_like_sklearn():
    # The hit ties with a miss at ranks 2-3: it gets precision 1/3 (sklearn average_precision_score), not 1/2.
    assert ilias_map_at_k([[0.9, 0.5, 0.5, 0.1]], [[2]]) == pytest.approx(1 / 3)
    assert ilias_map_at_k([[0.9, 0.5, 0.5, 0.1]], [[1, 2]]) == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_ilias_errors():
    with pytest.raises(ValueError, match="query 0 has no positive"):
        ilias_map_at_k([[0.1, 0.2]], [[]])
    with pytest.raises(ValueError, match=r"database ids in \[0, 2\)"):
        ilias_map_at_k([[0.1, 0.2]], [[2]])
    with pytest.raises(ValueError, match="finite"):
        ilias_map_at_k([[np.nan, 0.2]], [[1]])
