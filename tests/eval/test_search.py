"""Search: faiss top-k agrees with the full score matrix; chunked scores over fp16 memmaps; IVF-PQ recall."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from irlib.eval.search import (
    ShortlistSearch,
    StackedDatabase,
    build_index,
    database_scores,
    exact_top_k,
    knn,
    recall_at_k,
    refine,
    search_index,
    search_params,
    similarity,
    similarity_chunked,
)
from tests.eval.conftest import clustered


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 120),
    n_q=st.integers(1, 12),
    k=st.integers(1, 15),
    query_block=st.integers(1, 7),
    chunk=st.integers(1, 40),
    duplicates=st.integers(0, 40),
    seed=st.integers(0, 2**16),
)
def test_exact_top_k_is_the_stable_descending_order_of_exact_scores(n, n_q, k, query_block, chunk, duplicates, seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((n, 8)), 1).astype(np.float32)  # coarse values: many exact ties
    x[rng.integers(0, n, size=duplicates)] = x[0]  # identical rows must tie exactly, wherever they sit
    q = np.round(rng.standard_normal((n_q, 8)), 1).astype(np.float32)
    scores, ids = exact_top_k(q, x.astype(np.float16) if seed % 2 else x, k, query_block=query_block, chunk=chunk)
    x = x.astype(np.float16).astype(np.float32) if seed % 2 else x
    exact = (q.astype(np.float64) @ x.astype(np.float64).T).astype(np.float32)
    expected = np.argsort(-exact, axis=1, kind="stable")[:, : min(k, n)]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(scores, np.take_along_axis(exact, expected, axis=1))


def test_exact_top_k_reads_a_stacked_memory_mapped_database_and_names_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    x = _unit(rng, 300, 16)
    np.save(tmp_path / "x.npy", x[100:].astype(np.float16))
    stacked = StackedDatabase(x[:100], np.load(tmp_path / "x.npy", mmap_mode="r"))
    q = _unit(rng, 5, 16)
    _, ids = exact_top_k(q, stacked, 10, chunk=64)
    np.testing.assert_array_equal(ids, exact_top_k(q, np.concatenate([x[:100], np.asarray(stacked[100:])]), 10)[1])
    with pytest.raises(ValueError, match="descriptor sizes differ"):
        exact_top_k(q[:, :8], x, 3)
    with pytest.raises(ValueError, match="must be positive"):
        exact_top_k(q, x, 0)


def test_knn_equals_the_top_of_the_full_score_matrix():
    rng = np.random.default_rng(0)
    q, x = _unit(rng, 7, 32), _unit(rng, 500, 32)
    full = similarity(q, x)
    scores, ids = knn(q, x, k=20)
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :20])
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids, axis=1), rtol=1e-5, atol=1e-6)


def test_fp16_storage_is_upcast_and_k_is_capped():
    rng = np.random.default_rng(1)
    q, x = _unit(rng, 2, 8).astype(np.float16), _unit(rng, 5, 8).astype(np.float16)
    assert similarity(q, x).dtype == np.float32
    assert knn(q, x, k=50)[1].shape == (2, 5)


def test_mismatched_dimensions_are_named():
    with pytest.raises(ValueError, match="descriptor sizes differ"):
        similarity(np.zeros((1, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        knn(np.zeros(4), np.zeros((3, 4)), 1)


def test_chunked_scores_of_an_fp16_memmap_equal_the_fp32_score_matrix(tmp_path):
    rng = np.random.default_rng(2)
    q, x = _unit(rng, 7, 48), _unit(rng, 1001, 48).astype(np.float16)
    np.save(tmp_path / "db.npy", x)
    mapped = np.load(tmp_path / "db.npy", mmap_mode="r")
    full = similarity(q, x.astype(np.float32))
    for chunk in (1, 64, 1000, 5000):
        got = similarity_chunked(q, mapped, chunk=chunk)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, full, rtol=0, atol=1e-6)  # BLAS kernels may sum in another order
    with pytest.raises(ValueError, match="descriptor sizes differ"):
        similarity_chunked(q[:, :10], mapped)
    with pytest.raises(ValueError, match="chunk must be positive"):
        similarity_chunked(q, mapped, chunk=0)


def test_ivfpq_recall_at_100_against_exact_search_is_measured(one_faiss_thread):
    rng = np.random.default_rng(3)
    d = 64
    centres = _unit(rng, 40, d)
    x, q = clustered(rng, 20_000, d, centres).astype(np.float16), clustered(rng, 30, d, centres)
    _, exact = knn(q, x, k=100)
    assert recall_at_k(exact, exact) == 1.0
    np.testing.assert_array_equal(search_index(build_index(x, "flat", chunk=999), q, 100)[1], exact)
    options = {"nlist": 32, "m": 32, "nbits": 6, "train_size": 4000, "seed": 0, "chunk": 7000}
    index = build_index(x, "ivfpq", nprobe=1, **options)
    recalls = {}
    for nprobe in (1, 4):
        faiss.extract_index_ivf(index).nprobe = nprobe
        recalls[nprobe] = recall_at_k(search_index(index, q, 100)[1], exact)
    print(f"IVF-PQ recall@100 (nlist 32, m 32 x 6 bits): nprobe 1 {recalls[1]:.3f}, nprobe 4 {recalls[4]:.3f}")
    assert 0.5 < recalls[4] <= 1.0 and recalls[1] <= recalls[4]
    again = knn(q, x, k=100, index="ivfpq", nprobe=4, **options)[1]
    assert recall_at_k(again, exact) == recalls[4]  # the seeded sample and k-means make it reproducible
    refined = refine(q, x, search_index(index, q, 1000)[1], 100)[1]
    print(f"  a top-1000 shortlist re-scored exactly: recall@100 {recall_at_k(refined, exact):.3f}")
    assert recall_at_k(refined, exact) > recalls[4]


def test_refine_rescores_candidates_exactly_and_pads():
    rng = np.random.default_rng(5)
    q, x = _unit(rng, 3, 16), _unit(rng, 50, 16).astype(np.float16)
    full = similarity(q, x)
    cand = np.array([[4, 9, 1, -1], [7, 7, 3, 2], [0, 1, 2, 3]])
    scores, ids = refine(q, x, cand, k=3)
    for i, row in enumerate(cand):
        c = np.unique(row[row >= 0])
        best = c[np.argsort(-full[i, c], kind="stable")[:3]]
        np.testing.assert_array_equal(ids[i], best)
        np.testing.assert_allclose(scores[i], full[i, best], rtol=1e-6)
    scores, ids = refine(q, x, cand[:, :2], k=3)
    assert ids[1].tolist() == [7, -1, -1] and np.isneginf(scores[1, 1:]).all()


def test_index_options_and_recall_inputs_are_checked():
    x = _unit(np.random.default_rng(4), 300, 32)
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(x, "hnsw")
    with pytest.raises(ValueError, match="dim % m == 0"):
        build_index(x, "ivfpq", m=5)
    with pytest.raises(ValueError, match="too few"):
        build_index(x, "ivfpq", nlist=400, m=8, nbits=4)
    ids = np.array([[0, 1, 2, -1], [4, 5, 6, 7]])
    assert recall_at_k(ids, np.array([[2, 1, 0, 3], [7, 6, 9, 8]]), k=4) == (3 / 4 + 2 / 4) / 2
    with pytest.raises(ValueError, match="at least k columns"):
        recall_at_k(ids, ids, k=5)


def _stacked(tmp_path, rng, sizes, d=16):
    """A StackedDatabase of an in-memory float32 part and a float16 memory map, and its dense float32 copy."""
    head, tail = _unit(rng, sizes[0], d), _unit(rng, sizes[1], d).astype(np.float16)
    np.save(tmp_path / "tail.npy", tail)
    stacked = StackedDatabase(head, np.load(tmp_path / "tail.npy", mmap_mode="r"))
    return stacked, np.concatenate([head, tail.astype(np.float32)])


def test_stacked_scores_are_written_in_place_without_a_second_copy(tmp_path):
    import tracemalloc

    rng = np.random.default_rng(6)
    q = _unit(rng, 40, 16)
    stacked, dense = _stacked(tmp_path, rng, sizes=(20000, 40000))
    tracemalloc.start()
    got = database_scores(q, stacked)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(got, similarity(q, dense), rtol=0, atol=1e-6)
    assert got.shape == (40, 60000) and got.dtype == np.float32 and got.flags.c_contiguous
    # the output plus one pair of block buffers (0.9 MB); concatenating per-part matrices needs twice the output
    assert peak < 1.5 * got.nbytes, (peak, got.nbytes)
    with pytest.raises(ValueError, match="out must be float32 of shape"):
        similarity_chunked(q, dense, out=np.empty((40, 5), np.float32))


def test_stacked_database_rows_by_slice_and_faiss_search_over_it(tmp_path):
    rng = np.random.default_rng(7)
    stacked, dense = _stacked(tmp_path, rng, sizes=(50, 70))
    np.testing.assert_array_equal(stacked[40:65], dense[40:65])
    np.testing.assert_array_equal(stacked[110:500], dense[110:])
    with pytest.raises(IndexError, match="step 1"):
        stacked[::2]
    q = _unit(rng, 4, 16)
    search = ShortlistSearch(stacked, "faiss-flat", {"shortlist": 30})
    scores, ids, index_ids = search(q)
    full = similarity(q, dense)
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :30])
    np.testing.assert_array_equal(np.sort(index_ids, axis=1), np.sort(ids, axis=1))
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids, axis=1), rtol=1e-6)
    assert ShortlistSearch(stacked, "faiss-flat", {"shortlist": 500}).shortlist == 120  # capped at N


def test_search_parameters_are_completed_and_checked():
    assert search_params("exact") == {}
    assert search_params("faiss-flat", {"shortlist": 50}) == {"shortlist": 50}
    assert search_params("ivfpq", {"nprobe": 64})["nprobe"] == 64 and search_params("ivfpq")["nlist"] == 1024
    with pytest.raises(ValueError, match="unknown search 'hnsw'"):
        search_params("hnsw")
    with pytest.raises(ValueError, match="search 'exact' takes no parameters; unknown parameter.s. nprobe"):
        search_params("exact", {"nprobe": 4})
    with pytest.raises(ValueError, match="search parameter shortlist must be an integer >= 1, got 2.5"):
        search_params("faiss-flat", {"shortlist": 2.5})
    with pytest.raises(ValueError, match="a shortlist search is 'faiss-flat' or 'ivfpq'"):
        ShortlistSearch(np.zeros((3, 4), np.float32), "exact")
