"""Nearest-neighbour search of query descriptors in a database by inner product (cosine on L2-normalised input).

* :func:`similarity`: the full score matrix of in-memory arrays; :func:`similarity_chunked`: the same numbers for a
  large float16 or memory-mapped database read a block of rows at a time (no float32 copy of the database), the
  input of ``irlib.eval.revisited.evaluate(gnd, scores=...)`` at +1M scale.
* :func:`exact_top_k`: the exact top-k of any database in bounded memory, ties by lower id (UnED, ILIAS, GLDv2).
* :func:`build_index` / :func:`search_index` / :func:`knn`: top-k with faiss, exact (``"flat"``, ``IndexFlatIP``) or
  approximate (``"ivfpq"``, ``IndexIVFPQ`` trained on a seeded sample); :func:`refine` re-scores an approximate
  shortlist exactly from the database; :func:`recall_at_k` compares approximate with exact top-k.
* :data:`SEARCHES` / :func:`search_params` / :class:`ShortlistSearch`: the searches of an evaluation
  (``irlib.eval.pipeline``): ``"exact"`` (the full score matrix, :func:`database_scores`), ``"faiss-flat"`` and
  ``"ivfpq"`` (each query's top-``shortlist`` from a faiss index, re-scored exactly).
* :class:`StackedDatabase`: the test database followed by memory-mapped +1M distractors, searched as one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np


def _as_2d(name: str, a: np.ndarray | StackedDatabase) -> np.ndarray | StackedDatabase:
    """``a`` as an array (a memory map stays one, nothing is copied), checked to be ``(n, dim)``; a
    :class:`StackedDatabase` is returned as it is (it reads float32 rows by id or slice)."""
    if isinstance(a, StackedDatabase):
        return a
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {a.shape}")
    return a


def _as_f32(name: str, a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(_as_2d(name, np.asarray(a)), dtype=np.float32)


def similarity(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Full score matrix ``(n_queries, n_db)`` = ``queries @ database.T`` in float32 (fp16 input is upcast)."""
    q, x = _as_f32("queries", queries), _as_f32("database", database)
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"descriptor sizes differ: queries {q.shape[1]}, database {x.shape[1]}")
    return q @ x.T


def similarity_chunked(
    queries: np.ndarray, database: np.ndarray, *, chunk: int = 4096, out: np.ndarray | None = None
) -> np.ndarray:
    """Score matrix ``(n_queries, N)`` float32 = ``queries @ database.T``, the database read ``chunk`` rows at a time.

    ``database`` may be float16 and memory-mapped (``np.load(path, mmap_mode="r")``, ``shards.load_features``):
    each block is upcast into one reused ``(chunk, dim)`` float32 buffer, so memory is the score matrix plus that
    buffer (and the page cache of the mapped file). The numbers are :func:`similarity`'s on the float32 database up
    to summation order inside the BLAS (with numpy's OpenBLAS, blocks of thousands of rows give the same bits).
    ``out``: a float32 ``(n_queries, N)`` array (or a column slice of a wider one) written in place and returned.
    """
    q = _as_f32("queries", queries)
    database = _as_2d("database", database)
    n, dim = database.shape
    if q.shape[1] != dim:
        raise ValueError(f"descriptor sizes differ: queries {q.shape[1]}, database {dim}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if out is None:
        out = np.empty((q.shape[0], n), dtype=np.float32)
    elif out.shape != (q.shape[0], n) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(q.shape[0], n)}, got {out.dtype} {out.shape}")
    block = np.empty((min(chunk, n), dim), dtype=np.float32)
    block_scores = np.empty((min(chunk, n), q.shape[0]), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        np.copyto(block[: e - s], database[s:e])
        # (rows, n_q) into a contiguous buffer, then transposed into place: faster than writing a strided out
        np.matmul(block[: e - s], q.T, out=block_scores[: e - s])
        out[:, s:e] = block_scores[: e - s].T
    return out


INDEX_KINDS: tuple[str, ...] = ("flat", "ivfpq")


def build_index(
    database: np.ndarray | StackedDatabase,
    kind: str = "flat",
    *,
    nlist: int = 1024,
    m: int = 64,
    nbits: int = 8,
    nprobe: int = 16,
    train_size: int = 65536,
    seed: int = 0,
    chunk: int = 65536,
) -> faiss.Index:
    """A faiss inner-product index of the ``(N, dim)`` database, rows added ``chunk`` at a time (memmap-friendly).

    ``"flat"``: exact ``IndexFlatIP`` (holds a float32 copy of the database). ``"ivfpq"``: ``IndexIVFPQ`` with
    ``nlist`` inverted lists (coarse k-means) and residuals product-quantised into ``m`` sub-vectors of ``nbits``
    each (``m * nbits / 8`` bytes per image, ``dim`` divisible by ``m``); both quantisers are trained on
    ``min(train_size, N)`` rows drawn with ``seed`` (faiss's k-means seeded with it too), and ``nprobe`` lists are
    scanned per query (change it later with ``faiss.extract_index_ivf(index).nprobe``).

    faiss's OpenMP threads spin while they wait: where other processes keep the cores busy, training ran 10x slower
    with 2 threads than with 1 on a 2-core machine. ``OMP_WAIT_POLICY=PASSIVE`` (set before faiss is imported) or
    ``faiss.omp_set_num_threads(1)`` avoids it.
    """
    database = _as_2d("database", database)
    n, dim = database.shape
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    if n == 0 or chunk < 1:
        raise ValueError(f"need a non-empty database and a positive chunk, got N={n}, chunk={chunk}")
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        if dim % m or not 1 <= nbits <= 16 or min(nlist, nprobe, train_size) < 1:
            raise ValueError(
                f"ivfpq needs dim % m == 0, 1 <= nbits <= 16 and positive nlist, nprobe, train_size; got dim={dim}, "
                f"m={m}, nbits={nbits}, nlist={nlist}, nprobe={nprobe}, train_size={train_size}"
            )
        if min(train_size, n) < max(nlist, 2**nbits):
            raise ValueError(
                f"ivfpq trains {nlist} coarse centroids and {2**nbits} codes per sub-quantiser on "
                f"min(train_size, N) = {min(train_size, n)} rows: too few (faiss advises 39 or more per centroid)"
            )
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.pq.cp.seed = seed
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(train_size, n), replace=False))
        index.train(np.ascontiguousarray(database[rows], dtype=np.float32))
        index.nprobe = nprobe
    for s in range(0, n, chunk):
        index.add(np.ascontiguousarray(database[s : s + chunk], dtype=np.float32))
    return index


def search_index(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``queries`` in a faiss index: ``(scores, ids)``, both ``(n_queries, min(k, ntotal))``, best first.

    Approximate indexes may return fewer than ``k`` hits for a query; the rest are padded with id -1.
    """
    q = _as_f32("queries", queries)
    if q.shape[1] != index.d:
        raise ValueError(f"descriptor sizes differ: queries {q.shape[1]}, index {index.d}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    return index.search(q, min(k, index.ntotal))


def knn(
    queries: np.ndarray, database: np.ndarray, k: int, *, index: str = "flat", **index_options: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: exact with ``index="flat"`` (faiss ``IndexFlatIP``), or ``"ivfpq"``.

    ``index_options`` go to :func:`build_index`.

    Returns:
        ``(scores, ids)``, both ``(n_queries, min(k, n_db))``, best first. Equal scores may come in any order
        (use :func:`similarity` with ``evaluate(scores=...)`` when ties must rank by database index).
    """
    q = _as_f32("queries", queries)
    database = _as_2d("database", database)
    if q.shape[1] != database.shape[1]:
        raise ValueError(f"descriptor sizes differ: queries {q.shape[1]}, database {database.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    return search_index(build_index(database, index, **index_options), q, k)


def refine(
    queries: np.ndarray, database: np.ndarray | StackedDatabase, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-scoring of candidate lists, e.g. an IVF-PQ top-``k'`` with ``k' > k``.

    Each query's candidates ``ids (n_queries, k')`` (padding -1 ignored) are read from the (memory-mapped)
    ``database`` and scored exactly; the best ``k`` come back as ``(scores, ids)`` ``(n_queries, k)``, best first,
    ties by lower id, padded with ``-inf`` / -1 where a query has fewer than ``k`` candidates.
    """
    q = _as_f32("queries", queries)
    database = _as_2d("database", database)
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[0] != q.shape[0]:
        raise ValueError(f"ids must be (n_queries={q.shape[0]}, k'), got shape {ids.shape}")
    if q.shape[1] != database.shape[1]:
        raise ValueError(f"descriptor sizes differ: queries {q.shape[1]}, database {database.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    out_scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    out_ids = np.full((q.shape[0], k), -1, dtype=np.int64)
    for i, row in enumerate(ids):
        cand = np.unique(row[row >= 0])  # sorted: sequential reads of a memory map
        scores = np.asarray(database[cand], dtype=np.float32) @ q[i]
        best = np.argsort(-scores, kind="stable")[:k]
        out_scores[i, : best.size], out_ids[i, : best.size] = scores[best], cand[best]
    return out_scores, out_ids


def exact_top_k(
    queries: np.ndarray,
    database: np.ndarray | StackedDatabase,
    k: int,
    *,
    query_block: int = 256,
    chunk: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product, ties broken by the lower database id (the order of a stable descending sort,
    as UnED's ``jax.lax.top_k``): ``(scores, ids)``, both ``(n_queries, min(k, N))``, best first.

    The database (in memory, float16, memory-mapped or stacked) is read ``chunk`` rows at a time for each block of
    ``query_block`` queries, so memory is ``O(query_block * chunk)`` whatever N: never a dense ``(n_queries, N)``
    matrix, unlike :func:`database_scores`. Every score that decides the result is summed in float64 over one
    (query, image) pair and rounded to float32: a float32 matrix product sums in an order that depends on the row's
    position in the block, so two identical database rows could score differently in the last bit and an exact tie
    be broken by position. After the first chunk, a float32 product only screens the pairs that may enter the top k
    (above the current k-th score minus a margin far wider than float32's error), which are then scored exactly.
    """
    q = _as_f32("queries", queries)
    database = _as_2d("database", database)
    n, dim = database.shape
    if q.shape[1] != dim:
        raise ValueError(f"descriptor sizes differ: queries {q.shape[1]}, database {dim}")
    if k < 1 or query_block < 1 or chunk < 1:
        raise ValueError(f"k, query_block and chunk must be positive, got {k}, {query_block}, {chunk}")
    k = min(k, n)
    q64 = q.astype(np.float64)
    q_norms = np.linalg.norm(q64, axis=1)
    first = max(chunk, k)
    bounds = [(0, min(first, n))] + [(s, min(s + chunk, n)) for s in range(first, n, chunk)]
    out_scores = np.empty((len(q), k), dtype=np.float32)
    out_ids = np.empty((len(q), k), dtype=np.int64)
    for qs in range(0, len(q), query_block):
        rows = slice(qs, qs + query_block)
        best_s, best_i = _exact_best(q64[rows], np.asarray(database[0 : bounds[0][1]], dtype=np.float64), 0, k)
        for s, e in bounds[1:]:
            x = np.asarray(database[s:e], dtype=np.float32)
            slack = 1e-3 * q_norms[rows] * float(np.linalg.norm(x, axis=1).max())
            r, c = np.nonzero(q[rows] @ x.T > (best_s[:, -1] - slack)[:, None])
            exact = np.einsum("ij,ij->i", q64[rows][r], x[c].astype(np.float64)).astype(np.float32)
            better = exact > best_s[r, -1]  # an equal score loses to the k-th's lower id
            if better.any():
                best_s, best_i = _merge_best(best_s, best_i, r[better], exact[better], c[better] + s, k)
        out_scores[rows], out_ids[rows] = best_s, best_i
    return out_scores, out_ids


def _exact_best(q64: np.ndarray, x64: np.ndarray, start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` ``(rows, k)`` of the exact best ``k`` of ``x64`` (ids from ``start``), best first, ties
    by lower id."""
    scores = (q64 @ x64.T).astype(np.float32)
    ids = np.broadcast_to(np.arange(start, start + len(x64)), scores.shape)
    best_s, best_i = _best_k(scores, ids, k)
    order = np.lexsort((best_i, -best_s), axis=1)
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def _merge_best(
    best_s: np.ndarray, best_i: np.ndarray, rows: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best ``k`` of its ranked ``(best_s, best_i)`` and the new ``(rows, scores, ids)`` candidates,
    best first, ties by lower id."""
    n_rows = len(best_s)
    all_rows = np.concatenate([np.repeat(np.arange(n_rows), k), rows])
    all_s, all_i = np.concatenate([best_s.ravel(), scores]), np.concatenate([best_i.ravel(), ids])
    order = np.lexsort((all_i, -all_s, all_rows))
    counts = np.bincount(all_rows, minlength=n_rows)
    rank = np.arange(len(order)) - (np.cumsum(counts) - counts)[all_rows[order]]
    keep = order[rank < k]
    return all_s[keep].reshape(n_rows, k), all_i[keep].reshape(n_rows, k)


def _best_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row of ``(rows, m)`` candidates (unordered), a tie at the cut going to the lower ids."""
    if scores.shape[1] <= k:
        return scores, ids
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    best_s, best_i = np.take_along_axis(scores, part, axis=1), np.take_along_axis(ids, part, axis=1)
    kth = best_s.min(axis=1, keepdims=True)
    straddling = np.flatnonzero((scores == kth).sum(axis=1) > (best_s == kth).sum(axis=1))
    for r in straddling:  # rare: equal scores across the cut, argpartition chose among them arbitrarily
        cand = np.flatnonzero(scores[r] >= kth[r, 0])
        keep = cand[np.lexsort((ids[r, cand], -scores[r, cand]))[:k]]
        best_s[r], best_i[r] = scores[r, keep], ids[r, keep]
    return best_s, best_i


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 100) -> float:
    """Mean over queries of ``|approx top-k ∩ exact top-k| / k`` for ``(n_queries, >= k)`` id arrays, best first.

    Padding ids (-1) never count as hits.
    """
    a, e = np.asarray(approx_ids), np.asarray(exact_ids)
    if a.ndim != 2 or e.ndim != 2 or a.shape[0] != e.shape[0]:
        raise ValueError(f"need two (n_queries, k) id arrays with the same n_queries, got {a.shape} and {e.shape}")
    if k < 1 or min(a.shape[1], e.shape[1]) < k:
        raise ValueError(f"k={k} needs at least k columns in both, got {a.shape[1]} and {e.shape[1]}")
    hits = [np.intersect1d(x[:k][x[:k] >= 0], y[:k]).size for x, y in zip(a, e, strict=True)]
    return float(np.mean(hits)) / k


class StackedDatabase:
    """Several ``(n_i, D)`` descriptor arrays searched as one database of ``sum n_i`` rows, in order, without copying:
    the test database in memory followed by memory-mapped +1M distractors (``shards.load_features``)."""

    def __init__(self, *parts: np.ndarray) -> None:
        if not parts:
            raise ValueError("need at least one part")
        self.parts = [_as_2d(f"part {i}", p) for i, p in enumerate(parts)]
        dims = {p.shape[1] for p in self.parts}
        if len(dims) != 1:
            raise ValueError(f"parts have different descriptor sizes {sorted(dims)}")
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.offsets[-1]), dims.pop())

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, ids: np.ndarray | slice) -> np.ndarray:
        """Rows ``ids`` (integer array, or a slice with step 1) as float32 ``(len(ids), D)``."""
        if isinstance(ids, slice):
            start, stop, step = ids.indices(len(self))
            if step != 1:
                raise IndexError(f"a StackedDatabase slice must have step 1, got {step}")
            ids = np.arange(start, max(start, stop))
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= len(self))):
            raise IndexError(f"row ids must be a 1-D array in [0, {len(self)})")
        out = np.empty((ids.size, self.shape[1]), dtype=np.float32)
        part = np.searchsorted(self.offsets, ids, side="right") - 1
        for i, p in enumerate(self.parts):
            sel = np.flatnonzero(part == i)
            if sel.size:
                local = ids[sel] - self.offsets[i]
                order = np.argsort(local)  # increasing offsets read a memory map sequentially
                out[sel[order]] = p[local[order]]
        return out


def database_scores(queries: np.ndarray, database: np.ndarray | StackedDatabase) -> np.ndarray:
    """``(n_queries, N)`` float32 scores against an in-memory, memory-mapped or stacked database (blocks of rows).

    A stacked database's parts are scored straight into their columns of the one output (no per-part copies).
    """
    if not isinstance(database, StackedDatabase):
        return similarity_chunked(queries, database)
    out = np.empty((np.shape(queries)[0], len(database)), dtype=np.float32)
    for part, start in zip(database.parts, database.offsets[:-1], strict=True):
        similarity_chunked(queries, part, out=out[:, start : start + len(part)])
    return out


SEARCHES: tuple[str, ...] = ("exact", "faiss-flat", "ivfpq")
"""Searches of an evaluation: ``"exact"`` scores the whole database (:func:`database_scores`, the full ranking);
``"faiss-flat"`` (``IndexFlatIP``) and ``"ivfpq"`` (``IndexIVFPQ``) return each query's top-``shortlist``,
re-scored exactly (:class:`ShortlistSearch`)."""
_SEARCH_DEFAULTS: dict[str, dict[str, int]] = {
    "exact": {},
    "faiss-flat": {"shortlist": 1000},
    "ivfpq": {"shortlist": 1000, "nprobe": 16, "nlist": 1024, "m": 64, "nbits": 8, "train_size": 65536, "seed": 0},
}


def search_params(search: str, params: Mapping[str, Any] | None = None) -> dict[str, int]:
    """``params`` of ``search`` (one of :data:`SEARCHES`) completed with the defaults (what a run records).

    ``shortlist``: ranking length kept per query; ``nprobe``, ``nlist``, ``m``, ``nbits``, ``train_size``,
    ``seed``: :func:`build_index`'s IVF-PQ options. Unknown names and non-positive integers raise ValueError.
    """
    if search not in _SEARCH_DEFAULTS:
        raise ValueError(f"unknown search {search!r}; expected one of {SEARCHES}")
    defaults = _SEARCH_DEFAULTS[search]
    unknown = sorted(set(params or {}) - set(defaults))
    if unknown:
        takes = ", ".join(defaults) or "no parameters"
        raise ValueError(f"search {search!r} takes {takes}; unknown parameter(s) {', '.join(unknown)}")
    merged = defaults | dict(params or {})
    for name, value in merged.items():
        least = 0 if name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"search parameter {name} must be an integer >= {least}, got {value!r}")
    return {name: int(value) for name, value in merged.items()}


class ShortlistSearch:
    """Each query's top-``shortlist`` of ``database`` from a faiss index, re-scored exactly by :func:`refine`.

    ``search`` is ``"faiss-flat"`` (exact ``IndexFlatIP``: a float32 copy of the database) or ``"ivfpq"``; the
    index is built once (``params`` as :func:`search_params`), so expanded queries can search it again.
    """

    def __init__(
        self, database: np.ndarray | StackedDatabase, search: str, params: Mapping[str, Any] | None = None
    ) -> None:
        if search not in ("faiss-flat", "ivfpq"):
            raise ValueError(f"a shortlist search is 'faiss-flat' or 'ivfpq', got {search!r}")
        options = search_params(search, params)
        self.database = _as_2d("database", database)
        self.shortlist = min(options.pop("shortlist"), len(self.database))
        self.index = build_index(self.database, "flat" if search == "faiss-flat" else "ivfpq", **options)

    def __call__(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores, ids, index_ids)``, each ``(n_queries, shortlist)``: ``ids`` ranked by the exact ``scores``
        (best first, ties by lower id), ``index_ids`` in the index's own order (IVF-PQ's approximate one).

        Raises ValueError when the index returns fewer than ``shortlist`` ids for a query (IVF-PQ scanning too few
        lists): a ranking with holes cannot be evaluated.
        """
        _, index_ids = search_index(self.index, queries, self.shortlist)
        short = np.flatnonzero((index_ids < 0).any(axis=1))
        if short.size:
            raise ValueError(
                f"the index returned fewer than shortlist={self.shortlist} ids for {short.size} queries (e.g. "
                f"query {short[0]}); raise nprobe or lower shortlist"
            )
        scores, ids = refine(queries, self.database, index_ids, self.shortlist)
        return scores, ids, index_ids
