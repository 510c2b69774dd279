"""Exact search: faiss top-k agrees with the full score matrix."""

from __future__ import annotations

import numpy as np
import pytest

from irlib.eval.search import knn, similarity


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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
