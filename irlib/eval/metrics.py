"""Retrieval metrics other than the revisited protocol."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike


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


def uned_metrics(
    scores_or_ranks: ArrayLike,
    query_labels: ArrayLike,
    query_domains: ArrayLike,
    index_labels: ArrayLike,
    index_domains: ArrayLike,
    *,
    throw_first: bool,
    k: int = 5,
    ranks: bool = False,
) -> dict[str, float]:
    """UnED R@1 and mMP@k (Universal-Image-Embeddings ``knn_utils.py``; ``datasets.md`` §6.3), as fractions in [0, 1].

    Conventions:

    - ``scores_or_ranks`` is a ``(n_q, n_db)`` similarity matrix (higher is better; the exact top ``k + throw_first``
      is taken, ties broken by the lower index id) or, with ``ranks=True``, ``(n_q, m)`` index ids, best first, with
      ``m >= min(k + throw_first, n_db)``.
    - A neighbour is correct when it has the query's label **and** domain (the merged protocol); a label shared by two
      domains is neither a hit nor counted as relevant across them. Labels and domains are 1-D arrays of ints or
      strings; a multi-label ``class_id`` must be reduced to one label first.
    - ``throw_first`` (query split = index split, the query is in the index): the first neighbour is taken to be the
      query itself, whatever it is, as in the reference. R@1 then scores the 2nd neighbour.
    - MP@k of a query: with ``n_same`` the index items of its label and domain, the correct neighbours among the first
      ``min(k + throw_first, n_same)``, minus ``throw_first``, divided by ``min(n_same - throw_first, k)``. A query
      without a relevant index item raises ValueError. Both metrics are means over all queries.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    ql, qd, il, idom = (np.asarray(a) for a in (query_labels, query_domains, index_labels, index_domains))
    for name, arr in (("query_labels", ql), ("query_domains", qd), ("index_labels", il), ("index_domains", idom)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    n_q, n_db = len(ql), len(il)
    if len(qd) != n_q or len(idom) != n_db:
        raise ValueError(
            f"{n_q} query labels vs {len(qd)} query domains; {n_db} index labels vs {len(idom)} index domains"
        )
    t = int(throw_first)
    depth = min(k + t, n_db)
    if ranks:
        nn = np.asarray(scores_or_ranks)
        if nn.ndim != 2 or nn.shape[0] != n_q or nn.shape[1] < depth or not np.issubdtype(nn.dtype, np.integer):
            raise ValueError(f"ranks must be an integer ({n_q}, >= {depth}) array, got {nn.dtype} {nn.shape}")
        nn = nn[:, :depth]
        if nn.size and (nn.min() < 0 or nn.max() >= n_db):
            raise ValueError(f"ranks must be index ids in [0, {n_db})")
    else:
        nn = top_k_ids(_score_matrix(scores_or_ranks, n_q, n_db), depth)
    counts = Counter(zip(il.tolist(), idom.tolist(), strict=True))
    n_same = np.array([counts[key] for key in zip(ql.tolist(), qd.tolist(), strict=True)], dtype=np.int64)
    n_relevant = n_same - t
    if (n_relevant < 1).any():
        q = int(np.argmax(n_relevant < 1))
        raise ValueError(
            f"query {q} (label {ql[q].item()!r}, domain {qd[q].item()!r}) has no relevant index item"
            + (" besides itself" if throw_first else "")
        )
    correct = (il[nn] == ql[:, None]) & (idom[nn] == qd[:, None])
    cum = np.cumsum(correct, axis=1)
    looked = np.minimum(depth, n_same)
    mp = (cum[np.arange(n_q), looked - 1] - t) / np.minimum(n_relevant, k)
    return {"R@1": float(correct[:, t].mean()), f"mMP@{k}": float(mp.mean())}


def ilias_map_at_k(
    scores: ArrayLike, positives: Sequence[Iterable[int]], k: int = 1000, *, percent: bool = False
) -> float:
    """ILIAS mAP@k (``evaluation/src/dataset.py`` ``_compute_AP``; ``datasets.md`` §7.4), default k=1000.

    ``scores`` is ``(n_q, n_db)`` (higher is better) and ``positives[q]`` the database ids relevant to query q. The top
    ``k`` are taken exactly (ties broken by the lower database id). A query without a hit there scores 0; otherwise
    ``AP@k = sum over hits of precision@rank / min(k, |positives|)``, where, like sklearn's ``average_precision_score``
    in the reference, tied scores form one group and each hit in it gets the precision at the group's last rank.
    Returns the mean over queries, times 100 with ``percent``.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    n_q = len(positives)
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_q, n_db), got shape {s.shape}")
    s = _score_matrix(s, n_q, s.shape[1])
    n_db = s.shape[1]
    nn = top_k_ids(s, min(k, n_db))
    aps = np.zeros(n_q)
    for q in range(n_q):
        gt = np.unique(np.asarray(list(positives[q]), dtype=np.int64))
        if not gt.size:
            raise ValueError(f"query {q} has no positive")
        if gt[0] < 0 or gt[-1] >= n_db:
            raise ValueError(f"positives of query {q} must be database ids in [0, {n_db})")
        hit = np.isin(nn[q], gt)
        if not hit.any():
            continue
        ranked = s[q, nn[q]]
        ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
        precision_at_end = np.cumsum(hit)[ends] / (ends + 1)
        group = np.searchsorted(ends, np.arange(len(ranked)))
        aps[q] = precision_at_end[group][hit].sum() / min(k, len(gt))
    return float(aps.mean() * (100 if percent else 1))


def _score_matrix(scores: ArrayLike, n_q: int, n_db: int) -> np.ndarray:
    """Check a finite ``(n_q, n_db)`` score matrix; non-float scores become float64."""
    s = np.asarray(scores)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if s.shape != (n_q, n_db):
        raise ValueError(f"scores must have shape ({n_q}, {n_db}), got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s


def top_k_ids(scores: np.ndarray, m: int) -> np.ndarray:
    """``(n_q, m)`` column ids of each row's ``m`` largest scores, descending, ties broken by the lower id."""
    n = scores.shape[1]
    if m >= n:
        return np.argsort(-scores, axis=1, kind="stable")
    thresholds = np.partition(scores, n - m, axis=1)[:, n - m]
    out = np.empty((len(scores), m), dtype=np.int64)
    for i, (row, threshold) in enumerate(zip(scores, thresholds, strict=True)):
        candidates = np.flatnonzero(row >= threshold)
        out[i] = candidates[np.lexsort((candidates, -row[candidates]))[:m]]
    return out
