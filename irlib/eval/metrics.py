"""Retrieval metrics other than the revisited protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def gldv2_map_at_k(
    predictions: Mapping[str, Sequence[str]], solution: Mapping[str, Sequence[str]], k: int = 100
) -> float:
    """Google Landmarks v2 retrieval mAP@k (DELF ``metrics.MeanAveragePrecision``, the challenge metric at k=100).

    For each query of ``solution``, walk the first ``k`` predicted index ids; a correct id at 1-based position i adds
    ``hits / i``; ids already predicted are skipped but still occupy their position. The sum is divided by
    ``min(|solution[q]|, k)``, and the mean is over all solution queries (a query without predictions scores 0).

    Args:
        predictions: query id -> ranked index ids.
        solution: query id -> relevant index ids (Public and/or Private queries; ``Ignored`` rows left out).
        k: how many predictions count.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if not solution:
        raise ValueError("the solution holds no query")
    unknown = [q for q in predictions if q not in solution]
    if unknown:
        raise ValueError(f"{len(unknown)} predicted queries are not in the solution, e.g. {unknown[0]!r}")
    total = 0.0
    for query, relevant in solution.items():
        if not relevant:
            raise ValueError(f"solution query {query!r} has no relevant image")
        relevant = set(relevant)
        seen: set[str] = set()
        hits = 0
        ap = 0.0
        for i, image in enumerate(predictions.get(query, ())[:k], start=1):
            if image in seen:
                continue
            seen.add(image)
            if image in relevant:
                hits += 1
                ap += hits / i
        total += ap / min(len(relevant), k)
    return total / len(solution)
