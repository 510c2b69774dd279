"""The outcome of one evaluation, shared by the revisited pipeline and the universal benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class EvalResult:
    """What one evaluation produced (a revisited one, :mod:`irlib.eval.pipeline`, or a universal benchmark,
    :mod:`irlib.eval.universal`).

    Attributes:
        metrics: the content of ``metrics.json`` (metrics in percent, settings).
        per_query: per query (rows, by query name): revisited AP in percent per protocol (columns; NaN = no
            positive), or a benchmark's per-query values.
        queries: query descriptors ``(n_queries, D)``.
        database: database descriptors ``(n_db, D)``; with distractor features a :class:`StackedDatabase` of the
            test descriptors and the memory-mapped distractors.
        scores: exact search: ``(n_queries, n_db)`` scores whose descending order (ties by lower id) is the ranking
            (after reranking, when one was chosen); None with a shortlist search.
        ranks: ``(n_queries, L)`` database ids, best first: a revisited shortlist search (``"faiss-flat"``,
            ``"ivfpq"``, after reranking) or a universal benchmark's top-``depth``; None for a revisited exact search.
    """

    metrics: dict[str, Any]
    per_query: pd.DataFrame
    queries: np.ndarray
    database: np.ndarray
    scores: np.ndarray | None
    ranks: np.ndarray | None = None
