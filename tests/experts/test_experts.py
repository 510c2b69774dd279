"""Experts, which expert serves each domain, and the per-expert indexes with their routed and mixture searches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from irlib.eval.search import exact_top_k
from irlib.experts import Expert, ExpertIndex, ExpertSet


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _expert(name: str, domains: tuple[str, ...] = (), dim: int = 8, seed: int = 0, **kw) -> Expert:
    rng = np.random.default_rng(seed)
    return Expert(name, domains, _unit(rng, 5, dim), _unit(rng, 20, dim), **kw)


def test_the_most_specialised_expert_serves_a_domain_and_generalists_come_last():
    experts = ExpertSet(
        [
            _expert("universal"),
            _expert("products", ("sop", "inshop")),
            _expert("inshop-only", ("inshop",)),
            _expert("landmarks", ("gldv2", "met")),
        ],
        fallback="universal",
    )
    assert experts.names == ["products", "inshop-only", "landmarks", "universal"]
    assert experts.routable == ["products", "inshop-only", "landmarks"]
    assert experts.expert_of("inshop") == "inshop-only"
    assert experts.expert_of("sop") == "products"
    assert experts.expert_of("cars") == "universal"  # no expert: the fallback
    assert experts.targets(["cars", "inshop", "met"]).tolist() == [3, 1, 2]


def test_a_domain_without_expert_and_without_fallback_is_an_error_naming_it():
    experts = ExpertSet([_expert("cars-expert", ("cars",))])
    with pytest.raises(ValueError, match="domain 'inshop' has no expert"):
        experts.expert_of("inshop")


def test_equally_specialised_experts_of_one_domain_are_refused():
    with pytest.raises(ValueError, match="domain 'cars' has equally specialised experts"):
        ExpertSet([_expert("a", ("cars",)), _expert("b", ("cars",))])


@pytest.mark.parametrize(
    ("experts", "fallback", "message"),
    [
        ([_expert("a"), _expert("a")], None, "distinct names"),
        ([_expert("a")], "universal", "fallback expert 'universal' is not one of"),
        ([_expert("a", requires=("b",))], None, r"requires \['b'\]"),
        ([_expert("a", requires=("b",)), _expert("b", requires=("a",))], None, "requires itself"),
        ([_expert("a"), Expert("b", (), np.zeros((4, 8)), np.zeros((20, 8)))], None, "different numbers of queries"),
    ],
)
def test_inconsistent_expert_sets_are_refused(experts, fallback, message):
    with pytest.raises(ValueError, match=message):
        ExpertSet(experts, fallback=fallback)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domains": ("cars", "sneakers")}, "domains must be distinct names"),
        ({"queries": np.zeros((5, 4))}, r"queries must be \(n, D\) with the database's D = 8"),
        ({"train": np.zeros(8)}, r"train must be \(n, D\)"),
        ({"parameters": -1}, "non-negative"),
    ],
)
def test_bad_experts_are_refused(kwargs, message):
    fields = {"name": "x", "domains": (), "queries": np.zeros((5, 8)), "database": np.zeros((20, 8))} | kwargs
    with pytest.raises(ValueError, match=message):
        Expert(**fields)


def test_costs_count_what_an_expert_requires_once():
    experts = ExpertSet(
        [
            _expert("backbone", parameters=1000, embed_ms=10.0),
            _expert("head-a", ("cars",), parameters=10, embed_ms=0.5, requires=("backbone",)),
            _expert("head-b", ("sop",), parameters=20, embed_ms=0.25, requires=("backbone",)),
            _expert("timeless", ("met",), parameters=7),
        ]
    )
    assert experts.closure(["head-a", "head-b"]) == ["head-a", "head-b", "backbone"]
    assert experts.parameters(["head-a", "head-b"]) == 1030
    assert experts.embed_ms(["head-a"]) == 10.5
    assert experts.embed_ms(["head-a", "timeless"]) is None  # an unknown time makes the sum unknown


def test_index_views_hold_each_experts_database_and_their_bytes():
    experts = ExpertSet([_expert("a", ("cars",), dim=8), _expert("b", ("sop",), dim=3, seed=1)])
    index = ExpertIndex(experts)
    assert index.database.shape == (20, 11)
    np.testing.assert_array_equal(index.view("b"), experts["b"].database)
    assert np.shares_memory(index.view("a"), index.database)
    assert index.nbytes(["a"]) == 20 * 8 * 4 and index.nbytes(["a", "b"]) == 20 * 11 * 4
    scores, ids = index.search("b", experts["b"].queries, 4)
    expected = exact_top_k(experts["b"].queries, experts["b"].database, 4)
    np.testing.assert_array_equal(ids, expected[1])
    np.testing.assert_array_equal(scores, expected[0])


@settings(max_examples=25, deadline=None)
@given(
    dims=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    n_db=st.integers(1, 30),
    depth=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_routed_search_is_each_experts_search_for_hard_rows_and_the_exact_mixture_otherwise(dims, n_db, depth, seed):
    """A one-hot row ranks as its expert alone; a soft row ranks by Σ_e w_e <q_e, x_e> (brute force), ties by id."""
    rng = np.random.default_rng(seed)
    n_q = 6
    # Descriptors on a coarse grid make exact score ties common.
    experts = ExpertSet(
        [
            Expert(f"e{i}", ("cars",) if i == 0 else (), rng.integers(-2, 3, (n_q, d)), rng.integers(-2, 3, (n_db, d)))
            for i, d in enumerate(dims)
        ]
    )
    index = ExpertIndex(experts)
    queries = [experts[n].queries.astype(np.float32) for n in experts.names]
    weights = rng.dirichlet(np.ones(len(dims)), n_q).astype(np.float32)
    weights[0] = np.eye(len(dims))[-1]
    weights[1] = np.eye(len(dims))[0]
    if len(dims) > 2:
        weights[2] = [0.5, 0, 0.5] + [0] * (len(dims) - 3)  # a mixture skipping the middle expert
    weights /= weights.sum(1, keepdims=True)
    scores, ids = index.search_routed(weights, queries, depth)
    k = min(depth, n_db)
    assert scores.shape == ids.shape == (n_q, k)
    for i in range(n_q):
        brute = sum(
            weights[i, e].astype(np.float64) * (experts[n].database @ queries[e][i].astype(np.float64))
            for e, n in enumerate(experts.names)
            if weights[i, e] > 0
        )
        if weights[i].max() == 1:
            e = int(weights[i].argmax())
            alone = index.search(experts.names[e], queries[e][i : i + 1], depth)
            np.testing.assert_array_equal(ids[i], alone[1][0])
        order = np.lexsort((np.arange(n_db), -np.round(brute, 5)))[:k]
        np.testing.assert_allclose(scores[i], brute[ids[i]], atol=1e-5)
        np.testing.assert_allclose(np.sort(brute[ids[i]])[::-1], brute[order], atol=1e-5)
        np.testing.assert_array_equal(ids[i], order)


def test_routed_search_refuses_weights_that_are_not_a_distribution():
    experts = ExpertSet([_expert("a", ("cars",)), _expert("b", ("sop",), seed=1)])
    index = ExpertIndex(experts)
    queries = [experts["a"].queries, experts["b"].queries]
    with pytest.raises(ValueError, match="non-negative rows summing to 1"):
        index.search_routed(np.full((5, 2), 0.7), queries, 3)
    with pytest.raises(ValueError, match=r"need weights \(n, 2\)"):
        index.search_routed(np.ones((5, 1)), queries, 3)
