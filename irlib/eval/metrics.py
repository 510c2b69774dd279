"""Retrieval metrics other than the revisited protocol."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def gldv2_map_at_k(
    predictions: Mapping[str, Sequence[str]],
    solution: Mapping[str, Sequence[str]],
    k: int = 100,
    *,
    ignored: Iterable[str] = (),
) -> float:
    """Google Landmarks v2 retrieval mAP@k (DELF ``metrics.MeanAveragePrecision``, the challenge metric at k=100).

    For each query of ``solution``, walk the first ``k`` predicted index ids; a correct id at 1-based position i adds
    ``hits / i``; ids already predicted are skipped but still occupy their position. The sum is divided by
    ``min(len(solution[q]), k)`` (the list's length, repeated ids included, as DELF does), and the mean is over all
    solution queries (a query without predictions scores 0).

    Args:
        predictions: query id -> ranked index ids.
        solution: query id -> relevant index ids (Public and/or Private queries; ``Ignored`` rows left out).
        k: how many predictions count.
        ignored: test ids whose predictions are skipped, like DELF ``dataset_file_io.ReadPredictions`` skips the
            ``Ignored`` rows (e.g. every test id not in ``solution``). Any other predicted id that is not in
            ``solution`` raises ValueError, as in DELF.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if not solution:
        raise ValueError("the solution holds no query")
    ignored = set(ignored)
    scored_and_ignored = ignored.intersection(solution)
    if scored_and_ignored:
        raise ValueError(
            f"{len(scored_and_ignored)} ignored ids are solution queries, e.g. {min(scored_and_ignored)!r}"
        )
    unknown = [q for q in predictions if q not in solution and q not in ignored]
    if unknown:
        raise ValueError(
            f"{len(unknown)} predicted queries are not in the solution, e.g. {unknown[0]!r} "
            "(pass the Ignored test ids as ignored= to skip them)"
        )
    total = 0.0
    for query, relevant in solution.items():
        if not relevant:
            raise ValueError(f"solution query {query!r} has no relevant image")
        relevant_set = set(relevant)
        seen: set[str] = set()
        hits = 0
        ap = 0.0
        for i, image in enumerate(predictions.get(query, ())[:k], start=1):
            if image in seen:
                continue
            seen.add(image)
            if image in relevant_set:
                hits += 1
                ap += hits / i
        total += ap / min(len(relevant), k)
    return total / len(solution)


def uned_metrics(
    scores_or_ranks: ArrayLike,
    query_labels: ArrayLike | Sequence[Any],
    query_domains: ArrayLike,
    index_labels: ArrayLike | Sequence[Any],
    index_domains: ArrayLike,
    *,
    throw_first: bool,
    k: int = 5,
    ranks: bool = False,
) -> dict[str, float]:
    """UnED R@1 and mMP@k of one query set (Universal-Image-Embeddings ``knn_utils.py`` ``compute_knn_metrics``;
    ``datasets.md`` §6.3), as fractions in [0, 1]. For the benchmark number use :func:`uned_merged_metrics`.

    Conventions:

    - ``scores_or_ranks`` is a ``(n_q, n_db)`` similarity matrix (higher is better; the exact top ``k + throw_first``
      is taken, ties broken by the lower index id) or, with ``ranks=True``, ``(n_q, m)`` index ids, best first, with
      ``m >= min(k + throw_first, n_db)``.
    - A neighbour is correct when it has one of the query's labels **and** its domain (the merged protocol); a label
      shared by two domains is neither a hit nor counted as relevant across them. Domains are a 1-D array of ints or
      strings. Labels are a 1-D array of ints or strings, or a sequence whose query items may also be a list/tuple of
      labels (a multi-label ``class_id``): as in the reference, a neighbour is a hit when it matches any of them, and
      the query's relevant count is the **sum** of the index counts of its labels (a repeated label counts twice).
      An index item must have one label (the reference counts index labels with a ``Counter``); a one-element list
      is that label.
    - ``throw_first`` (query split = index split, the query is in the index): the first neighbour is taken to be the
      query itself, whatever it is, as in the reference. R@1 then scores the 2nd neighbour.
    - MP@k of a query: with ``n_same`` its relevant count in the index, the correct neighbours among the first
      ``min(k + throw_first, n_same)``, minus ``throw_first``, divided by ``min(n_same - throw_first, k)``. A query
      without a relevant index item raises ValueError. Both metrics are means over all queries.
    """
    q, db = _UnedQueries.parse(query_labels, query_domains), _UnedIndex.parse(index_labels, index_domains)
    t = int(throw_first)
    nn = _neighbours(scores_or_ranks, q.n, db.n, k, t, ranks)
    r1, mp = _uned_per_query(nn, q, db, np.arange(q.n), t, k)
    return {"R@1": float(r1.mean()), f"mMP@{k}": float(mp.mean())}


def uned_merged_metrics(
    scores_or_ranks: ArrayLike,
    query_labels: ArrayLike | Sequence[Any],
    query_domains: ArrayLike,
    index_labels: ArrayLike | Sequence[Any],
    index_domains: ArrayLike,
    throw_first: Mapping[Any, bool],
    *,
    k: int = 5,
    ranks: bool = False,
    decimals: int | None = None,
) -> dict[str, float]:
    """The UnED benchmark: every domain's queries against the merged index of all domains, R@1 and mMP@k per domain
    and their unweighted mean over the query domains (Universal-Image-Embeddings ``knn_utils.run_merged_knn``).

    ``scores_or_ranks`` is ``(n_q, n_db)`` scores or, with ``ranks=True``, ``(n_q, m)`` index ids, best first, with
    ``m >= min(k + 1, n_db)`` when some domain throws its first neighbour (``m >= min(k, n_db)`` otherwise).
    ``throw_first[d]`` is whether domain d's query split is its index split (its queries are in the index, see
    :data:`irlib.data.uned.KNN_SPLITS`); each domain is scored with its own value, with the label and domain rules of
    :func:`uned_metrics` (:class:`irlib.data.uned.UnEDKnn` gives all these inputs).

    Returns ``{"R@1", "mMP@k"}`` (means over domains) then ``{"<domain>/R@1", "<domain>/mMP@k"}`` for each query
    domain in order of first appearance, as fractions. ``decimals=3`` reproduces the reference's reported numbers:
    each domain's value rounded (``np.round``), their mean rounded again; ``None`` keeps full precision.
    """
    q, db = _UnedQueries.parse(query_labels, query_domains), _UnedIndex.parse(index_labels, index_domains)
    domains = list(dict.fromkeys(q.domains.tolist()))
    if not domains:
        raise ValueError("there is no query")
    missing = [d for d in domains if d not in throw_first]
    if missing:
        raise ValueError(f"throw_first has no entry for query domains {missing}")
    throws = {d: int(bool(throw_first[d])) for d in domains}
    nn = _neighbours(scores_or_ranks, q.n, db.n, k, max(throws.values(), default=0), ranks)
    per_domain: dict[str, float] = {}
    means: dict[str, list[float]] = {"R@1": [], f"mMP@{k}": []}
    for d in domains:
        rows = np.flatnonzero(q.domains == d)
        t = throws[d]
        r1, mp = _uned_per_query(nn[rows, : min(k + t, db.n)], q, db, rows, t, k)
        for name, values in (("R@1", r1), (f"mMP@{k}", mp)):
            per_domain[f"{d}/{name}"] = _rounded(values.mean(), decimals)
            means[name].append(per_domain[f"{d}/{name}"])
    return {name: _rounded(np.mean(values), decimals) for name, values in means.items()} | per_domain


def _rounded(x: float, decimals: int | None) -> float:
    return float(x) if decimals is None else float(np.round(x, decimals))


class _UnedQueries:
    """Query label sets: ``values`` ``(n, L)`` padded with each row's first label, ``valid`` marks the real ones."""

    def __init__(self, values: np.ndarray, valid: np.ndarray, domains: np.ndarray) -> None:
        self.values, self.valid, self.domains, self.n = values, valid, domains, len(domains)

    @classmethod
    def parse(cls, labels: ArrayLike | Sequence[Any], domains: ArrayLike) -> _UnedQueries:
        values, valid = _label_sets(labels, "query_labels")
        return cls(values, valid, _domains(domains, len(values), "query"))


class _UnedIndex:
    """Index labels and domains, and the number of index items of each ``(label, domain)``."""

    def __init__(self, labels: np.ndarray, domains: np.ndarray) -> None:
        self.labels, self.domains, self.n = labels, domains, len(labels)
        self.counts = Counter(zip(labels.tolist(), domains.tolist(), strict=True))

    @classmethod
    def parse(cls, labels: ArrayLike | Sequence[Any], domains: ArrayLike) -> _UnedIndex:
        values, valid = _label_sets(labels, "index_labels")
        multi = np.flatnonzero(valid.sum(axis=1) > 1)
        if multi.size:
            raise ValueError(
                f"index_labels[{multi[0]}] has {valid[multi[0]].sum()} labels; an index item must have one "
                "(the reference counts index labels with a Counter and cannot score a multi-label index item)"
            )
        return cls(values[:, 0], _domains(domains, len(values), "index"))


def _label_sets(labels: ArrayLike | Sequence[Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, valid)``, both ``(n, L)``, from a 1-D label array or a sequence of labels and label lists."""
    if isinstance(labels, np.ndarray) and labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {labels.shape}")
    try:
        flat = np.asarray(labels)
    except ValueError:  # ragged: some items are label lists
        flat = None
    if flat is not None and flat.ndim == 1 and flat.dtype != object:
        return flat[:, None], np.ones((len(flat), 1), dtype=bool)
    rows = [tuple(x) if isinstance(x, (list, tuple, np.ndarray)) else (x,) for x in labels]
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"{name}[{i}] is an empty label list")
    width = max(map(len, rows), default=1)
    values = np.asarray([row + (row[0],) * (width - len(row)) for row in rows])
    if values.ndim != 2:
        raise ValueError(f"{name} must hold labels or flat lists of labels")
    valid = np.arange(width) < np.asarray([len(row) for row in rows], dtype=np.int64)[:, None]
    return values, valid


def _domains(domains: ArrayLike, n: int, side: str) -> np.ndarray:
    out = np.asarray(domains)
    if out.ndim != 1 or len(out) != n:
        raise ValueError(f"{side}_domains must be 1-D with one domain per {side} item ({n}), got shape {out.shape}")
    return out


def _neighbours(scores_or_ranks: ArrayLike, n_q: int, n_db: int, k: int, t: int, ranks: bool) -> np.ndarray:
    """``(n_q, min(k + t, n_db))`` index ids, best first, from scores (exact top, ties by lower id) or given ranks."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    depth = min(k + t, n_db)
    if not ranks:
        return top_k_ids(_score_matrix(scores_or_ranks, n_q, n_db), depth)
    nn = np.asarray(scores_or_ranks)
    if nn.ndim != 2 or nn.shape[0] != n_q or nn.shape[1] < depth or not np.issubdtype(nn.dtype, np.integer):
        raise ValueError(f"ranks must be an integer ({n_q}, >= {depth}) array, got {nn.dtype} {nn.shape}")
    nn = nn[:, :depth]
    if nn.size and (nn.min() < 0 or nn.max() >= n_db):
        raise ValueError(f"ranks must be index ids in [0, {n_db})")
    return nn


def _uned_per_query(
    nn: np.ndarray, q: _UnedQueries, db: _UnedIndex, rows: np.ndarray, t: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query R@1 hits and MP@k of queries ``rows`` (``knn_utils.py`` ``compute_knn_metrics``); ``nn`` is
    ``(len(rows), min(k + t, n_db))``."""
    values, valid, domains = q.values[rows], q.valid[rows], q.domains[rows]
    n_same = np.array(
        [
            sum(db.counts[(label, d)] for label, ok in zip(labs, oks, strict=True) if ok)
            for labs, oks, d in zip(values.tolist(), valid.tolist(), domains.tolist(), strict=True)
        ],
        dtype=np.int64,
    )
    n_relevant = n_same - t
    if (n_relevant < 1).any():
        i = int(np.argmax(n_relevant < 1))
        labels = values[i][valid[i]].tolist()
        raise ValueError(
            f"query {rows[i]} (label {labels[0] if len(labels) == 1 else labels!r}, domain {domains[i].item()!r}) "
            "has no relevant index item" + (" besides itself" if t else "")
        )
    same_label = ((db.labels[nn][:, :, None] == values[:, None, :]) & valid[:, None, :]).any(axis=2)
    correct = same_label & (db.domains[nn] == domains[:, None])
    looked = np.minimum(nn.shape[1], n_same)
    mp = (np.cumsum(correct, axis=1)[np.arange(len(rows)), looked - 1] - t) / np.minimum(n_relevant, k)
    return correct[:, t], mp


def ilias_map_at_k(
    scores: ArrayLike,
    positives: Sequence[Iterable[int]],
    k: int = 1000,
    *,
    ids: ArrayLike | None = None,
    percent: bool = False,
) -> float:
    """ILIAS mAP@k (``evaluation/src/dataset.py`` ``_compute_AP``; ``datasets.md`` §7.4), default k=1000.

    Two input forms, with identical results:

    - dense: ``scores`` is ``(n_q, n_db)`` (higher is better);
    - top-m lists (the official pickle's ``sims``/``ranks``, without a dense matrix): ``scores`` is ``(n_q, m)``
      and ``ids`` the ``(n_q, m)`` database ids they belong to, in any order, distinct within a row.

    ``positives[q]`` are the database ids relevant to query q. The top ``k`` are taken by descending score, ties
    broken by the lower database id (in the reference, a tie across the k-th place of a longer list is cut in
    argsort order). A query without a hit there scores 0; otherwise ``AP@k = sum over hits of precision@rank /
    min(k, |positives|)``, where, like sklearn's ``average_precision_score`` in the reference, tied scores form one
    group and each hit in it gets the precision at the group's last rank. Returns the mean over queries, times 100
    with ``percent``.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    n_q = len(positives)
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_q, n_db) or (n_q, m), got shape {s.shape}")
    s = _score_matrix(s, n_q, s.shape[1])
    n_db = s.shape[1] if ids is None else None
    if ids is None:
        top = top_k_ids(s, min(k, s.shape[1]))
    else:
        db_ids = np.asarray(ids)
        if db_ids.shape != s.shape or not np.issubdtype(db_ids.dtype, np.integer):
            raise ValueError(f"ids must be an integer {s.shape} array like scores, got {db_ids.dtype} {db_ids.shape}")
        if db_ids.size and db_ids.min() < 0:
            raise ValueError("ids must be database ids >= 0")
        ordered = np.sort(db_ids, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if repeated.any():
            raise ValueError(f"ids of query {int(np.argmax(repeated))} repeat a database id")
        top = np.lexsort((db_ids, -s), axis=1)[:, :k]  # columns of s, best first
    ranked = np.take_along_axis(s, top, axis=1)
    if ids is not None:
        top = np.take_along_axis(db_ids, top, axis=1)
    aps = np.zeros(n_q)
    for q in range(n_q):
        gt = np.unique(np.asarray(list(positives[q]), dtype=np.int64))
        if not gt.size:
            raise ValueError(f"query {q} has no positive")
        if gt[0] < 0 or (n_db is not None and gt[-1] >= n_db):
            bounds = f"in [0, {n_db})" if n_db is not None else ">= 0"
            raise ValueError(f"positives of query {q} must be database ids {bounds}")
        hit = np.isin(top[q], gt)
        if not hit.any():
            continue
        ends = np.flatnonzero(np.r_[ranked[q, 1:] != ranked[q, :-1], True])
        precision_at_end = np.cumsum(hit)[ends] / (ends + 1)
        group = np.searchsorted(ends, np.arange(len(hit)))
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
    if m == 0:
        return np.empty((len(scores), 0), dtype=np.int64)
    if m >= n:
        return np.argsort(-scores, axis=1, kind="stable")
    thresholds = np.partition(scores, n - m, axis=1)[:, n - m]
    out = np.empty((len(scores), m), dtype=np.int64)
    for i, (row, threshold) in enumerate(zip(scores, thresholds, strict=True)):
        candidates = np.flatnonzero(row >= threshold)
        out[i] = candidates[np.lexsort((candidates, -row[candidates]))[:m]]
    return out
