"""The revisited Oxford/Paris evaluation protocol (Radenović et al., CVPR 2018; revisitop ``python/evaluate.py``).

Two entry points:

* :func:`compute_map` is a drop-in for the official ``compute_map(ranks, gnd, kappas)``: same arguments, same
  ``(map, aps, pr, prs)`` tuple, same semantics (trapezoid AP, junk shifting, the truncated mP@k divisor, NaN for
  queries without positives). It differs only where the official code crashes: no query with positives gives a NaN
  mAP with a warning, and a query none of whose positives appear in a truncated ``ranks`` gets AP = P@k = 0.
* :func:`evaluate` builds Easy/Medium/Hard from the ``easy``/``hard``/``junk`` fields exactly as revisitop's
  ``example_evaluate.py`` does, and accepts either a score matrix (no database-wide sort: each positive's and junk
  image's position is counted directly) or a ranking.

Conventions: ``ranks`` is ``(n_db, n_queries)`` (or ``(k, n_queries)`` when truncated) with 0-based database
indices, best first, as in revisitop; ``scores`` is ``(n_queries, n_db)``, higher is better, and ties are broken by
database index, i.e. the ranking is ``np.argsort(-scores, axis=1, kind="stable")``. The official example uses the
default (unstable) argsort, so its tie order is unspecified.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from irlib.data.revisited import GND_FIELDS, validate_gnd

PROTOCOLS: tuple[str, ...] = ("easy", "medium", "hard")
# (fields that are positives, fields that are junk) per protocol
_PROTOCOL_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


def protocol_gnd(gnd: Sequence[Mapping[str, Any]], protocol: str) -> list[dict[str, np.ndarray]]:
    """Per-query ``{"ok", "junk"}`` of one protocol, as revisitop's ``example_evaluate.py`` builds them.

    Easy: ok = easy, junk = junk + hard. Medium: ok = easy + hard, junk = junk. Hard: ok = hard, junk = junk + easy.
    """
    validate_gnd(gnd)
    if protocol not in _PROTOCOL_FIELDS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    return _protocol_gnd(gnd, protocol)


def _protocol_gnd(gnd: Sequence[Mapping[str, Any]], protocol: str) -> list[dict[str, np.ndarray]]:
    ok_f, junk_f = _PROTOCOL_FIELDS[protocol]
    return [{"ok": _ids(q, ok_f), "junk": _ids(q, junk_f)} for q in gnd]


def _ids(q: Mapping[str, Any], fields: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(q[f], dtype=np.int64).ravel() for f in fields])


def average_precision(pos: np.ndarray, n_ok: int) -> float:
    """Trapezoid-rule AP of sorted 0-based, junk-shifted positive positions ``pos`` out of ``n_ok`` positives.

    The j-th retrieved positive at position r adds ``(j / r + (j + 1) / (r + 1)) / (2 n_ok)`` (``j / r := 1`` at
    r = 0), as revisitop's ``compute_ap``; positives missing from ``pos`` add nothing but still count in ``n_ok``.
    """
    if pos.size == 0:
        return 0.0
    r = pos.astype(np.float64)
    j = np.arange(pos.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        before = np.where(r == 0, 1.0, j / r)
    after = (j + 1) / (r + 1)
    # cumsum adds left to right like the official loop, keeping results bit-identical.
    return float(np.cumsum((before + after) * (1.0 / n_ok) / 2.0)[-1])


def precision_at_k(pos: np.ndarray, kappas: Sequence[int]) -> np.ndarray:
    """revisitop's mP@k per query: ``|{p <= k'}| / k'`` with ``k' = min(max(p), k)``, p 1-based junk-shifted.

    The divisor is truncated at the last retrieved positive, so it equals standard P@k only when a positive lies
    beyond k. With no retrieved positive every value is 0 (the official code raises).
    """
    if pos.size == 0:
        return np.zeros(len(kappas))
    p1 = pos + 1
    last = p1.max()
    out = np.empty(len(kappas))
    for i, k in enumerate(kappas):
        kq = min(last, k)
        out[i] = np.count_nonzero(p1 <= kq) / kq
    return out


def _shift_junk(pos: np.ndarray, junkpos: np.ndarray) -> np.ndarray:
    """Remove junk from the ranking: each positive moves up by the number of junk positions before it."""
    if junkpos.size == 0:
        return pos
    return pos - np.searchsorted(np.sort(junkpos), pos, side="left")


def _query_metrics(pos: np.ndarray, junkpos: np.ndarray, n_ok: int, kappas: Sequence[int]) -> tuple[float, np.ndarray]:
    """AP and P@k of one query from sorted raw positions of its positives and junk images."""
    shifted = _shift_junk(np.sort(pos), junkpos)
    return average_precision(shifted, n_ok), precision_at_k(shifted, kappas)


def _summarise(aps: np.ndarray, prs: np.ndarray, n_kappas: int) -> tuple[float, np.ndarray]:
    """Means over queries with positives (NaN rows excluded), sequential like the official accumulation."""
    valid = ~np.isnan(aps)
    n_valid = int(valid.sum())
    if n_valid == 0:
        warnings.warn("no query has a positive: mAP is undefined (NaN)", RuntimeWarning, stacklevel=3)
        return float("nan"), np.full(n_kappas, np.nan)
    mean_ap = 0.0
    pr = np.zeros(n_kappas)
    for i in np.flatnonzero(valid):
        mean_ap += aps[i]
        pr = pr + prs[i]
    return mean_ap / n_valid, pr / n_valid


def compute_map(
    ranks: np.ndarray, gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = ()
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Drop-in for revisitop's ``compute_map``: mAP, per-query AP, mP@k and per-query P@k.

    Args:
        ranks: ``(n_db, n_queries)`` 0-based database indices, best first; may be truncated to the top rows.
        gnd: one mapping per query with ``"ok"`` (positives) and an optional ``"junk"``.
        kappas: the k of mP@k.

    Returns:
        ``(map, aps (n_queries,), pr (len(kappas),), prs (n_queries, len(kappas)))``; queries without positives
        have NaN AP/P@k and are excluded from the means.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be 2-D (n_db, n_queries), got shape {ranks.shape}")
    nq = len(gnd)
    if ranks.shape[1] != nq:
        raise ValueError(
            f"ranks has {ranks.shape[1]} columns but gnd has {nq} queries; ranks is (n_db, n_queries) "
            "as in revisitop (transpose a (n_queries, k) array)"
        )
    kappas = [int(k) for k in kappas]
    aps = np.zeros(nq)
    prs = np.zeros((nq, len(kappas)))
    for i, q in enumerate(gnd):
        if "ok" not in q:
            raise ValueError(f"gnd[{i}] has no 'ok' field (keys: {sorted(q)})")
        ok = np.asarray(q["ok"]).ravel()
        if ok.size == 0:
            aps[i] = np.nan
            prs[i] = np.nan
            continue
        junk = np.asarray(q.get("junk", ())).ravel()
        col = ranks[:, i]
        pos = np.flatnonzero(np.isin(col, ok))
        junkpos = np.flatnonzero(np.isin(col, junk))
        # matched by value: duplicate ids in ``ok`` only inflate the divisor, as in the official code
        aps[i], prs[i] = _query_metrics(pos, junkpos, ok.size, kappas)
    mean_ap, pr = _summarise(aps, prs, len(kappas))
    return mean_ap, aps, pr, prs


def _bin_index(values: np.ndarray, low: np.ndarray, scale: np.ndarray, n_bins: int) -> np.ndarray:
    """Monotone non-decreasing map of ``values >= low`` to bins ``0..n_bins-1`` (same arithmetic for every input)."""
    return np.minimum((values - low) * scale, n_bins - 1).astype(np.int64)


def stable_positions(row: np.ndarray, items: np.ndarray, n_bins: int = 1 << 14) -> np.ndarray:
    """0-based positions of database ``items`` in ``np.argsort(-row, kind="stable")`` without sorting ``row``.

    An item's position is the number of entries scoring strictly higher plus the number of equal-scoring entries
    with a smaller index. Entries at least as high as the lowest item are counted into ``n_bins`` uniform bins
    (a histogram); only the few entries sharing a bin with an item are compared with the item scores exactly.
    Because the bin map is monotone, an entry in a higher bin than an item's always scores higher.
    """
    if items.size == 0:
        return np.empty(0, dtype=np.int64)
    s = row[items]
    levels = np.unique(s)
    low = levels[:1]
    cand = row[row >= low[0]]
    span = float(cand.max()) - float(low[0])
    with np.errstate(over="ignore"):
        scale = np.array((n_bins - 1) / span if 0 < span < np.inf else 0.0, dtype=row.dtype)
    if not np.isfinite(scale):  # a span too small for the dtype: one bin, every candidate compared exactly
        scale = np.zeros((), dtype=row.dtype)
    bins = _bin_index(cand, low, scale, n_bins)
    above_bin = cand.size - np.cumsum(np.bincount(bins, minlength=n_bins))  # entries in bins > b
    level_bins = _bin_index(levels, low, scale, n_bins)
    shared = np.zeros(n_bins, dtype=bool)
    shared[level_bins] = True
    near = np.sort(cand[shared[bins]])  # entries sharing a bin with some level, ascending
    near_bins = _bin_index(near, low, scale, n_bins)
    gt_near = np.searchsorted(near, levels, side="right")  # near entries <= level
    # entries > level = entries in higher bins + near entries in the level's bin that exceed it
    above = above_bin[level_bins] + np.searchsorted(near_bins, level_bins, side="right") - gt_near
    equal = gt_near - np.searchsorted(near, levels, side="left")
    t = np.searchsorted(levels, s)
    pos = above[t].astype(np.int64)
    for lev in np.flatnonzero(equal > 1):
        tied = np.flatnonzero(row == levels[lev])
        mine = t == lev
        pos[mine] += np.searchsorted(tied, items[mine])
    return pos


def validate_ranks(ranks: np.ndarray, n_db: int | None = None) -> None:
    """Raise ``ValueError`` unless every column of the integer ``(k, n_queries)`` ``ranks`` is a prefix of a
    permutation of ``[0, n_db)`` (of the non-negative integers without ``n_db``) with ``k >= 1``."""
    if ranks.shape[0] == 0 and ranks.shape[1]:
        raise ValueError("ranks is empty (k = 0): no database image was ranked for any query")
    if ranks.size and ranks.min() < 0:
        raise ValueError("ranks holds negative indices (faiss pads missing results with -1: drop them first)")
    if n_db is not None and ranks.size and ranks.max() >= n_db:
        raise ValueError(f"ranks holds database index {int(ranks.max())}, outside [0, n_db={n_db})")
    ordered = np.sort(ranks, axis=0)
    repeated = np.flatnonzero((ordered[1:] == ordered[:-1]).any(axis=0))
    if repeated.size:
        q = int(repeated[0])
        twice = int(ordered[1:, q][ordered[1:, q] == ordered[:-1, q]][0])
        raise ValueError(
            f"ranks lists a database index twice in {repeated.size} query column(s), e.g. index {twice} in query "
            f"{q}: a ranking is a permutation of the database (or a prefix of one)"
        )


def evaluate(
    gnd: Sequence[Mapping[str, Any]],
    *,
    scores: np.ndarray | None = None,
    ranks: np.ndarray | None = None,
    kappas: Sequence[int] = (1, 5, 10),
    protocols: Sequence[str] = PROTOCOLS,
    n_db: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Revisited Easy/Medium/Hard metrics from a score matrix or a ranking.

    Args:
        gnd: the per-query list of a revisitop pickle (``{"easy", "hard", "junk", ...}`` per query).
        scores: ``(n_queries, n_db)`` similarities, higher is better; ties rank by database index.
            Positions are counted per positive and junk image; the database is never sorted.
        ranks: ``(n_db, n_queries)`` or truncated ``(k, n_queries)`` 0-based database indices, best first: each
            column a permutation of the database, or a prefix of one (no index twice, none negative, at least one
            row); a duplicate would count a positive twice (AP above 1).
        n_db: the database size, with ``ranks``: indices (ranking and ground truth) must lie in ``[0, n_db)``.
        kappas: the k of mP@k.
        protocols: any of ``"easy"``, ``"medium"``, ``"hard"``.

    Returns:
        ``{protocol: {"map": float, "aps": (n_queries,), "mp@k": (len(kappas),), "p@k": (n_queries, len(kappas))}}``
        as fractions; queries without positives are NaN and excluded from the means.
    """
    if (scores is None) == (ranks is None):
        raise ValueError("pass exactly one of scores= or ranks=")
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"unknown protocol {p!r}; expected one of {PROTOCOLS}")
    kappas = [int(k) for k in kappas]
    if any(k < 1 for k in kappas):
        raise ValueError(f"kappas must be positive integers, got {kappas}")
    nq = len(gnd)

    if ranks is not None:
        ranks = np.asarray(ranks)
        if ranks.ndim != 2 or ranks.shape[1] != nq:
            raise ValueError(
                f"ranks must have shape (n_db or k, n_queries={nq}), got {ranks.shape}; "
                "transpose a (n_queries, k) array such as faiss's I"
            )
        if not np.issubdtype(ranks.dtype, np.integer):
            raise ValueError(f"ranks must hold integer database indices, got dtype {ranks.dtype}")
        validate_ranks(ranks, n_db)
        validate_gnd(gnd, n_db=n_db)
        out = {}
        for p in protocols:
            m, aps, pr, prs = compute_map(ranks, _protocol_gnd(gnd, p), kappas)
            out[p] = {"map": m, "aps": aps, "mp@k": pr, "p@k": prs}
        return out

    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != nq:
        raise ValueError(f"scores must have shape (n_queries={nq}, n_db), got {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    bad = [i for i in range(nq) if not np.isfinite(scores[i]).all()]  # row by row: no (nq, n_db) temporary
    if bad:
        raise ValueError(f"scores contain NaN or inf (queries {bad[:10]}{'...' if len(bad) > 10 else ''})")
    validate_gnd(gnd, n_db=scores.shape[1])

    def field_positions(i: int) -> dict[str, np.ndarray]:
        fields = {f: _ids(gnd[i], (f,)) for f in GND_FIELDS}
        items = np.unique(np.concatenate(list(fields.values())))
        where = stable_positions(scores[i], items)
        return {f: where[np.searchsorted(items, ids)] for f, ids in fields.items()}

    # numpy releases the GIL in the per-query passes over the database, so queries run in parallel threads
    with ThreadPoolExecutor(max_workers=min(nq, os.cpu_count() or 1, 8) or 1) as pool:
        positions = list(pool.map(field_positions, range(nq)))
    results = {p: (np.zeros(nq), np.zeros((nq, len(kappas)))) for p in protocols}
    for i, position in enumerate(positions):
        for p in protocols:
            aps, prs = results[p]
            ok_f, junk_f = _PROTOCOL_FIELDS[p]
            ok_pos = np.concatenate([position[f] for f in ok_f])
            if ok_pos.size == 0:
                aps[i], prs[i] = np.nan, np.nan
                continue
            junk_pos = np.concatenate([position[f] for f in junk_f])
            aps[i], prs[i] = _query_metrics(ok_pos, junk_pos, ok_pos.size, kappas)
    out = {}
    for p, (aps, prs) in results.items():
        m, pr = _summarise(aps, prs, len(kappas))
        out[p] = {"map": m, "aps": aps, "mp@k": pr, "p@k": prs}
    return out
