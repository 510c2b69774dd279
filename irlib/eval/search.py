"""Nearest-neighbour search of query descriptors in a database by inner product (cosine on L2-normalised input)."""

from __future__ import annotations

import faiss
import numpy as np


def _as_f32(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def similarity(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Full score matrix ``(n_queries, n_db)`` = ``queries @ database.T`` in float32 (fp16 input is upcast)."""
    q, x = _as_f32("queries", queries), _as_f32("database", database)
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"descriptor sizes differ: queries {q.shape[1]}, database {x.shape[1]}")
    return q @ x.T


def knn(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product with faiss ``IndexFlatIP``.

    Returns:
        ``(scores, ids)``, both ``(n_queries, min(k, n_db))``, best first. Equal scores may come in any order
        (use :func:`similarity` with ``evaluate(scores=...)`` when ties must rank by database index).
    """
    q, x = _as_f32("queries", queries), _as_f32("database", database)
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"descriptor sizes differ: queries {q.shape[1]}, database {x.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    scores, ids = index.search(q, min(k, x.shape[0]))
    return scores, ids
