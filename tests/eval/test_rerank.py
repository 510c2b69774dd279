"""Rerankers: SuperGlobal against the official code's outputs, hand cases and planted examples for the others."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from irlib.eval.rerank import (
    alpha_dba,
    alpha_qe,
    average_qe,
    diffusion_graph,
    diffusion_rerank,
    initial_ranks,
    k_reciprocal_distance,
    k_reciprocal_rerank,
    rerank_scores,
    reranker_params,
    superglobal_rerank,
)
from irlib.eval.revisited import evaluate
from tests.conftest import shared_path

ATOL = 1e-6  # the oracle README's float tolerance


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def clusters(seed: int, noise: float, n_clusters: int = 8, per: int = 15, dim: int = 32):
    """Unit database rows around ``n_clusters`` centres, one noisier query per centre, and its revisited gnd."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_clusters, dim)))
    X = unit(np.repeat(centres, per, axis=0) + noise * rng.standard_normal((n_clusters * per, dim)))
    Q = unit(centres + 2 * noise * rng.standard_normal((n_clusters, dim)))
    labels = np.repeat(np.arange(n_clusters), per)
    empty = np.array([], dtype=np.int64)
    gnd = [{"easy": np.flatnonzero(labels == c), "hard": empty, "junk": empty} for c in range(n_clusters)]
    return Q, X, gnd


def mean_ap(gnd, ranks) -> float:
    return evaluate(gnd, ranks=ranks, protocols=("easy",))["easy"]["map"]


# --- SuperGlobal vs the official code ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def superglobal_oracle() -> dict:
    return torch.load(shared_path("data", "oracle", "superglobal_rerank_cases.pt"), weights_only=True)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.long().numpy() if t.dtype in (torch.int32, torch.int64) else t.numpy()


def _run(case: dict, stable: bool):
    return superglobal_rerank(
        _np(case["Q"]), _np(case["X"]), M=case["M"], K=case["K"], beta=case["beta"], stable=stable, return_details=True
    )


def _assert_structure(ranks: np.ndarray, initial: np.ndarray, s1_order: np.ndarray, final_order: np.ndarray) -> None:
    """The README's identities: the new top M' is the shortlist permuted by s1_order[final_order]; the tail is kept."""
    m = s1_order.shape[1]
    head = np.take_along_axis(initial[:m].T, np.take_along_axis(s1_order, final_order, axis=1), axis=1)
    np.testing.assert_array_equal(ranks[:m], head.T)
    np.testing.assert_array_equal(ranks[m:], initial[m:])


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    diff = float(np.abs(actual - expected).max())
    assert diff <= ATOL, diff


def _assert_near_tie_equal(case: dict, ours: np.ndarray, stored: np.ndarray) -> None:
    """README check for non-robust initial orders: same ids per column, same float64 scores within 1e-6."""
    sim64 = _np(case["X"]).astype(np.float64) @ _np(case["Q"]).astype(np.float64).T
    np.testing.assert_array_equal(np.sort(ours, axis=0), np.sort(stored, axis=0))
    gap = np.abs(np.take_along_axis(sim64, ours, axis=0) - np.take_along_axis(sim64, stored, axis=0)).max()
    assert gap <= 1e-6, gap


def test_superglobal_matches_the_official_ranks_on_generic_cases(superglobal_oracle):
    cases = [c for c in superglobal_oracle["cases"] if c["kind"] == "generic"]
    assert len(cases) == 6
    for case in cases:
        res, m = _run(case, stable=True), case["shortlist_len"]
        det, ref = res.details, case["detail"]
        init_ref = _np(case["ranks_initial"])
        init, short = det["initial_ranks"], det["initial_ranks"][:m].T  # shortlist ids (n_q, M')
        short_ref = init_ref[:m].T
        assert res.ranks.shape == init_ref.shape and res.scores.shape == (case["n_q"], m)
        # ranks: the reranked top M' exactly; the initial order as the README prescribes
        np.testing.assert_array_equal(res.ranks[:m], _np(case["ranks_final"])[:m])
        if case["initial_order_robust"]:
            np.testing.assert_array_equal(init, init_ref)
            np.testing.assert_array_equal(res.ranks, _np(case["ranks_final"]))
        else:
            np.testing.assert_array_equal(np.sort(short, axis=1), np.sort(short_ref, axis=1))
            _assert_near_tie_equal(case, init, init_ref)
            _assert_near_tie_equal(case, res.ranks, _np(case["ranks_final"]))
        # orders (positions into the shortlist), compared as database ids so a near-tie swap could not matter
        s1_ids = np.take_along_axis(short, det["s1_order"], axis=1)
        s1_ids_ref = np.take_along_axis(short_ref, _np(case["s1_order"]), axis=1)
        np.testing.assert_array_equal(s1_ids, s1_ids_ref)
        final_ids = np.take_along_axis(s1_ids, det["final_order"], axis=1)
        np.testing.assert_array_equal(final_ids, np.take_along_axis(s1_ids_ref, _np(case["final_order"]), axis=1))
        # floats, aligned by id: align[q, j] is our position of the oracle's shortlist position j
        ref_rank = np.argsort(np.argsort(short_ref, axis=1), axis=1)
        align = np.take_along_axis(np.argsort(short, axis=1), ref_rank, axis=1)
        assert (np.take_along_axis(short, align, axis=1) == short_ref).all()
        _assert_close(np.take_along_axis(det["s1"], align, axis=1), _np(case["s1"]))
        _assert_close(det["final_scores"], _np(case["final_scores"]))
        _assert_close(det["refined_query"], _np(case["refined_query"]))
        assert (np.diff(res.scores, axis=1) <= 0).all()
        # per-query intermediates of the listed queries
        for i, qi in enumerate(ref["queries"]):
            pos = align[qi]  # our position of the item at the oracle's position j
            back = np.argsort(pos)  # oracle position of our position
            np.testing.assert_array_equal(back[det["neighbours"][qi][pos]], _np(ref["neighbours"][i]))
            _assert_close(det["neighbour_weights"][qi][pos], _np(ref["neighbour_weights"][i]))
            rows = ref["refined_db_rows"]
            _assert_close(det["refined_db"][qi][pos[:rows]], _np(ref["refined_db"][i]))
        _assert_structure(res.ranks, init, det["s1_order"], det["final_order"])
        _assert_structure(_np(case["ranks_final"]), init_ref, _np(case["s1_order"]), _np(case["final_order"]))


def test_superglobal_stable_matches_the_stable_variant_on_tie_cases(superglobal_oracle):
    cases = [c for c in superglobal_oracle["cases"] if c["kind"] == "ties"]
    assert len(cases) == 2
    for case in cases:
        res, sv, svd = _run(case, stable=True), case["stable_variant"], case["stable_variant_detail"]
        det = res.details
        for key in ("ranks_initial", "ranks_final", "s1_order", "final_order"):
            ours = det["initial_ranks"] if key == "ranks_initial" else res.ranks if key == "ranks_final" else det[key]
            np.testing.assert_array_equal(ours, _np(sv[key]), err_msg=f"{case['name']}: {key}")
        for key in ("s1", "refined_query", "final_scores"):
            _assert_close(det[key], _np(sv[key]))
        qs = svd["queries"]
        np.testing.assert_array_equal(det["neighbours"][qs], _np(svd["neighbours"]))
        _assert_close(det["neighbour_weights"][qs], _np(svd["neighbour_weights"]))
        _assert_structure(res.ranks, det["initial_ranks"], det["s1_order"], det["final_order"])
        # the official tie order differs from the stable one in every query (README)
        assert not np.array_equal(res.ranks, _np(case["ranks_final"]))


def test_superglobal_unstable_sorts_reproduce_the_official_ties_on_this_build(superglobal_oracle):
    """``stable=False`` repeats the official calls; their tie order is defined only by this CPU torch build."""
    if torch.__version__ != superglobal_oracle["torch_version"]:
        pytest.skip(f"official tie order recorded with torch {superglobal_oracle['torch_version']}")
    for case in [c for c in superglobal_oracle["cases"] if c["kind"] == "ties"]:
        res, ref = _run(case, stable=False), case["detail"]
        np.testing.assert_array_equal(res.details["initial_ranks"], _np(case["ranks_initial"]))
        np.testing.assert_array_equal(res.ranks, _np(case["ranks_final"]))
        for key in ("s1_order", "final_order"):
            np.testing.assert_array_equal(res.details[key], _np(case[key]))
        np.testing.assert_array_equal(res.details["neighbours"][ref["queries"]], _np(ref["neighbours"]))
        _assert_close(res.details["final_scores"], _np(case["final_scores"]))


def test_superglobal_takes_a_given_initial_ranking(superglobal_oracle):
    case = next(c for c in superglobal_oracle["cases"] if c["name"] == "generic_d128_n5000_q7")
    Q, X = _np(case["Q"]), _np(case["X"])
    given_ranks = _np(case["ranks_initial"])
    res = superglobal_rerank(Q, X, ranks=given_ranks.astype(np.int32))
    np.testing.assert_array_equal(res.ranks, _np(case["ranks_final"]))
    truncated = superglobal_rerank(Q, X, ranks=given_ranks[:450])
    np.testing.assert_array_equal(truncated.ranks, res.ranks[:450])


# --- query expansion and database augmentation ------------------------------------------------------------------


def test_alpha_qe_hand_example():
    a, b, c = 0.3, 0.5, 0.6  # angles from the query e0
    X = np.array([[np.cos(a), np.sin(a), 0], [np.cos(b), 0, np.sin(b)], [np.cos(c), np.sin(c), 0]], dtype=np.float32)
    Q = np.array([[1, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(initial_ranks(Q, X)[:, 0], [0, 1, 2])
    # k=1, alpha=3: q̃ ∝ e0 + cos(a)^3 x0
    w = np.cos(a) ** 3
    expected = unit(np.array([1 + w * np.cos(a), w * np.sin(a), 0]))
    res = alpha_qe(Q, X, 1, 3.0)
    np.testing.assert_allclose(res.details["queries"][0], expected, atol=1e-6)
    np.testing.assert_array_equal(res.ranks[:, 0], [0, 2, 1])  # x2 shares x0's direction and overtakes x1
    np.testing.assert_allclose(res.scores[0], (X @ expected)[[0, 2, 1]], atol=1e-6)
    # average QE with k=2: q̃ ∝ e0 + x0 + x1
    avg = average_qe(Q, X, 2)
    np.testing.assert_allclose(avg.details["queries"][0], unit(Q[0] + X[0] + X[1]), atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    n_q=st.integers(1, 4),
    dim=st.integers(2, 8),
    data=st.data(),
)
def test_alpha_qe_properties(seed, n, n_q, dim, data):
    rng = np.random.default_rng(seed)
    Q, X = unit(rng.standard_normal((n_q, dim))), unit(rng.standard_normal((n, dim)))
    k = data.draw(st.integers(1, n))
    alpha = data.draw(st.floats(0.0, 5.0))
    start = initial_ranks(Q, X)
    # k = 0: nothing is added, the ranking is the initial one
    same = alpha_qe(Q, X, 0, alpha)
    np.testing.assert_array_equal(same.ranks, start)
    np.testing.assert_allclose(same.details["queries"], Q, atol=1e-6)
    # alpha = 0: the normalised mean of the query and its top-k
    avg = alpha_qe(Q, X, k, 0.0)
    np.testing.assert_allclose(avg.details["queries"], unit(Q + X[start[:k].T].sum(axis=1)), atol=1e-5)
    # any (k, alpha): unit queries, a permutation per column, non-increasing scores equal to X @ q̃
    res = alpha_qe(Q, X, k, alpha)
    np.testing.assert_allclose(np.linalg.norm(res.details["queries"], axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(np.sort(res.ranks, axis=0), np.repeat(np.arange(n)[:, None], n_q, axis=1))
    np.testing.assert_allclose(res.scores, np.take_along_axis(res.details["queries"] @ X.T, res.ranks.T, 1), atol=1e-6)
    assert (np.diff(res.scores, axis=1) <= 0).all()


def test_alpha_dba_hand_example():
    t = 0.2
    X = np.array([[1, 0], [np.cos(t), np.sin(t)], [0, 1]], dtype=np.float32)
    # k=1, alpha=2: 0 <-> 1 are each other's nearest, 2's nearest is 1 (sin t > 0)
    s01, s12 = np.cos(t), np.sin(t)
    expected = unit(np.stack([X[0] + s01**2 * X[1], X[1] + s01**2 * X[0], X[2] + s12**2 * X[1]]))
    out = alpha_dba(X, 1, 2.0)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(alpha_dba(X, 0, 2.0), X, atol=1e-6)
    # k=2 with alpha=0: every row averages itself and both others
    np.testing.assert_allclose(alpha_dba(X, 2, 0.0), unit(np.repeat(X.sum(0, keepdims=True), 3, axis=0)), atol=1e-6)


def test_alpha_dba_rows_are_unit_and_ties_go_to_the_lower_id():
    rng = np.random.default_rng(3)
    X = unit(rng.standard_normal((50, 6)))
    X[10] = X[20] = X[30]  # id 30's two nearest (k=1 takes one of them) tie exactly
    out = alpha_dba(X, 1, 3.0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(out[30], unit(X[30] + X[10]), atol=1e-6)


# --- k-reciprocal ----------------------------------------------------------------------------------------------


def test_k_reciprocal_jaccard_hand_example():
    x = np.array([0.0, 1.0, 3.0, 7.0])  # points on a line; squared distances
    dist = (x[:, None] - x[None, :]) ** 2
    # k1=1: R(0) = {0, 1}, R(1) = {1, 0}; 2 and 3 are not their nearest's nearest, so R = {self}; k2=1: no QE
    jac, final = k_reciprocal_distance(dist, k1=1, k2=1, lam=0.3)
    p = 1 / (1 + np.exp(-1 / 49))  # V_0 on {0, 1}: exp(-d/row max) normalised, row 0 scaled by 49
    r = 1 / (1 + np.exp(-1 / 36))  # V_1 on {1, 0}, row 1 scaled by 36
    j01 = 1 - ((1 - r) + (1 - p)) / (p + r)
    expected = np.array([[0, j01, 1, 1], [j01, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]])
    np.testing.assert_allclose(jac, expected, atol=1e-12)
    np.testing.assert_allclose(final, 0.7 * expected + 0.3 * dist / dist.max(axis=1, keepdims=True), atol=1e-12)
    jac_rows, _ = k_reciprocal_distance(dist, k1=1, k2=1, rows=[2, 0])
    np.testing.assert_allclose(jac_rows, expected[[2, 0]], atol=1e-12)


def test_k_reciprocal_keeps_each_node_in_its_own_set_among_many_duplicates():
    x = np.array([0.0, 0.0, 0.0, 1.0])  # node 2's k1+1 = 2 nearest are the duplicates 0 and 1
    jac, final = k_reciprocal_distance((x[:, None] - x[None, :]) ** 2, k1=1, k2=1)
    assert np.isfinite(final).all()
    np.testing.assert_allclose(np.diag(jac), 0, atol=1e-12)


def test_k_reciprocal_rerank_improves_planted_clusters():
    Q, X, gnd = clusters(seed=2, noise=0.15)
    start = initial_ranks(Q, X)
    res = k_reciprocal_rerank(Q, X, M=60)
    before, after = mean_ap(gnd, start), mean_ap(gnd, res.ranks)
    assert after > before + 0.1, (before, after)
    np.testing.assert_array_equal(res.ranks[60:], start[60:])
    np.testing.assert_array_equal(np.sort(res.ranks[:60], axis=0), np.sort(start[:60], axis=0))
    assert res.scores.shape == (8, 60) and (np.diff(res.scores, axis=1) <= 0).all()
    assert res.details["jaccard"].shape == (8, 60)


def _k_reciprocal_by_sets(dist: np.ndarray, k1: int, k2: int, lam: float):
    """Zhong et al. (CVPR 2017) Eqs. 4-13 restated with Python sets, one node at a time (no shared code paths)."""
    n = len(dist)
    d = dist / dist.max(axis=1, keepdims=True)
    nearest = [list(np.argsort(d[i], kind="stable")) for i in range(n)]

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in nearest[i][: k + 1] if i in nearest[j][: k + 1]} | {i}

    sets, grew = [], 0
    for i in range(n):
        core = reciprocal(i, k1)
        full = set(core)
        for c in core:
            half = reciprocal(c, int(np.around(k1 / 2)))
            if len(half & core) > 2 / 3 * len(half):
                full |= half
        grew += len(full) > len(core)
        sets.append(full)
    v = np.zeros((n, n))
    for i, members in enumerate(sets):
        idx = sorted(members)
        v[i, idx] = np.exp(-d[i, idx]) / np.exp(-d[i, idx]).sum()
    v = np.array([v[nearest[i][:k2]].mean(axis=0) for i in range(n)])
    jac = np.array(
        [[1 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum() for j in range(n)] for i in range(n)]
    )
    return jac, (1 - lam) * jac + lam * d, grew


def test_k_reciprocal_matches_a_set_by_set_restatement_of_the_paper():
    rng = np.random.default_rng(0)
    expanded = 0
    for _ in range(6):
        n, k1, k2 = int(rng.integers(40, 90)), int(rng.integers(4, 21)), int(rng.integers(2, 7))
        centres = rng.standard_normal((5, 16))
        x = unit(centres[rng.integers(0, 5, n)] + 0.6 * rng.standard_normal((n, 16))).astype(np.float64)
        gram = x @ x.T
        dist = np.maximum(np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2 * gram, 0.0)
        jac_ref, final_ref, grew = _k_reciprocal_by_sets(dist, k1, k2, 0.3)
        expanded += grew
        jac, final = k_reciprocal_distance(dist, k1=k1, k2=k2, lam=0.3)
        np.testing.assert_allclose(jac, jac_ref, atol=1e-12)
        np.testing.assert_allclose(final, final_ref, atol=1e-12)
        no_qe, _ = k_reciprocal_distance(dist, k1=k1, k2=1, lam=0.3)
        assert np.abs(no_qe - jac).max() > 1e-3  # the k2 averaging is exercised
    assert expanded > 10  # and so is the 2/3 expansion


# --- diffusion --------------------------------------------------------------------------------------------------


def _manifold() -> tuple[np.ndarray, np.ndarray, int]:
    """A chain along a great circle away from the query, an off-manifold negative, an unrelated second chain."""
    dim = 8
    angles = np.arange(1, 31) * 0.05
    chain = np.zeros((30, dim))
    chain[:, 0], chain[:, 1] = np.cos(angles), np.sin(angles)
    negative = np.zeros((1, dim))
    negative[0, 0], negative[0, 2] = np.cos(0.6), np.sin(0.6)  # closer to the query than chain items beyond 0.6 rad
    other = np.zeros((30, dim))
    other[:, 3], other[:, 4] = np.cos(angles), np.sin(angles)
    return unit(np.eye(dim)[:1]), unit(np.concatenate([chain, negative, other])), 30


def test_diffusion_ranks_far_manifold_positives_above_a_closer_negative():
    Q, X, negative = _manifold()
    start = initial_ranks(Q, X)[:, 0]
    assert np.flatnonzero(start == negative)[0] < 30  # initially above the far end of the chain
    res = diffusion_rerank(Q, X, M=61, k=3, kq=3)
    position = np.argsort(res.ranks[:, 0])
    assert position[:30].max() < position[negative], res.ranks[:, 0]


def test_diffusion_solution_satisfies_the_linear_system():
    Q, X, _ = clusters(seed=0, noise=0.15)
    alpha, m, k, gamma = 0.99, 50, 8, 3.0
    res = diffusion_rerank(Q, X, M=m, k=k, kq=5, gamma=gamma, alpha=alpha, tol=1e-8)
    start = initial_ranks(Q, X)
    for i in range(Q.shape[0]):
        w = diffusion_graph(X[start[:m, i]], k, gamma)
        assert abs(w - w.T).max() < 1e-12
        y, f = res.details["seeds"][i], res.details["solution"][i]
        assert np.count_nonzero(y) == 5
        top = X[start[:5, i]].astype(np.float64) @ Q[i].astype(np.float64)
        np.testing.assert_allclose(y[:5], np.maximum(top, 0.0) ** gamma, rtol=1e-12)
        system = sp.identity(m) - alpha * w
        np.testing.assert_allclose(system @ f, y, atol=1e-6 * np.linalg.norm(y))
        np.testing.assert_allclose(f, np.linalg.solve(system.toarray(), y), rtol=1e-5, atol=1e-8)
        np.testing.assert_array_equal(res.ranks[:m, i], start[:m, i][np.argsort(-f, kind="stable")])


def test_diffusion_graph_is_mutual_knn_with_symmetric_normalisation():
    G = unit(np.array([[1, 0], [np.cos(0.1), np.sin(0.1)], [np.cos(0.3), np.sin(0.3)], [0, 1]]))
    w = diffusion_graph(G, k=1, gamma=2.0).toarray()
    # 0 <-> 1 mutual; 2's nearest is 1 but 1's is 0; 3's nearest is 2 but 2's is 1: one edge
    a = np.zeros((4, 4))
    a[0, 1] = a[1, 0] = float(G[0] @ G[1]) ** 2
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0)
    np.testing.assert_allclose(w, a * inv[:, None] * inv[None, :], atol=1e-12)


# --- validation -------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(0)
    Q, X = unit(rng.standard_normal((2, 4))), unit(rng.standard_normal((10, 4)))
    with pytest.raises(ValueError, match="descriptor sizes differ"):
        superglobal_rerank(Q, X[:, :3])
    with pytest.raises(ValueError, match="2-D"):
        initial_ranks(Q[0], X)
    with pytest.raises(ValueError, match="NaN"):
        alpha_qe(np.full((1, 4), np.nan), X, 1, 3.0)
    with pytest.raises(ValueError, match="ranks must have shape"):
        k_reciprocal_rerank(Q, X, ranks=np.zeros((10, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="outside"):
        diffusion_rerank(Q, X, ranks=np.full((10, 2), 10))
    with pytest.raises(ValueError, match="integer"):
        superglobal_rerank(Q, X, ranks=np.zeros((10, 2)))
    with pytest.raises(ValueError, match="K must be"):
        superglobal_rerank(Q, X, K=-1)
    with pytest.raises(ValueError, match="beta"):
        superglobal_rerank(Q, X, beta=float("nan"))
    with pytest.raises(ValueError, match="exceeds"):
        alpha_qe(Q, X, 11, 3.0)
    with pytest.raises(ValueError, match="exceeds"):
        alpha_dba(X, 10, 3.0)
    with pytest.raises(ValueError, match="alpha"):
        diffusion_rerank(Q, X, alpha=1.0)
    with pytest.raises(ValueError, match="square"):
        k_reciprocal_distance(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="lam"):
        k_reciprocal_distance(np.zeros((2, 2)), lam=2.0)


@pytest.mark.parametrize(
    ("method", "params", "direct"),
    [
        ("superglobal", {"M": 40, "K": 4}, lambda Q, X: superglobal_rerank(Q, X, M=40, K=4)),
        ("k_reciprocal", {"M": 30}, lambda Q, X: k_reciprocal_rerank(Q, X, M=30)),
        ("diffusion", {"M": 60, "k": 8}, lambda Q, X: diffusion_rerank(Q, X, M=60, k=8)),
        ("alpha_qe", {"k": 5, "alpha": 3.0}, lambda Q, X: alpha_qe(Q, X, 5, 3.0)),
        ("average_qe", {"k": 3}, lambda Q, X: average_qe(Q, X, 3)),
    ],
)
def test_rerank_scores_give_the_reranker_ranking(tmp_path, method, params, direct):
    Q, X, gnd = clusters(seed=5, noise=0.35)
    protocols = ("easy", "medium")
    expected = evaluate(gnd, ranks=direct(Q, X).ranks, protocols=protocols)
    # The database as fp16 on disk: the pipeline's +1M layout.
    stored = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=X.shape)
    stored[:] = X
    stored.flush()
    X16 = np.load(tmp_path / "x.npy", mmap_mode="r")
    Xr = X16.astype(np.float32)
    scores = rerank_scores(method, Q @ Xr.T, Q, X16, params)
    got = evaluate(gnd, scores=scores, protocols=protocols)
    reference = evaluate(gnd, ranks=direct(Q, Xr).ranks, protocols=protocols)
    for p in protocols:
        np.testing.assert_array_equal(got[p]["aps"], reference[p]["aps"])
        np.testing.assert_allclose(got[p]["aps"], expected[p]["aps"], atol=0.02)  # fp16 storage moves little
    initial = evaluate(gnd, scores=Q @ Xr.T, protocols=protocols)
    assert not np.array_equal(initial["easy"]["aps"], got["easy"]["aps"])  # the reranking changed something


def test_reranker_params_are_completed_and_checked():
    assert reranker_params("superglobal", {"M": 100}) == {"M": 100, "K": 9, "beta": 0.15, "stable": True}
    assert reranker_params("alpha_qe", {"k": 2, "alpha": 3}) == {"k": 2, "alpha": 3}
    with pytest.raises(ValueError, match="Unknown reranker 'qe'. Available rerankers: alpha_qe, average_qe"):
        reranker_params("qe")
    with pytest.raises(ValueError, match="superglobal takes K, M, beta, stable; unknown parameter.s. m"):
        reranker_params("superglobal", {"m": 3})
    with pytest.raises(ValueError, match="alpha_qe needs parameter.s. k, alpha"):
        reranker_params("alpha_qe")


class _RowLog:
    """A database that records which rows are read."""

    def __init__(self, X: np.ndarray) -> None:
        self.X, self.shape, self.dtype, self.read = X, X.shape, X.dtype, set()

    def __getitem__(self, rows):
        self.read |= set(np.arange(self.shape[0])[rows].ravel().tolist())
        return self.X[rows]


@pytest.mark.parametrize(("method", "M"), [("superglobal", 20), ("k_reciprocal", 15), ("diffusion", 25)])
def test_shortlist_rerankers_read_only_the_shortlisted_rows(method, M):
    Q, X, _ = clusters(seed=7, noise=0.35)
    scores = Q @ X.T
    log = _RowLog(X)
    out = rerank_scores(method, scores, Q, log, {"M": M})
    shortlist = set(np.argsort(-scores, axis=1, kind="stable")[:, :M].ravel().tolist())
    assert log.read == shortlist and len(shortlist) < X.shape[0]
    # the reranked head sits just above each query's best initial score; everything else keeps its score
    head = np.argsort(-out, axis=1, kind="stable")[:, :M]
    assert set(head.ravel().tolist()) == shortlist
    rest = np.ones_like(out, dtype=bool)
    np.put_along_axis(rest, head, False, axis=1)
    np.testing.assert_array_equal(out[rest], scores.astype(np.float32)[rest])
    lowest_head = np.take_along_axis(out, head, axis=1).min(axis=1)
    np.testing.assert_array_equal(lowest_head, np.nextafter(scores.max(axis=1), np.float32(np.inf)))
