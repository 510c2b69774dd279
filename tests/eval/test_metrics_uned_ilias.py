"""UnED R@1 / mMP@5 (merged protocol, throw_1st, multi-label queries), ILIAS mAP@k (dense and top-k input) and
GLDv2 mAP@100 (Ignored ids, DELF's denominator) on hand-computed cases and against the reference formulas."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from irlib.eval.metrics import (
    gldv2_map_at_k,
    ilias_map_at_k,
    ilias_report,
    top_k_ids,
    uned_merged_metrics,
    uned_metrics,
    uned_per_query,
    uned_separate_metrics,
)

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
    # AP@5 (P@j at each hit over min(n_rel, 5)): q0 r = 01000 -> (1/2) / 2; q1 10010 -> (1 + 2/4) / 2; q2 10000 -> 1.
    assert out == pytest.approx({"R@1": 2 / 3, "mMP@5": (0.5 + 0.5 + 1) / 3, "mAP@5": (0.25 + 0.75 + 1) / 3})
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
    # AP@2 on the neighbours after the first: q0 01 -> (1/2) / 2; q1 11 -> 1; q2 00; q3 01 -> (1/2) / 1; q4 10 -> 1.
    assert out == pytest.approx({"R@1": 2 / 5, "mMP@2": (0.5 + 1 + 0 + 0 + 1) / 5, "mAP@2": 2.75 / 5})
    with pytest.raises(ValueError, match=r"ranks must be an integer \(5, >= 3\)"):
        uned_metrics(ranks[:, :2], labels[:5], domains[:5], labels, domains, throw_first=True, k=2, ranks=True)


def test_throw_first_with_scores_of_the_query_itself():
    labels, domains = [0, 0, 1, 1], ["a", "a", "b", "a"]
    scores = np.array([[1.0, 0.8, 0.3, 0.0], [0.5, 1.0, 0.5, 0.2], [0.0, 0.0, 1.0, 0.9], [0.0, 0.0, 0.9, 1.0]])
    with pytest.raises(ValueError, match=r"query 2 \(label 1, domain 'b'\) has no relevant index item besides itself"):
        uned_metrics(scores, labels, domains, labels, domains, throw_first=True)
    # q0 order 0 1 2 3; q1 order 1 0 2 3 (0 and 2 tie at 0.5, broken by index): both 2nd neighbours are hits.
    out = uned_metrics(scores[:2], labels[:2], domains[:2], labels, domains, throw_first=True)
    assert out == pytest.approx({"R@1": 1.0, "mMP@5": 1.0, "mAP@5": 1.0})
    swapped = scores[:2][:, [2, 1, 0, 3]]  # now the tie puts the miss (item 0, label 1 of domain b) first for q1
    out = uned_metrics(swapped, labels[:2], domains[:2], [1, 0, 0, 1], ["b", "a", "a", "a"], throw_first=True)
    # q1 keeps [miss, hit, miss] after its first neighbour: AP (1/2) / 1.
    assert out == pytest.approx({"R@1": 0.5, "mMP@5": 0.5, "mAP@5": 0.75})


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


# ---- UnED: merged index, per-domain throw_first, mean over domains (knn_utils.run_merged_knn) ----

# Merged index: domain "s" (query split = index split: its 4 queries are items 0-3) and domain "x" (separate index).
M_LABELS = [0, 0, 1, 1, 0, 0, 1]
M_DOMAINS = ["s", "s", "s", "s", "x", "x", "x"]
M_QUERY_LABELS = [0, 0, 1, 1, 0, 1]
M_QUERY_DOMAINS = ["s", "s", "s", "s", "x", "x"]
M_TOP = [
    [0, 4, 1],  # s: the 2nd neighbour is label 0 of domain x -> miss; MP looks at n_same = 2 items only: 0
    [1, 0, 5],  # hit; (2 - 1) / 1
    [3, 2, 6],  # the 1st neighbour is thrown even though it is not the query itself: hit, 1
    [3, 6, 2],  # miss, 0
    [4, 5, 0],  # x (nothing thrown): hit; MP@5 over min(5, 2) = 2: 2 / 2
    [0, 6, 1],  # miss; looks at 1 item: 0 / 1
]
M_RANKS = np.array([top + [i for i in range(7) if i not in top] for top in M_TOP])  # full rankings


def test_merged_metrics_throw_first_per_domain_and_mean_over_domains():
    out = uned_merged_metrics(
        M_RANKS, M_QUERY_LABELS, M_QUERY_DOMAINS, M_LABELS, M_DOMAINS, {"s": True, "x": False}, ranks=True
    )
    # AP@5: s (after the thrown item) 01000 -> 1/2, 10000, 10000, 01000 -> 1/2; x 11000 -> 2/2, 01000 -> 1/2.
    expected = {"s/R@1": 2 / 4, "s/mMP@5": 2 / 4, "s/mAP@5": 3 / 4, "x/R@1": 1 / 2, "x/mMP@5": 1 / 2, "x/mAP@5": 3 / 4}
    # The reference averages the per-domain values (not the 6 queries, which would give 3/6 and 3/6 here too, so
    # the next case makes them differ).
    assert out == pytest.approx({"R@1": 0.5, "mMP@5": 0.5, "mAP@5": 0.75} | expected)
    assert list(out) == ["R@1", "mMP@5", "mAP@5", "s/R@1", "s/mMP@5", "s/mAP@5", "x/R@1", "x/mMP@5", "x/mAP@5"]
    # Each domain is scored as uned_metrics scores it alone against the merged index.
    for d, throw in (("s", True), ("x", False)):
        rows = [i for i, q in enumerate(M_QUERY_DOMAINS) if q == d]
        alone = uned_metrics(
            M_RANKS[rows], np.array(M_QUERY_LABELS)[rows], np.array(M_QUERY_DOMAINS)[rows], M_LABELS, M_DOMAINS,
            throw_first=throw, ranks=True,
        )  # fmt: skip
        assert alone == pytest.approx({name: out[f"{d}/{name}"] for name in ("R@1", "mMP@5", "mAP@5")})
    # Dropping query 3 makes the domains unequal: mean over domains (2/3 + 1/2) / 2, not over queries 3/5.
    keep = [0, 1, 2, 4, 5]
    out = uned_merged_metrics(
        M_RANKS[keep], np.array(M_QUERY_LABELS)[keep], np.array(M_QUERY_DOMAINS)[keep], M_LABELS, M_DOMAINS,
        {"s": True, "x": False}, ranks=True,
    )  # fmt: skip
    assert out["R@1"] == pytest.approx((2 / 3 + 1 / 2) / 2) and out["mMP@5"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_merged_metrics_scores_input_and_errors():
    # Scores that rank like M_RANKS (descending), the rest of each row below.
    scores = np.zeros((6, 7))
    for q, row in enumerate(M_RANKS):
        scores[q, row] = np.arange(7, 0, -1)
    args = (M_QUERY_LABELS, M_QUERY_DOMAINS, M_LABELS, M_DOMAINS)
    by_ranks = uned_merged_metrics(M_RANKS, *args, {"s": True, "x": False}, ranks=True)
    assert uned_merged_metrics(scores, *args, {"s": True, "x": False}) == pytest.approx(by_ranks)
    with pytest.raises(ValueError, match=r"throw_first has no entry for query domains \['x'\]"):
        uned_merged_metrics(scores, *args, {"s": True})
    with pytest.raises(ValueError, match=r"ranks must be an integer \(6, >= 6\)"):  # k + 1 when a domain throws
        uned_merged_metrics(M_RANKS[:, :5], *args, {"s": True, "x": False}, ranks=True)
    assert uned_merged_metrics(M_RANKS[:, :5], *args, {"s": False, "x": False}, ranks=True)  # k is enough
    # Without throwing in domain s its queries find themselves first: R@1 of s becomes 1 (the wrong protocol).
    wrong = uned_merged_metrics(M_RANKS, *args, {"s": False, "x": False}, ranks=True, k=2)
    assert wrong["s/R@1"] == 1.0


def test_merged_metrics_decimals_round_per_domain_then_the_mean_like_the_reference():
    # Three domains with R@1 = 2/3, 2/3, 0: the reference reports mean(round(.., 3)) rounded = 0.445, not 4/9 -> 0.444.
    labels, domains = [0, 1, 0, 1, 0, 1], ["a", "a", "b", "b", "c", "c"]
    ranks = np.array([[0], [0], [1], [2], [2], [3], [5], [5], [5]])
    q_domains = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    throw = dict.fromkeys("abc", False)
    exact = uned_merged_metrics(ranks, [0] * 9, q_domains, labels, domains, throw, k=1, ranks=True)
    assert exact["R@1"] == pytest.approx(4 / 9)
    rounded = uned_merged_metrics(ranks, [0] * 9, q_domains, labels, domains, throw, k=1, ranks=True, decimals=3)
    # With k = 1, MP@1 and AP@1 are R@1.
    assert rounded == {"R@1": 0.445, "mMP@1": 0.445, "mAP@1": 0.445, "a/R@1": 0.667, "a/mMP@1": 0.667,
                       "a/mAP@1": 0.667, "b/R@1": 0.667, "b/mMP@1": 0.667, "b/mAP@1": 0.667, "c/R@1": 0.0,
                       "c/mMP@1": 0.0, "c/mAP@1": 0.0}  # fmt: skip


def test_multi_label_queries_follow_the_reference_rule():
    # knn_utils.py: a neighbour is a hit when it matches ANY query label (np.any(query_label == label)); the relevant
    # count is the SUM of the index counts of the query's labels (a repeated label counts twice).
    labels, domains = [3, 4, 4, 5, 3], ["g", "g", "g", "g", "h"]
    ranks = np.array([[1, 3, 0, 2, 4], [3, 0, 1, 2, 4], [0, 3, 4, 1, 2], [0, 1, 2, 3, 4]])
    queries = [(3, 4), [5], 4, [3, 3]]
    out = uned_metrics(ranks, queries, ["g"] * 4, labels, domains, throw_first=False, ranks=True)
    # q0: n_same = 1 + 2 = 3, looks at [1, 3, 0]: 2 hits / 3. q1: [5] is label 5, n_same 1: [3] -> 1 / 1.
    # q2: label 4, n_same 2: [0, 3] -> 0 / 2, R@1 miss. q3: [3, 3] -> n_same 2 (item 4 is label 3 of domain h):
    # looks at [0, 1] -> 1 / 2.
    # AP@5: q0 10110 -> (1 + 2/3 + 3/4) / 3; q1 1; q2 00011 -> (1/4 + 2/5) / 2; q3 10000 -> 1 / 2.
    expected_ap = (29 / 36 + 1 + 0.325 + 0.5) / 4
    assert out == pytest.approx({"R@1": 3 / 4, "mMP@5": (2 / 3 + 1 + 0 + 1 / 2) / 4, "mAP@5": expected_ap})
    # Keeping only the first id (what training does) changes q0 (label 3, n_same 1: [1] is a miss) and q3 (1 / 1).
    single = uned_metrics(ranks, [3, 5, 4, 3], ["g"] * 4, labels, domains, throw_first=False, ranks=True)
    assert single == pytest.approx({"R@1": 2 / 4, "mMP@5": (0 + 1 + 0 + 1) / 4, "mAP@5": (1 / 3 + 1 + 0.325 + 1) / 4})


def test_multi_label_errors_are_clear():
    with pytest.raises(ValueError, match=r"index_labels\[1\] has 2 labels; an index item must have one"):
        uned_metrics([[0, 1]], [1], ["a"], [1, [1, 2]], ["a", "a"], throw_first=False, ranks=True, k=1)
    with pytest.raises(ValueError, match=r"query_labels\[0\] is an empty label list"):
        uned_metrics([[0, 1]], [[]], ["a"], [1, 2], ["a", "a"], throw_first=False, ranks=True, k=1)
    with pytest.raises(ValueError, match=r"query 0 \(label \[7, 8\], domain 'a'\) has no relevant index item"):
        uned_metrics([[0, 1]], [[7, 8]], ["a"], [1, 2], ["a", "a"], throw_first=False, ranks=True, k=1)
    # A one-element list is that label, on both sides.
    one = uned_metrics([[1, 0]], [[2]], ["a"], [1, [2]], ["a", "a"], throw_first=False, ranks=True, k=1)
    assert one == {"R@1": 1.0, "mMP@1": 1.0, "mAP@1": 1.0}


def _uned_domains(seed: int, n_domains: int) -> tuple[list[dict[str, np.ndarray]], dict[int, bool]]:
    """Random domains with raw class ids from 0 (as in the info files): index labels, query labels, throw."""
    rng = np.random.default_rng(seed)
    domains, throw = [], {}
    for d in range(n_domains):
        throw[d] = bool(rng.integers(2))
        classes = rng.choice(12, size=rng.integers(1, 4), replace=False)  # not contiguous: ranges != counts
        index = rng.permutation(np.repeat(classes, rng.integers(2, 4, size=len(classes))))
        queries = index if throw[d] else rng.choice(classes, size=rng.integers(1, 5))
        domains.append({"index": index, "query": queries})
    return domains, throw


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_domains=st.integers(1, 4), levels=st.integers(2, 8))
def test_uned_label_offsets_do_not_change_the_metrics(seed, n_domains, levels):
    """irlib's offsets (summed class-id ranges), the official training offsets (cumulative class counts,
    ``datasets.py`` lines 632-649), the official kNN labels (raw ids, no offset: ``get_knn_eval_datasets``) and
    random distinct offsets give the same per-query values: a hit needs the query's domain."""
    domains, throw = _uned_domains(seed, n_domains)
    rng = np.random.default_rng(seed + 1)
    ranges = [max(d["index"].max(), d["query"].max()) + 1 for d in domains]
    counts = [len(np.unique(d["index"])) for d in domains]
    offsets = {
        "irlib": np.cumsum([0] + ranges[:-1]),
        "class counts": np.cumsum([0] + counts[:-1]),
        "raw": np.zeros(n_domains, dtype=np.int64),
        "random": rng.choice(10**6, size=n_domains, replace=False),
    }
    query_domains = np.repeat(np.arange(n_domains), [len(d["query"]) for d in domains])
    index_domains = np.repeat(np.arange(n_domains), [len(d["index"]) for d in domains])
    scores = rng.integers(0, levels, size=(len(query_domains), len(index_domains))) / levels  # many ties
    for protocol in ("merged", "separate"):
        results = {}
        for name, shift in offsets.items():
            query_labels = np.concatenate([d["query"] + o for d, o in zip(domains, shift, strict=True)])
            index_labels = np.concatenate([d["index"] + o for d, o in zip(domains, shift, strict=True)])
            args = (scores, query_labels, query_domains, index_labels, index_domains, throw)
            results[name] = uned_per_query(*args, protocol=protocol)
        reference = results.pop("irlib")
        for name, out in results.items():
            for field in ("r1", "mp", "ap", "n_rel", "relevances"):
                np.testing.assert_array_equal(getattr(out, field), getattr(reference, field), err_msg=(name, field))


def test_uned_separate_protocol_sees_only_the_query_domain():
    # Domain "x" index items 4-6 outrank domain "s" items for every query; the separate protocol skips them.
    labels, domains = [0, 0, 1, 1, 0, 0, 1], ["s", "s", "s", "s", "x", "x", "x"]
    scores = np.array([[0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7], [0.2, 0.1, 0.3, 0.4, 0.9, 0.8, 0.7]])
    args = (scores, [0, 1], ["s", "s"], labels, domains, {"s": False})
    separate = uned_separate_metrics(*args)
    # q0 (label 0): own-domain order 3 2 1 0 -> r = 0011 over min(2, 5): MP 2/2, AP (1/3 + 2/4) / 2; R@1 miss.
    # q1 (label 1): order 3 2 0 1 -> r = 1100: MP 1, AP 1, R@1 hit.
    assert separate == pytest.approx(
        {"R@1": 0.5, "mMP@5": 0.5, "mAP@5": (5 / 12 + 1) / 2, "s/R@1": 0.5, "s/mMP@5": 0.5, "s/mAP@5": (5 / 12 + 1) / 2}
    )
    merged = uned_merged_metrics(*args)  # merged: x items 4 5 6 fill the first places
    assert merged["R@1"] == 0.0 and merged["mAP@5"] == pytest.approx((0 + (1 / 4 + 2 / 5) / 2) / 2)
    ranks = np.array([[4, 3, 5, 2, 1, 0, 6], [4, 3, 2, 0, 1, 5, 6]])
    by_ranks = uned_separate_metrics(ranks, *args[1:], ranks=True)
    assert by_ranks == pytest.approx(separate)
    with pytest.raises(
        ValueError, match=r"ranks of query 0 hold 3 ids of its domain 's'; the separate protocol needs 4"
    ):
        uned_separate_metrics(ranks[:, :5], *args[1:], ranks=True)
    with pytest.raises(ValueError, match="protocol must be 'merged' or 'separate'"):
        uned_per_query(*args, protocol="common")


# ---- ILIAS: top-k lists (the official pickle's sims/ranks) give the dense result ----


def _official_ilias_map(scores: np.ndarray, positives: list[list[int]], k: int) -> float:
    """ILIAS ``_compute_AP`` (evaluation/src/dataset.py) per query: the top k by score (here a stable sort, the
    lower id first at a tie across the cut), sklearn ``average_precision_score`` times hits / min(k, |gt|)."""
    aps = []
    for row, gt in zip(scores, positives, strict=True):
        order = np.argsort(-row, kind="stable")[:k]
        y_true = np.isin(order, gt)
        aps.append(
            0.0 if not y_true.any() else average_precision_score(y_true, row[order]) * y_true.sum() / min(k, len(gt))
        )
    return float(np.mean(aps))


def _ilias_problem(seed: int, n_q: int, n_db: int, levels: int) -> tuple[np.ndarray, list[list[int]]]:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(n_q, n_db)) / levels  # few levels: many ties
    positives = [sorted(rng.choice(n_db, size=rng.integers(1, n_db + 1), replace=False).tolist()) for _ in range(n_q)]
    return scores, positives


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_q=st.integers(1, 4),
    n_db=st.integers(1, 40),
    k=st.integers(1, 45),
    extra=st.integers(0, 5),
    levels=st.integers(1, 6),
)
def test_ilias_top_k_lists_equal_the_dense_path_and_the_official_formula(seed, n_q, n_db, k, extra, levels):
    scores, positives = _ilias_problem(seed, n_q, n_db, levels)
    dense = ilias_map_at_k(scores, positives, k)
    assert dense == pytest.approx(_official_ilias_map(scores, positives, k), rel=1e-12, abs=1e-15)
    # Lists of m >= k items (or all of a smaller database), in shuffled order, as a search would return them.
    m = min(n_db, k + extra)
    ids = top_k_ids(scores, m)
    rng = np.random.default_rng(seed + 1)
    shuffled = np.array([rng.permutation(row) for row in ids])
    listed = np.take_along_axis(scores, shuffled, axis=1)
    assert ilias_map_at_k(listed, positives, k, ids=shuffled) == pytest.approx(dense, rel=1e-12, abs=1e-15)


def test_ilias_top_k_ties_at_the_cut_go_to_the_lower_id():
    # Ids 7 and 3 tie at the 2nd place of a 3-item list cut at k=2: id 3 is kept (as in the dense path).
    assert ilias_map_at_k([[0.9, 0.5, 0.5]], [[3]], k=2, ids=[[1, 7, 3]]) == pytest.approx(1 / 2 / 1)
    assert ilias_map_at_k([[0.9, 0.5, 0.5]], [[7]], k=2, ids=[[1, 7, 3]]) == 0.0
    dense = np.zeros((1, 8))
    dense[0, [1, 7, 3]] = [0.9, 0.5, 0.5]
    dense[0, [0, 2, 4, 5, 6]] = -1
    assert ilias_map_at_k(dense, [[3]], k=2) == pytest.approx(1 / 2)
    # Positives outside the lists still count in min(k, |positives|).
    assert ilias_map_at_k([[0.9, 0.5]], [[1, 100, 200]], k=2, ids=[[1, 5]]) == pytest.approx(1 / 2)


def test_ilias_top_k_errors():
    with pytest.raises(ValueError, match=r"ids of query 1 repeat a database id"):
        ilias_map_at_k([[0.1, 0.2], [0.3, 0.4]], [[1], [1]], ids=[[0, 1], [2, 2]])
    with pytest.raises(ValueError, match=r"ids must be an integer \(1, 2\) array like scores"):
        ilias_map_at_k([[0.1, 0.2]], [[1]], ids=[[0, 1, 2]])
    with pytest.raises(ValueError, match=r"ids must be an integer"):
        ilias_map_at_k([[0.1, 0.2]], [[1]], ids=[[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"ids must be database ids >= 0"):
        ilias_map_at_k([[0.1, 0.2]], [[1]], ids=[[-1, 1]])
    with pytest.raises(ValueError, match=r"positives of query 0 must be database ids >= 0"):
        ilias_map_at_k([[0.1, 0.2]], [[-3]], ids=[[0, 1]])


# ---- ILIAS report: scale / clutter groups, (sub)categories (evaluation/src/dataset.py) ----

DB_IDS = ["a/pos/P0.jpg", "a/pos/P1.jpg", "distractors/0.jpg", "distractors/1.jpg", "b/pos/P0.jpg"]
POSITIVE_INFO = {"a/pos/P0.jpg": (0.01, 10), "a/pos/P1.jpg": (0.5, 60), "b/pos/P0.jpg": (0.1, 20)}
TAXONOMY = {"obj": {"toy": {"misc": ["a"]}, "tool": {"misc": ["b"]}}}
QUERY_IDS = ["a/query/Q000_00.jpg", "b/query/T000.txt"]
REPORT_SCORES = np.array([[0.5, 0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.3, 0.4, 0.35]])


def test_ilias_report_by_hand():
    out = ilias_report(REPORT_SCORES, QUERY_IDS, DB_IDS, POSITIVE_INFO, TAXONOMY, k=3)
    # q0 (a): top 3 = P1 hit, d0, P0 hit -> AP (1 + 2/3) / 2, oracle 2/3 * 3/2. q1 (b): d1, P0 hit -> 1/2, 1/3 * 3/1.
    np.testing.assert_allclose(out.aps, [500 / 6, 50])
    assert out.map == pytest.approx((500 / 6 + 50) / 2) and out.oracle == pytest.approx(100)
    # Scale groups: a's P0 (0.01) is in group 0, P1 (0.5) in group 3, b's P0 (0.1) in group 1. In group 0 P1 leaves
    # the ranking: d0, P0 -> 1/2; in group 3 P0 leaves it: P1 first -> 1. Clutter 10, 60, 20: groups 0, 3, 1 too.
    nan = np.nan
    for per_query in (out.scale_aps, out.clutter_aps):
        np.testing.assert_allclose(per_query, [[50, nan, nan, 100], [nan, 50, nan, nan]])
    assert out.scale == pytest.approx({"0-0.06880213760855043": 50, "0.06880213760855043-0.13526567164179104": 50,
                                       "0.2729876723163842-inf": 100})  # fmt: skip
    assert out.clutter == pytest.approx({"0-18": 50, "18-33": 50, "53-inf": 100})
    assert out.categories == pytest.approx({"obj": (500 / 6 + 50) / 2})
    assert out.subcategories == pytest.approx({"obj-toy": 500 / 6, "obj-tool": 50})
    # The same from top-2 lists (lists shorter than k + |gt| still follow the official code on those lists).
    ids = np.array([[2, 1], [4, 3]])
    listed = ilias_report(np.take_along_axis(REPORT_SCORES, ids, 1), QUERY_IDS, DB_IDS, POSITIVE_INFO, TAXONOMY,
                          k=3, ids=ids)  # fmt: skip
    np.testing.assert_allclose(listed.aps, [50, 50])  # q0 list: P1 hit, d0 -> (1) / min(3, 2)
    # A positive missing from the database still counts in |gt| (dataset.py builds gt from positive_ids.txt).
    more = POSITIVE_INFO | {"a/pos/P9.jpg": (0.01, 10)}
    assert ilias_report(REPORT_SCORES, QUERY_IDS, DB_IDS, more, TAXONOMY, k=3).aps[0] == pytest.approx(100 * 5 / 9)


def test_ilias_report_errors():
    args = (QUERY_IDS, DB_IDS, POSITIVE_INFO, TAXONOMY)
    with pytest.raises(ValueError, match=r"db_ids must be distinct; 'a/pos/P0.jpg' is listed more than once"):
        ilias_report(np.zeros((2, 6)), QUERY_IDS, DB_IDS + DB_IDS[:1], POSITIVE_INFO, TAXONOMY)
    with pytest.raises(ValueError, match=r"query 'c/query/Q.jpg': its instance 'c' has no positive in positive_info"):
        ilias_report(REPORT_SCORES, ["a/query/Q.jpg", "c/query/Q.jpg"], *args[1:])
    with pytest.raises(ValueError, match=r"query 'b/query/T000.txt': its instance 'b' is not in the taxonomy"):
        ilias_report(REPORT_SCORES, *args[:3], {"obj": {"toy": {"misc": ["a"]}}})
    with pytest.raises(ValueError, match=r"taxonomy lists instance 'a' twice"):
        ilias_report(REPORT_SCORES, *args[:3], TAXONOMY | {"other": {"x": {"y": ["a"]}}})
    with pytest.raises(ValueError, match=r"taxonomy\['obj'\]\['toy'\]\['misc'\] must be a list of instances"):
        ilias_report(REPORT_SCORES, *args[:3], {"obj": {"toy": {"misc": "a"}}})
    with pytest.raises(ValueError, match=r"scores must have shape \(2, 5\)"):
        ilias_report(REPORT_SCORES[:, :4], *args)
    with pytest.raises(ValueError, match=r"ids must be database ids >= 0 and < 5"):
        ilias_report(REPORT_SCORES[:, :2], *args, ids=[[0, 5], [1, 2]])


# ---- GLDv2 mAP@100: DELF metrics.MeanAveragePrecision and dataset_file_io.ReadPredictions ----


def test_gldv2_predictions_of_ignored_ids_are_skipped():
    solution = {"q1": ["a", "b"], "q2": ["c"]}
    predictions = {"q1": ["x", "a"], "ign": ["c"], "q2": ["c"]}
    expected = (1 / 2 / 2 + 1) / 2
    assert gldv2_map_at_k(predictions, solution, ignored={"ign", "other"}) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"1 predicted queries are not in the solution, e.g. 'ign' \(pass the Ignored"):
        gldv2_map_at_k(predictions, solution)  # DELF raises for an id that is neither scored nor Ignored
    with pytest.raises(ValueError, match=r"1 ignored ids are solution queries, e.g. 'q2'"):
        gldv2_map_at_k(predictions, solution, ignored=["ign", "q2"])


def test_gldv2_denominator_is_delf_min_of_list_length_and_k():
    # DELF: num_expected_retrieved = min(len(retrieval_solution[key]), max_predictions), the list's length, and
    # repeated predictions are skipped but keep their position.
    assert gldv2_map_at_k({"q": ["a"]}, {"q": ["a", "a"]}) == pytest.approx(1 / 2)
    assert gldv2_map_at_k({"q": ["b", "b", "a"]}, {"q": ["a", "b"]}) == pytest.approx((1 / 1 + 2 / 3) / 2)
    many = [f"i{n}" for n in range(150)]
    assert gldv2_map_at_k({"q": many}, {"q": many}) == pytest.approx(1.0)  # min(150, 100) = 100
    assert gldv2_map_at_k({"q": many[:50]}, {"q": many}) == pytest.approx(50 / 100)
