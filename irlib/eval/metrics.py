"""Retrieval metrics other than the revisited protocol."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


UnedProtocol = Literal["merged", "separate"]
"""UnED kNN protocols (``knn_utils.py``): every domain's queries against the concatenated index of all domains
(``run_merged_knn``, the benchmark) or against their own domain's index only (``run_separate_knn``)."""


@dataclass(frozen=True, eq=False)
class UnedPerQuery:
    """Per-query UnED terms (Universal-Image-Embeddings ``knn_utils.py`` ``compute_knn_metrics``, lines 185-252),
    queries in input order.

    Attributes:
        k: the k of MP@k and AP@k.
        domains: ``(n_q,)`` query domains.
        r1: ``(n_q,)`` bool, the first neighbour kept after the thrown one is a hit (R@1).
        mp: ``(n_q,)`` float64 MP@k (line 244).
        ap: ``(n_q,)`` float64 AP@k: ``sum_{j=1..k} P@j * r[j] / min(n_rel, k)`` (line 252).
        n_rel: ``(n_q,)`` int64 relevant index items of the query, minus 1 when its domain throws its first neighbour.
        relevances: ``(n_q, k)`` bool ``r``, the hits among the ``k`` neighbours after the thrown one (False past
            the end of an index smaller than ``k + throw``).
    """

    k: int
    domains: np.ndarray
    r1: np.ndarray
    mp: np.ndarray
    ap: np.ndarray
    n_rel: np.ndarray
    relevances: np.ndarray

    def metrics(self, decimals: int | None = None) -> dict[str, float]:
        """``{"R@1", "mMP@k", "mAP@k"}``, unweighted means of the per-domain values, then ``"<domain>/<name>"`` for
        each query domain in order of first appearance (``run_merged_knn`` lines 632-656), as fractions.

        ``decimals=3`` reproduces the reference's reported numbers: each domain's mean rounded (``np.round``, line
        289-291), the mean of the rounded values rounded again; ``None`` keeps full precision.
        """
        means: dict[str, list[float]] = {"R@1": [], f"mMP@{self.k}": [], f"mAP@{self.k}": []}
        per_domain: dict[str, float] = {}
        for d in dict.fromkeys(self.domains.tolist()):
            rows = self.domains == d
            for name, values in zip(means, (self.r1, self.mp, self.ap), strict=True):
                per_domain[f"{d}/{name}"] = _rounded(values[rows].mean(), decimals)
                means[name].append(per_domain[f"{d}/{name}"])
        return {name: _rounded(np.mean(values), decimals) for name, values in means.items()} | per_domain


def uned_per_query(
    scores_or_ranks: ArrayLike,
    query_labels: ArrayLike | Sequence[Any],
    query_domains: ArrayLike,
    index_labels: ArrayLike | Sequence[Any],
    index_domains: ArrayLike,
    throw_first: bool | Mapping[Any, bool],
    *,
    k: int = 5,
    ranks: bool = False,
    protocol: UnedProtocol = "merged",
) -> UnedPerQuery:
    """Per-query UnED R@1 hits, MP@k, AP@k, relevant counts and relevances (``knn_utils.py`` ``compute_knn_metrics``;
    ``datasets.md`` §6.3) of queries searched in one index holding every domain (:class:`irlib.data.uned.UnEDKnn`
    gives all the inputs).

    Inputs:

    - ``scores_or_ranks``: a ``(n_q, n_db)`` similarity matrix (higher is better; the exact top ``k + throw`` is
      taken, ties broken by the lower index id, like ``jax.lax.top_k``) or, with ``ranks=True``, ``(n_q, m)`` index
      ids, best first. No dense matrix is needed with ranks.
    - ``throw_first``: one value for all queries, or one per query domain: whether the domain's query split is its
      index split (its queries are in the index); then the first neighbour is thrown, whatever it is, as in the
      reference, and R@1 scores the next one.
    - Labels and domains follow :func:`uned_metrics`: a hit needs one of the query's labels **and** its domain.
      Because of the domain check, per-domain label offsets never change a result.

    ``protocol``:

    - ``"merged"`` (the benchmark, ``run_merged_knn``): neighbours are taken from the whole index; ranks need
      ``m >= min(k + throw, n_db)``.
    - ``"separate"`` (``run_separate_knn``): each query only sees its own domain's index items. Scores of other
      domains are ignored; in ranks they are skipped, so a row must hold at least ``min(k + throw, n_domain)`` ids
      of the query's domain. Pass the ranks of a per-domain search shifted to index ids (``local + start of the
      domain``), or ranks of a search over the merged index deep enough to hold them.

    MP@k: with ``n_same`` the query's relevant count in the (domain's) index and ``t`` its throw, the hits among the
    first ``min(k + t, n_same)`` neighbours, minus ``t``, over ``min(n_same - t, k)``. AP@k: with ``r`` the hits of
    the ``k`` neighbours after the thrown one, ``sum_j P@j r[j] / min(n_same - t, k)``. A query without a relevant
    index item raises ValueError.
    """
    if protocol not in ("merged", "separate"):
        raise ValueError(f"protocol must be 'merged' or 'separate', got {protocol!r}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    q, db = _UnedQueries.parse(query_labels, query_domains), _UnedIndex.parse(index_labels, index_domains)
    domains = list(dict.fromkeys(q.domains.tolist()))
    if not domains:
        raise ValueError("there is no query")
    if isinstance(throw_first, Mapping):
        missing = [d for d in domains if d not in throw_first]
        if missing:
            raise ValueError(f"throw_first has no entry for query domains {missing}")
        throws = {d: int(bool(throw_first[d])) for d in domains}
    else:
        throws = dict.fromkeys(domains, int(bool(throw_first)))
    merged = protocol == "merged"
    if not ranks:
        data = _score_matrix(scores_or_ranks, q.n, db.n)
    else:
        data = _ranks(scores_or_ranks, q.n, db.n, min(k + max(throws.values()), db.n) if merged else 0)
    n_rel = _uned_relevant(q, db, np.array([throws[d] for d in q.domains.tolist()], dtype=np.int64))
    r1, mp, ap = np.zeros(q.n, dtype=bool), np.zeros(q.n), np.zeros(q.n)
    relevances = np.zeros((q.n, k), dtype=bool)
    for d in domains:
        rows, t = np.flatnonzero(q.domains == d), throws[d]
        cols = None if merged else np.flatnonzero(db.domains == d)
        depth = min(k + t, db.n if cols is None else len(cols))
        nn = _domain_neighbours(data, rows, cols, depth, ranks, db.domains, d)
        r1[rows], mp[rows], ap[rows], relevances[rows] = _uned_terms(nn, q, db, rows, t, k, n_rel[rows])
    return UnedPerQuery(k, q.domains, r1, mp, ap, n_rel, relevances)


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
    """UnED R@1, mMP@k and mAP@k of one query set, means over all its queries (Universal-Image-Embeddings
    ``knn_utils.py`` ``compute_knn_metrics``; ``datasets.md`` §6.3), as fractions in [0, 1]. For the benchmark
    numbers use :func:`uned_merged_metrics`.

    Conventions (see :func:`uned_per_query` for the inputs and the formulas):

    - ``scores_or_ranks`` is a ``(n_q, n_db)`` similarity matrix or, with ``ranks=True``, ``(n_q, m)`` index ids,
      best first, with ``m >= min(k + throw_first, n_db)``.
    - A neighbour is correct when it has one of the query's labels **and** its domain (the merged protocol); a label
      shared by two domains is neither a hit nor counted as relevant across them. Domains are a 1-D array of ints or
      strings. Labels are a 1-D array of ints or strings, or a sequence whose query items may also be a list/tuple of
      labels (a multi-label ``class_id``): as in the reference, a neighbour is a hit when it matches any of them, and
      the query's relevant count is the **sum** of the index counts of its labels (a repeated label counts twice).
      An index item must have one label (the reference counts index labels with a ``Counter``); a one-element list
      is that label.
    - ``throw_first`` (query split = index split, the query is in the index): the first neighbour is taken to be the
      query itself, whatever it is, as in the reference. R@1 then scores the 2nd neighbour.
    """
    out = uned_per_query(
        scores_or_ranks, query_labels, query_domains, index_labels, index_domains, throw_first, k=k, ranks=ranks
    )
    return {"R@1": float(out.r1.mean()), f"mMP@{k}": float(out.mp.mean()), f"mAP@{k}": float(out.ap.mean())}


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
    """The UnED benchmark: every domain's queries against the merged index of all domains, R@1, mMP@k and mAP@k per
    domain and their unweighted mean over the query domains (Universal-Image-Embeddings ``knn_utils.run_merged_knn``).

    ``scores_or_ranks`` is ``(n_q, n_db)`` scores or, with ``ranks=True``, ``(n_q, m)`` index ids, best first, with
    ``m >= min(k + 1, n_db)`` when some domain throws its first neighbour (``m >= min(k, n_db)`` otherwise).
    ``throw_first[d]`` is whether domain d's query split is its index split (its queries are in the index, see
    :data:`irlib.data.uned.KNN_SPLITS`); each domain is scored with its own value, with the label and domain rules of
    :func:`uned_metrics` (:class:`irlib.data.uned.UnEDKnn` gives all these inputs).

    Returns ``{"R@1", "mMP@k", "mAP@k"}`` (means over domains) then ``{"<domain>/R@1", "<domain>/mMP@k",
    "<domain>/mAP@k"}`` for each query domain in order of first appearance, as fractions. ``decimals=3`` reproduces
    the reference's reported numbers (see :meth:`UnedPerQuery.metrics`); ``None`` keeps full precision.
    """
    return uned_per_query(
        scores_or_ranks, query_labels, query_domains, index_labels, index_domains, throw_first, k=k, ranks=ranks
    ).metrics(decimals)


def uned_separate_metrics(
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
    """UnED's "separate" protocol: each domain's queries against its own index only (``knn_utils.run_separate_knn``),
    reported like :func:`uned_merged_metrics`. The inputs are the merged index's, as for the merged protocol: scores
    of other domains are ignored and their ids skipped in ranks, so per-domain searches can be passed as ranks
    shifted to merged index ids (see :func:`uned_per_query`)."""
    return uned_per_query(
        scores_or_ranks,
        query_labels,
        query_domains,
        index_labels,
        index_domains,
        throw_first,
        k=k,
        ranks=ranks,
        protocol="separate",
    ).metrics(decimals)


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


def _ranks(ranks: ArrayLike, n_q: int, n_db: int, width: int) -> np.ndarray:
    """Check ``(n_q, >= width)`` integer index ids in ``[0, n_db)``."""
    nn = np.asarray(ranks)
    if nn.ndim != 2 or nn.shape[0] != n_q or nn.shape[1] < width or not np.issubdtype(nn.dtype, np.integer):
        raise ValueError(f"ranks must be an integer ({n_q}, >= {width}) array, got {nn.dtype} {nn.shape}")
    if nn.size and (nn.min() < 0 or nn.max() >= n_db):
        raise ValueError(f"ranks must be index ids in [0, {n_db})")
    return nn


def _domain_neighbours(
    data: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray | None,
    depth: int,
    ranks: bool,
    index_domains: np.ndarray,
    domain: Any,
) -> np.ndarray:
    """``(len(rows), depth)`` index ids, best first, of queries ``rows`` among all index items or only ``cols`` (the
    query domain's, then ``domain``'s items are moved to the front of given ranks, in order)."""
    if not ranks:
        if cols is None:
            return top_k_ids(data[rows], depth)
        return cols[top_k_ids(data[np.ix_(rows, cols)], depth)]
    nn = data[rows]
    if cols is not None:
        own = index_domains[nn] == domain
        short = np.flatnonzero(own.sum(axis=1) < depth)
        if short.size:
            raise ValueError(
                f"ranks of query {rows[short[0]]} hold {own[short[0]].sum()} ids of its domain {domain!r}; the "
                f"separate protocol needs {depth} (search the domain's own index, or deeper)"
            )
        nn = np.take_along_axis(nn, np.argsort(~own, axis=1, kind="stable"), axis=1)
    return nn[:, :depth]


def _uned_relevant(q: _UnedQueries, db: _UnedIndex, t: np.ndarray) -> np.ndarray:
    """``(n_q,)`` relevant index counts ``n_same - t`` of the queries, ``t`` ``(n_q,)`` their throws; ValueError
    naming the first query that has none."""
    values, valid, domains = q.values, q.valid, q.domains
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
            f"query {i} (label {labels[0] if len(labels) == 1 else labels!r}, domain {domains[i].item()!r}) "
            "has no relevant index item" + (" besides itself" if t[i] else "")
        )
    return n_relevant


def _uned_terms(
    nn: np.ndarray, q: _UnedQueries, db: _UnedIndex, rows: np.ndarray, t: int, k: int, n_rel: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """R@1 hits, MP@k, AP@k ``(len(rows),)`` and relevances ``(len(rows), k)`` of queries ``rows`` from their
    neighbours ``nn`` ``(len(rows), min(k + t, n_index))`` (``knn_utils.py`` lines 185-252)."""
    values, valid, domains = q.values[rows], q.valid[rows], q.domains[rows]
    same_label = ((db.labels[nn][:, :, None] == values[:, None, :]) & valid[:, None, :]).any(axis=2)
    correct = same_label & (db.domains[nn] == domains[:, None])
    denominator = np.minimum(n_rel, k)
    looked = np.minimum(nn.shape[1], n_rel + t)
    mp = (np.cumsum(correct, axis=1)[np.arange(len(rows)), looked - 1] - t) / denominator
    relevances = np.zeros((len(rows), k), dtype=bool)
    relevances[:, : nn.shape[1] - t] = correct[:, t : t + k]
    precision = np.cumsum(relevances, axis=1) / np.arange(1, k + 1)
    ap = (precision * relevances).sum(axis=1) / denominator
    return correct[:, t], mp, ap, relevances


ILIAS_CLUTTER_GROUPS: tuple[tuple[float, float], ...] = ((0, 18), (18, 33), (33, 53), (53, float("inf")))
"""ILIAS clutter groups ``[t1, t2)`` of the positives' clutter value (``evaluation/src/dataset.py`` line 8)."""
ILIAS_SCALE_GROUPS: tuple[tuple[float, float], ...] = (
    (0, 0.06880213760855043),
    (0.06880213760855043, 0.13526567164179104),
    (0.13526567164179104, 0.2729876723163842),
    (0.2729876723163842, float("inf")),
)
"""ILIAS scale groups ``[t1, t2)`` of the positives' scale value (``evaluation/src/dataset.py`` lines 9-14)."""


def ilias_map_at_k(
    scores: ArrayLike,
    positives: Sequence[Iterable[int]],
    k: int = 1000,
    *,
    ids: ArrayLike | None = None,
    percent: bool = False,
) -> float:
    """ILIAS mAP@k (``evaluation/src/dataset.py`` ``_compute_AP``; ``datasets.md`` §7.4), default k=1000. For the
    official report (per-query APs, oracle, scale, clutter and category breakdowns) use :func:`ilias_report`.

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
    top, ranked = _ilias_ranked(scores, n_q, k, ids)
    n_db = np.asarray(scores).shape[1] if ids is None else None
    aps = np.zeros(n_q)
    for q in range(n_q):
        gt = np.unique(np.asarray(list(positives[q]), dtype=np.int64))
        if not gt.size:
            raise ValueError(f"query {q} has no positive")
        if gt[0] < 0 or (n_db is not None and gt[-1] >= n_db):
            bounds = f"in [0, {n_db})" if n_db is not None else ">= 0"
            raise ValueError(f"positives of query {q} must be database ids {bounds}")
        aps[q] = _ilias_ap(top[q], ranked[q], gt, len(gt), k)[0]
    return float(aps.mean() * (100 if percent else 1))


@dataclass(frozen=True, eq=False)
class IliasReport:
    """The official ILIAS evaluation report (``evaluation/src/dataset.py`` ``evaluate(report=True)``), in percent.

    Attributes:
        aps: ``(n_q,)`` AP@k of each query.
        map: mean of ``aps``.
        oracle: mean over queries of ``hits in the top k / len(top k) * k / |gt|`` (0 without a hit).
        scale, clutter: group key ``f"{t1}-{t2}"`` -> mean AP@k over the queries with a positive in the group,
            for the groups that have one, in :data:`ILIAS_SCALE_GROUPS` / :data:`ILIAS_CLUTTER_GROUPS` order.
        categories, subcategories: category (``"c"``) or ``"c-sc"`` -> mean over its instances of the mean AP@k of
            the instance's queries, in order of first appearance.
        scale_aps, clutter_aps: ``(n_q, 4)`` AP@k of each query in each group, NaN where it has no positive there.
    """

    aps: np.ndarray
    map: float
    oracle: float
    scale: dict[str, float]
    clutter: dict[str, float]
    categories: dict[str, float]
    subcategories: dict[str, float]
    scale_aps: np.ndarray
    clutter_aps: np.ndarray


def ilias_report(
    scores: ArrayLike,
    query_ids: Sequence[str],
    db_ids: Sequence[str],
    positive_info: Mapping[str, tuple[float, int]],
    taxonomy: Mapping[str, Mapping[str, Mapping[str, Sequence[str]]]],
    *,
    k: int = 1000,
    ids: ArrayLike | None = None,
) -> IliasReport:
    """ILIAS mAP@k with the official report: per-query APs, oracle, per scale and clutter group, per category and
    subcategory (``evaluation/src/dataset.py`` ``_compute_AP``, ``_per_scale``, ``_per_clutter``,
    ``_evaluate_pkl``, lines 83-225; ``datasets.md`` §7.4).

    Inputs:

    - ``scores``: ``(n_q, len(db_ids))`` dense scores, or ``(n_q, m)`` top-m lists with ``ids`` the ``(n_q, m)``
      indices into ``db_ids`` they belong to (any order, distinct within a row), as :func:`ilias_map_at_k`.
      The groups remove the other groups' positives from the ranking and keep k, so lists of
      ``m >= k + |gt|`` items (or the whole database) give the dense results; shorter lists give what the official
      code gives on those lists.
    - ``query_ids``: ``"<instance>/..."`` ids (the instance is ``id.split("/")[0]``); ``db_ids``: distinct ids.
    - ``positive_info``: positive id -> ``(scale, clutter)`` (:class:`irlib.data.ilias.IliasIdFiles`). An instance's
      ground truth is all its positives here (``dataset.py`` lines 54-56), including any missing from ``db_ids``.
    - ``taxonomy``: ``{category: {subcategory: {subsubcategory: [instances]}}}`` (``misc/taxonomy.json``).

    Per query AP@k is the :func:`ilias_map_at_k` value (sklearn's grouping of tied scores). A scale or clutter group
    ``[t1, t2)`` drops the positives outside it from the ranking and from the ground truth and scores the query
    again with the same k, if it has a positive in the group. A query whose instance has no positive or no place in
    the taxonomy raises ValueError.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    n_q, n_db = len(query_ids), len(db_ids)
    if not n_q:
        raise ValueError("there is no query")
    position = {image_id: i for i, image_id in enumerate(db_ids)}
    if len(position) != n_db:
        repeated = next(x for x, n in Counter(db_ids).items() if n > 1)
        raise ValueError(f"db_ids must be distinct; {repeated!r} is listed more than once")
    gt: dict[str, list[str]] = {}
    for image_id in positive_info:
        gt.setdefault(image_id.split("/")[0], []).append(image_id)
    places = _ilias_taxonomy(taxonomy)
    instances = [query_id.split("/")[0] for query_id in query_ids]
    for query_id, instance in zip(query_ids, instances, strict=True):
        if instance not in gt:
            raise ValueError(f"query {query_id!r}: its instance {instance!r} has no positive in positive_info")
        if instance not in places:
            raise ValueError(f"query {query_id!r}: its instance {instance!r} is not in the taxonomy")
    depth = k + max(len(gt[instance]) for instance in set(instances))
    top, ranked = _ilias_ranked(scores, n_q, depth, ids, n_db)
    aps, oracles = np.zeros(n_q), np.zeros(n_q)
    group_aps = np.full((2, n_q, 4), np.nan)
    for i, instance in enumerate(instances):
        positives = gt[instance]
        in_db = np.array([position.get(p, -1) for p in positives], dtype=np.int64)
        aps[i], oracles[i] = _ilias_ap(top[i], ranked[i], in_db[in_db >= 0], len(positives), k)
        for g, groups in enumerate((ILIAS_SCALE_GROUPS, ILIAS_CLUTTER_GROUPS)):
            value = np.array([positive_info[p][g] for p in positives], dtype=np.float64)
            for j, (t1, t2) in enumerate(groups):
                inside = (value >= t1) & (value < t2)
                if inside.any():
                    keep = ~np.isin(top[i], in_db[~inside & (in_db >= 0)])
                    kept_gt = in_db[inside & (in_db >= 0)]
                    group_aps[g, i, j] = _ilias_ap(top[i][keep], ranked[i][keep], kept_gt, int(inside.sum()), k)[0]
    aps, group_aps = 100 * aps, 100 * group_aps
    by_category: dict[str, dict[str, list[float]]] = {}
    by_subcategory: dict[str, dict[str, list[float]]] = {}
    for instance, ap in zip(instances, aps.tolist(), strict=True):
        category, subcategory = places[instance]
        by_category.setdefault(category, {}).setdefault(instance, []).append(ap)
        by_subcategory.setdefault(subcategory, {}).setdefault(instance, []).append(ap)
    return IliasReport(
        aps=aps,
        map=float(aps.mean()),
        oracle=float(100 * oracles.mean()),
        scale=_group_means(ILIAS_SCALE_GROUPS, group_aps[0]),
        clutter=_group_means(ILIAS_CLUTTER_GROUPS, group_aps[1]),
        categories=_instance_means(by_category),
        subcategories=_instance_means(by_subcategory),
        scale_aps=group_aps[0],
        clutter_aps=group_aps[1],
    )


def _group_means(groups: tuple[tuple[float, float], ...], aps: np.ndarray) -> dict[str, float]:
    """``f"{t1}-{t2}"`` -> mean of the ``(n_q, len(groups))`` ``aps`` column over its non-NaN entries, for the groups
    that have one (``dataset.py`` line 215)."""
    return {
        f"{t1}-{t2}": float(np.nanmean(column))
        for (t1, t2), column in zip(groups, aps.T, strict=True)
        if not np.isnan(column).all()
    }


def _instance_means(groups: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Group -> mean over its instances of the mean of each instance's values."""
    return {name: float(np.mean([np.mean(v) for v in by_instance.values()])) for name, by_instance in groups.items()}


def _ilias_taxonomy(taxonomy: Mapping[str, Mapping[str, Mapping[str, Sequence[str]]]]) -> dict[str, tuple[str, str]]:
    """Instance -> ``(category, "category-subcategory")`` (``dataset.py`` lines 58-66) from the 3-level taxonomy."""
    places: dict[str, tuple[str, str]] = {}
    if not isinstance(taxonomy, Mapping):
        raise ValueError(
            f"taxonomy must be a dict {{category: {{subcategory: {{...: [instances]}}}}}}, got {taxonomy!r}"
        )
    for category, subcategories in taxonomy.items():
        if not isinstance(subcategories, Mapping):
            raise ValueError(f"taxonomy[{category!r}] must map subcategories to dicts, got {subcategories!r}")
        for subcategory, finer in subcategories.items():
            if not isinstance(finer, Mapping):
                raise ValueError(f"taxonomy[{category!r}][{subcategory!r}] must map names to instance lists")
            for name, instances in finer.items():
                if isinstance(instances, str) or not isinstance(instances, Sequence):
                    raise ValueError(f"taxonomy[{category!r}][{subcategory!r}][{name!r}] must be a list of instances")
                for instance in instances:
                    if instance in places:
                        raise ValueError(f"taxonomy lists instance {instance!r} twice")
                    places[instance] = (category, f"{category}-{subcategory}")
    return places


def _ilias_ranked(
    scores: ArrayLike, n_q: int, depth: int, ids: ArrayLike | None = None, n_db: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(n_q, <= depth)`` database ids and their scores, best first, ties by the lower id, from dense ``(n_q,
    n_db)`` scores or ``(n_q, m)`` scores of the database ids ``ids`` (``n_db``, when known, bounds them)."""
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_q, n_db) or (n_q, m), got shape {s.shape}")
    if ids is None:
        s = _score_matrix(s, n_q, s.shape[1] if n_db is None else n_db)
        top = top_k_ids(s, min(depth, s.shape[1]))
        return top, np.take_along_axis(s, top, axis=1)
    s = _score_matrix(s, n_q, s.shape[1])
    db_ids = np.asarray(ids)
    if db_ids.shape != s.shape or not np.issubdtype(db_ids.dtype, np.integer):
        raise ValueError(f"ids must be an integer {s.shape} array like scores, got {db_ids.dtype} {db_ids.shape}")
    if db_ids.size and (db_ids.min() < 0 or (n_db is not None and db_ids.max() >= n_db)):
        raise ValueError("ids must be database ids >= 0" + ("" if n_db is None else f" and < {n_db}"))
    ordered = np.sort(db_ids, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if repeated.any():
        raise ValueError(f"ids of query {int(np.argmax(repeated))} repeat a database id")
    order = np.lexsort((db_ids, -s), axis=1)[:, :depth]
    return np.take_along_axis(db_ids, order, axis=1), np.take_along_axis(s, order, axis=1)


def _ilias_ap(
    ranked_ids: np.ndarray, ranked_scores: np.ndarray, gt: np.ndarray, n_gt: int, k: int
) -> tuple[float, float]:
    """AP@k and oracle of one query as fractions (``dataset.py`` ``_compute_AP``, lines 83-116): ``ranked_*`` ``(L,)``
    best first, ``gt`` its positives' database ids, ``n_gt`` its positive count (with any not in the database).

    Tied scores form one group whose hits all get the precision at the group's last rank (sklearn
    ``average_precision_score``); the oracle is ``hits / len(top k) * k / n_gt``."""
    top, s = ranked_ids[:k], ranked_scores[:k]
    hit = np.isin(top, gt)
    if not hit.any():
        return 0.0, 0.0
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    precision_at_end = np.cumsum(hit)[ends] / (ends + 1)
    group = np.searchsorted(ends, np.arange(len(hit)))
    return float(precision_at_end[group][hit].sum() / min(k, n_gt)), float(hit.mean() * k / n_gt)


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
