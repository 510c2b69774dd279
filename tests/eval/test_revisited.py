"""The revisited-protocol evaluator against the official revisitop outputs, hand cases and invariants."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from irlib.eval.revisited import PROTOCOLS, compute_map, evaluate, stable_positions

TOL = 1e-12


def assert_same(actual, expected) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=0, atol=TOL)


def assert_same_metrics(actual: dict, expected: dict) -> None:
    for key in ("map", "aps", "mp@k", "p@k"):
        assert_same(actual[key], expected[key])


def stable_ranks(scores: np.ndarray) -> np.ndarray:
    """revisitop's ranks layout (n_db, n_queries) from scores, ties broken by database index."""
    return np.argsort(-scores, axis=1, kind="stable").T


# --- official outputs -------------------------------------------------------------------------------------------


def test_compute_map_equals_official_on_every_case(oracle_cases):
    cases = [c for c in oracle_cases["cases"] if c["kind"] == "compute_map"]
    assert cases, "the oracle file holds compute_map cases"
    for case in cases:
        m, aps, pr, prs = compute_map(case["ranks"], case["gnd"], case["kappas"])
        exp = case["expected"]
        assert_same_metrics({"map": m, "aps": aps, "mp@k": pr, "p@k": prs}, exp)


def test_evaluate_equals_official_on_real_ground_truth(oracle_cases, revisitop_dir):
    cases = [c for c in oracle_cases["cases"] if c["kind"] == "revisited"]
    assert {c["gnd_file"] for c in cases} == {"gnd_roxford5k.pkl", "gnd_rparis6k.pkl"}
    for case in cases:
        with open(revisitop_dir / case["gnd_file"], "rb") as f:
            gnd = pickle.load(f)["gnd"]
        from_scores = evaluate(gnd, scores=case["scores"], kappas=case["kappas"])
        from_ranks = evaluate(gnd, ranks=stable_ranks(case["scores"]), kappas=case["kappas"])
        for protocol in PROTOCOLS:
            assert_same_metrics(from_scores[protocol], case["expected"][protocol])
            assert_same_metrics(from_ranks[protocol], case["expected"][protocol])


def test_roxford_easy_excludes_the_two_queries_without_easy_positives(revisitop_dir):
    with open(revisitop_dir / "gnd_roxford5k.pkl", "rb") as f:
        cfg = pickle.load(f)
    rng = np.random.default_rng(0)
    res = evaluate(cfg["gnd"], scores=rng.standard_normal((70, len(cfg["imlist"]))).astype(np.float32))
    empty = [cfg["qimlist"][i] for i in np.flatnonzero(np.isnan(res["easy"]["aps"]))]
    assert sorted(empty) == ["balliol_000187", "hertford_000082"]
    assert not np.isnan(res["medium"]["aps"]).any() and not np.isnan(res["hard"]["aps"]).any()
    assert res["easy"]["map"] == pytest.approx(np.nanmean(res["easy"]["aps"]), abs=TOL)


# --- hand-made cases ------------------------------------------------------------------------------------------


def test_single_positive_at_second_place_gives_a_quarter():
    m, aps, _, _ = compute_map(np.array([[5], [3], [4]]), [{"ok": [3]}])
    assert m == aps[0] == 0.25


def test_mp_at_k_divisor_stops_at_the_last_positive():
    _, _, pr, prs = compute_map(np.arange(20)[:, None], [{"ok": [0, 1]}], kappas=[1, 5, 10])
    assert prs[0].tolist() == [1.0, 1.0, 1.0] and pr.tolist() == [1.0, 1.0, 1.0]


def test_junk_is_removed_from_the_ranking():
    # positives at raw positions 1 and 3, junk at 0 and 2: after removal they are first and second
    ranks = np.array([[9, 4, 8, 5, 0]]).T
    m, _, _, prs = compute_map(ranks, [{"ok": [4, 5], "junk": [9, 8]}], kappas=[1])
    assert m == 1.0 and prs[0, 0] == 1.0


def test_official_semantics_kept_for_overlapping_ok_and_junk():
    # the official code gives 1.25 here; the drop-in must too (evaluate() rejects such ground truth)
    m, *_ = compute_map(np.array([[0, 1, 2]]).T, [{"ok": [0, 1], "junk": [0]}])
    assert m == 1.25


def test_truncated_ranks_count_missing_positives_as_zero():
    full = np.array([[7, 1, 2, 3, 4, 5, 6, 0]]).T  # positives 0 and 1 at positions 7 and 1
    gnd = [{"ok": [0, 1]}]
    _, aps_full, _, _ = compute_map(full, gnd)
    _, aps_top3, _, _ = compute_map(full[:3], gnd)
    one_found = (0 / 1 + 1 / 2) / 2 / 2  # first positive at 0-based position 1, divided by both
    assert aps_top3[0] == pytest.approx(one_found, abs=TOL)
    assert aps_full[0] == pytest.approx(one_found + (1 / 7 + 2 / 8) / 2 / 2, abs=TOL)


def test_no_positive_retrieved_gives_zero_not_a_crash():
    m, aps, pr, _ = compute_map(np.array([[5, 6, 7]]).T, [{"ok": [0]}], kappas=[1, 5])
    assert m == 0.0 and aps[0] == 0.0 and pr.tolist() == [0.0, 0.0]


def test_no_query_with_positives_warns_and_gives_nan():
    with pytest.warns(RuntimeWarning, match="no query has a positive"):
        m, aps, pr, _ = compute_map(np.array([[0, 1]]).T, [{"ok": []}], kappas=[1])
    assert np.isnan(m) and np.isnan(aps[0]) and np.isnan(pr[0])


def test_evaluate_protocols_remap_easy_hard_junk():
    gnd = [{"easy": [0], "hard": [1], "junk": [2], "bbx": [0, 0, 1, 1]}]
    scores = np.array([[0.1, 0.9, 0.5, 0.0]])  # ranking: 1 (hard), 2 (junk), 0 (easy), 3
    res = evaluate(gnd, scores=scores, kappas=[1])
    assert res["easy"]["map"] == 1.0  # hard and junk removed, easy first
    assert res["hard"]["map"] == 1.0
    assert res["medium"]["map"] == pytest.approx((1 + (1 / 1 + 2 / 2) / 2) / 2)  # junk removed: hard 1st, easy 2nd


def test_evaluate_truncated_ranks_match_the_score_path_when_all_positives_are_retrieved():
    rng = np.random.default_rng(3)
    n_db = 300
    gnd = []
    for _ in range(4):
        ids = rng.permutation(n_db)[:12]
        gnd.append({"easy": np.sort(ids[:4]), "hard": np.sort(ids[4:8]), "junk": np.sort(ids[8:])})
    scores = rng.standard_normal((4, n_db))
    for q, g in enumerate(gnd):
        scores[q, np.concatenate([g["easy"], g["hard"], g["junk"]])] += 10
    full = evaluate(gnd, scores=scores)
    top = evaluate(gnd, ranks=stable_ranks(scores)[:20])
    for p in PROTOCOLS:
        assert_same_metrics(top[p], full[p])


# --- invariants -------------------------------------------------------------------------------------------------


@st.composite
def scored_problem(draw):
    n_db = draw(st.integers(1, 40))
    nq = draw(st.integers(1, 4))
    levels = draw(st.integers(1, 6))  # few distinct values -> many ties
    scores = np.array(draw(st.lists(st.integers(0, levels), min_size=n_db * nq, max_size=n_db * nq)), float)
    gnd = []
    for _ in range(nq):
        labels = draw(st.lists(st.sampled_from("ehjn"), min_size=n_db, max_size=n_db))
        gnd.append({f: [i for i, lab in enumerate(labels) if lab == f[0]] for f in ("easy", "hard", "junk")})
    return gnd, scores.reshape(nq, n_db)


@settings(max_examples=200, deadline=None)
@given(scored_problem())
def test_score_path_equals_stable_argsort_path(problem):
    gnd, scores = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a = evaluate(gnd, scores=scores)
        b = evaluate(gnd, ranks=stable_ranks(scores))
    for p in PROTOCOLS:
        np.testing.assert_array_equal(a[p]["aps"], b[p]["aps"])
        np.testing.assert_array_equal(a[p]["p@k"], b[p]["p@k"])
        np.testing.assert_array_equal(a[p]["map"], b[p]["map"])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(st.integers(-3, 3), min_size=1, max_size=60),
        st.lists(
            st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False), min_size=1, max_size=60
        ),
    ),
    st.sampled_from([1, 2, 7, 1 << 14]),
    st.data(),
)
def test_stable_positions_equal_argsort_positions(values, n_bins, data):
    row = np.array(values, dtype=np.float32)
    items = np.array(sorted(data.draw(st.sets(st.integers(0, row.size - 1), min_size=1))))
    order = np.argsort(-row, kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(row.size)
    np.testing.assert_array_equal(stable_positions(row, items, n_bins=n_bins), where[items])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(0, 10_000))
def test_ap_is_one_iff_positives_lead_the_ranking(n_pos, seed):
    rng = np.random.default_rng(seed)
    n_db = n_pos + int(rng.integers(0, 30))
    ok = rng.permutation(n_db)[:n_pos]
    scores = rng.random((1, n_db))
    scores[0, ok] += 1.0
    res = evaluate([{"easy": np.sort(ok), "hard": [], "junk": []}], scores=scores, protocols=("easy",))
    assert res["easy"]["map"] == pytest.approx(1.0, abs=TOL)
    scores[0, ok[0]] = -1.0  # one positive falls to the bottom
    res = evaluate([{"easy": np.sort(ok), "hard": [], "junk": []}], scores=scores, protocols=("easy",))
    assert (res["easy"]["map"] < 1.0 - 1e-9) == (n_pos < n_db)


# --- bad input --------------------------------------------------------------------------------------------------


GOOD = [{"easy": [0], "hard": [1], "junk": [2]}]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": np.zeros((2, 3))}, r"scores must have shape \(n_queries=1"),
        ({"scores": np.zeros(3)}, "scores must have shape"),
        ({"scores": np.array([[0.0, np.nan, 1.0]])}, "NaN"),
        ({"scores": np.zeros((1, 2))}, r"outside \[0, 2\)"),
        ({"ranks": np.zeros((3, 2), dtype=int)}, "transpose"),
        ({"ranks": np.zeros((3, 1))}, "integer"),
        ({"ranks": -np.ones((3, 1), dtype=int)}, "negative"),
        ({}, "exactly one of"),
        ({"scores": np.zeros((1, 3)), "ranks": np.zeros((3, 1), dtype=int)}, "exactly one of"),
        ({"scores": np.zeros((1, 3)), "protocols": ("medium", "extreme")}, "unknown protocol"),
        ({"scores": np.zeros((1, 3)), "kappas": (0,)}, "kappas"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate(GOOD, **kwargs)


@pytest.mark.parametrize(
    ("gnd", "message"),
    [
        ([{"easy": [0], "hard": [1]}], r"lacks field\(s\) \['junk'\]"),
        ([{"easy": [0], "hard": [0], "junk": []}], "disjoint"),
        ([{"easy": [0.5], "hard": [], "junk": []}], "integer"),
        ([[0, 1]], "mapping"),
        ({"gnd": GOOD}, "per-query list"),
    ],
)
def test_malformed_ground_truth_is_named(gnd, message):
    with pytest.raises(ValueError, match=message):
        evaluate(gnd, scores=np.zeros((len(gnd), 3)))


def test_compute_map_rejects_mismatched_ranks():
    with pytest.raises(ValueError, match="columns but gnd has 2 queries"):
        compute_map(np.zeros((5, 3), dtype=int), [{"ok": [0]}, {"ok": [1]}])


def test_stable_positions_when_the_score_span_is_too_small_to_bin():
    # found by hypothesis: (n_bins - 1) / span overflows float32 for a span of one tiny normal number
    row = np.array([0.0, 1.1754943508222875e-38], dtype=np.float32)
    np.testing.assert_array_equal(stable_positions(row, np.array([0, 1]), n_bins=7), [1, 0])


# --- rankings are validated as strictly as scores ------------------------------------------------------------------


def _gnd_and_scores(seed: int, n_db: int, nq: int) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    gnd = []
    for _ in range(nq):
        ids = rng.permutation(n_db)
        easy, hard, junk = np.split(ids[: rng.integers(1, n_db)], [1 + rng.integers(0, 2), 3])
        gnd.append({"easy": easy.tolist(), "hard": hard.tolist(), "junk": junk.tolist()})
    return gnd, rng.integers(0, 4, (nq, n_db)).astype(np.float32)  # few levels: many ties


@pytest.mark.filterwarnings("ignore:no query has a positive")  # a protocol without positives in a small case
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n_db=st.integers(4, 30), nq=st.integers(1, 4), k=st.integers(1, 30))
def test_valid_rankings_give_the_scores_numbers_and_invalid_ones_raise(seed, n_db, nq, k):
    gnd, scores = _gnd_and_scores(seed, n_db, nq)
    ranks = stable_ranks(scores)
    full = evaluate(gnd, ranks=ranks, n_db=n_db)
    for p in PROTOCOLS:
        assert_same_metrics(full[p], evaluate(gnd, scores=scores)[p])
    evaluate(gnd, ranks=ranks[: min(k, n_db)], n_db=n_db)  # a prefix is a valid (truncated) ranking
    rng = np.random.default_rng(seed)
    q = int(rng.integers(nq))
    duplicated = ranks.copy()
    duplicated[-1, q] = duplicated[0, q]
    with pytest.raises(ValueError, match=rf"index {duplicated[0, q]} in query {q}"):
        evaluate(gnd, ranks=duplicated, n_db=n_db)
    outside = ranks.copy()
    outside[0, q] = n_db
    with pytest.raises(ValueError, match=rf"database index {n_db}, outside \[0, n_db={n_db}\)"):
        evaluate(gnd, ranks=outside, n_db=n_db)
    negative = ranks.copy()
    negative[0, q] = -1
    with pytest.raises(ValueError, match="negative indices"):
        evaluate(gnd, ranks=negative, n_db=n_db)


def test_a_duplicated_positive_no_longer_gives_an_ap_above_one():
    gnd = [{"easy": [0], "hard": [], "junk": []}]
    with pytest.raises(ValueError, match="lists a database index twice"):  # mAP 3.0 came out before
        evaluate(gnd, ranks=np.array([[0], [0], [0]]))
    with pytest.raises(ValueError, match="ranks is empty"):
        evaluate(gnd, ranks=np.zeros((0, 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"gnd\[0\]\['easy'\] has indices outside \[0, 3\)"):
        evaluate([{"easy": [5], "hard": [], "junk": []}], ranks=np.array([[0], [1], [2]]), n_db=3)
