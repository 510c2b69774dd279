"""Shared pieces of the evaluation tests: clustered unit descriptors and a single faiss thread."""

from __future__ import annotations

import faiss
import numpy as np
import pytest


def clustered(rng: np.random.Generator, n: int, d: int, centres: np.ndarray, spread: float = 0.35) -> np.ndarray:
    """``(n, d)`` float32 unit rows: random ``centres`` plus Gaussian noise of norm about ``spread``."""
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, d)).astype(np.float32) / d**0.5
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def one_faiss_thread():
    """faiss's OpenMP threads spin while waiting: on a busy 2-core machine PQ training ran 10-25x slower with two."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)
