"""Rerankers of a retrieval ranking: pure functions on global descriptors and a descriptor-only shortlist.

Inputs are float32 descriptors with L2-normalised rows: queries ``Q (n_q, D)`` and database ``X (N, D)``. Every
reranker starts from the same initial ranking, :func:`initial_ranks` (``X @ Q.T`` sorted best first; descriptors
only, never labels), or from a ``ranks`` array passed in, and returns a :class:`Reranked` whose ``ranks`` go straight
to ``irlib.eval.revisited.evaluate(gnd, ranks=...)``.

* :func:`alpha_qe` / :func:`average_qe`: α-weighted / average query expansion, then a new search of the whole database.
* :func:`alpha_dba`: α-weighted database-side augmentation (returns new database descriptors, not a ranking).
* :func:`k_reciprocal_rerank`: k-reciprocal re-ranking (Zhong et al., CVPR 2017) of the top-M shortlist.
* :func:`diffusion_rerank`: diffusion (Iscen et al., CVPR 2017) on a mutual kNN graph of the top-M shortlist.
* :func:`superglobal_rerank`: SuperGlobal's MDescAug + RerankwMDA (Shao et al., ICCV 2023), reproducing the official
  code (``ShihaoShao-GH/SuperGlobal``, ``modules/reranking/``) step by step in float32 torch.
* :func:`learned_rerank`: a trained AMES reranker (Suma et al., ECCV 2024; :mod:`irlib.models.ames`) on the binary
  local descriptors of the queries and the shortlist (:data:`LOCAL_RERANKERS` read local descriptors, which the
  pipeline passes as a :class:`LocalDescriptors` provider).
* :func:`shortlist_attention_rerank`: **batch-dependent**, a model's trained BatchFormer encoder (Hou et al., CVPR
  2022) run at test time over each query and its shortlist (:data:`BATCH_DEPENDENT_RERANKERS`: a pair's score
  depends on the rest of the shortlist; the descriptors never do).

What a reranker reads besides ``Q``, ``X`` and its JSON parameters (local descriptors, a model's batch attention)
comes as :class:`RerankInputs` from the pipeline (:func:`reranker_inputs`).

Shortlist rerankers reorder the first ``M' = min(M, len(ranks))`` rows of the initial ranking and keep the tail.
Ties are broken by the lower index (database id, shortlist position) unless said otherwise.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import cg
from tqdm.auto import tqdm

from irlib.eval.metrics import top_k_ids
from irlib.eval.search import StackedDatabase, database_scores
from irlib.io import sha256_file
from irlib.models import method_label
from irlib.models.ames import BinaryLocals, load_reranker, rerank_score
from irlib.models.batch_transformer import BatchTransformer
from irlib.models.batchformer import BatchFormer
from irlib.registry import Registry

# largest float32 temporaries (elements) built at once by the chunked loops below
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Reranked:
    """A reranked retrieval result.

    Attributes:
        ranks: ``(L, n_q)`` int64 database ids, best first, in revisitop's orientation (column q is query q), as
            ``evaluate(gnd, ranks=...)`` takes them. ``L`` is the length of the initial ranking (``N`` by default);
            shortlist rerankers reorder rows ``0..M'-1`` and leave rows ``M'..L-1`` unchanged.
        scores: ``(n_q, L')`` float32, the reranker's score of ``ranks[p, q]`` at ``[q, p]`` for the ``L'`` reranked
            rows (``M'`` for shortlist rerankers, ``N`` for query expansion), non-increasing along each row.
        details: method-specific intermediates (documented per function).
    """

    ranks: np.ndarray
    scores: np.ndarray
    details: dict[str, np.ndarray] = field(default_factory=dict)


# --- validation -------------------------------------------------------------------------------------------------


def _descriptors(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (n, D) array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point descriptors, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _pair(Q: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, x = _descriptors("Q", Q), _descriptors("X", X)
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"descriptor sizes differ: Q has D={q.shape[1]}, X has D={x.shape[1]}")
    return q, x


def _int_at_least(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _real(name: str, value: float, low: float = -np.inf, high: float = np.inf, *, open_high: bool = False) -> float:
    value = float(value)
    if not np.isfinite(value) or value < low or value > high or (open_high and value == high):
        raise ValueError(f"{name} must be finite and in [{low}, {high}{')' if open_high else ']'}, got {value!r}")
    return value


def _ranks(ranks: np.ndarray | None, Q: np.ndarray, X: np.ndarray, *, stable: bool = True) -> np.ndarray:
    """The initial ranking ``(L, n_q)``: :func:`initial_ranks` when ``ranks`` is None, else ``ranks`` validated."""
    if ranks is None:
        return initial_ranks(Q, X, stable=stable)
    r = np.asarray(ranks)
    if r.ndim != 2 or r.shape[1] != Q.shape[0] or r.shape[0] == 0:
        raise ValueError(f"ranks must have shape (L >= 1, n_q={Q.shape[0]}) as revisitop's, got {r.shape}")
    if not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"ranks must hold integer database ids, got dtype {r.dtype}")
    if r.min() < 0 or r.max() >= X.shape[0]:
        raise ValueError(f"ranks holds ids outside [0, N={X.shape[0]})")
    return r.astype(np.int64)


def _l2n(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), np.finfo(a.dtype).tiny)


def _by_rank(scores: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``scores (n_q, L)`` rearranged by ``order (n_q, L)`` and cast to float32."""
    return np.take_along_axis(scores, order, axis=1).astype(np.float32)


def _rerank_head(ranks: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``ranks (L, n_q)`` with its first ``M'`` rows permuted by ``order (n_q, M')`` (shortlist positions)."""
    out = ranks.copy()
    m = order.shape[1]
    out[:m] = np.take_along_axis(ranks[:m].T, order, axis=1).T
    return out


# --- initial ranking --------------------------------------------------------------------------------------------


def initial_ranks(Q: np.ndarray, X: np.ndarray, *, stable: bool = True) -> np.ndarray:
    """The initial ranking ``(N, n_q)`` by descriptor similarity only: ``argsort(-(X @ Q.T), axis=0)``.

    Computed as SuperGlobal's ``test_model.py`` does (``torch.matmul(X, Q.T)`` in float32 over the whole batch), so
    the fp32 scores are the official ones. ``stable=True`` breaks ties by the lower database id; ``stable=False`` is
    torch's default sort, whose tie order is implementation-defined.
    """
    q, x = _pair(Q, X)
    sim = torch.matmul(torch.from_numpy(x), torch.from_numpy(q).T)
    return torch.argsort(-sim, dim=0, stable=stable).numpy()


# --- query expansion and database augmentation -------------------------------------------------------------------


def _top_k_mask(sim: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest entries of each row of ``sim``, ties broken by the lower column index."""
    if k == 0:
        return np.zeros(sim.shape, dtype=bool)
    kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1 : k]  # the k-th largest value of each row
    above, tied = sim > kth, sim == kth
    room = k - above.sum(axis=1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=1) <= room))


def alpha_qe(Q: np.ndarray, X: np.ndarray, k: int, alpha: float, *, ranks: np.ndarray | None = None) -> Reranked:
    """α-weighted query expansion (Radenović et al., TPAMI 2018; dirtorch ``expand_descriptors``), then a new search.

    ``q̃ = l2n(q + Σ_{j ≤ k} max(q·x_j, 0)^α x_j)`` over the query's top-``k`` database items in ``ranks`` (the
    query itself keeps weight 1; ``alpha=0`` is average QE; ``k=0`` only re-normalises the query). dirtorch raises
    ``q·x_j`` to the power without the clamp; the two agree whenever the top-k similarities are non-negative.

    Returns:
        :class:`Reranked` with the full ``(N, n_q)`` ranking of ``X`` by ``X @ q̃`` (ties by lower id), ``scores``
        ``(n_q, N)`` and ``details["queries"]`` = the expanded queries ``(n_q, D)``.
    """
    q, x = _pair(Q, X)
    k = _int_at_least("k", k, minimum=0)
    alpha = _real("alpha", alpha, low=0.0)
    r = _ranks(ranks, q, x)
    if k > r.shape[0]:
        raise ValueError(f"k={k} exceeds the length of the initial ranking ({r.shape[0]})")
    top = r[:k].T  # (n_q, k)
    neighbours = x[top]  # (n_q, k, D)
    weights = np.maximum(np.einsum("nd,nkd->nk", q, neighbours), 0.0) ** alpha  # 0^0 = 1: alpha=0 averages
    expanded = _l2n(q + np.einsum("nk,nkd->nd", weights, neighbours)).astype(np.float32)
    scores = expanded @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")
    return Reranked(order.T.copy(), _by_rank(scores, order), {"queries": expanded})


def average_qe(Q: np.ndarray, X: np.ndarray, k: int, *, ranks: np.ndarray | None = None) -> Reranked:
    """Average query expansion (Chum et al., ICCV 2007): :func:`alpha_qe` with ``alpha=0``."""
    return alpha_qe(Q, X, k, 0.0, ranks=ranks)


def alpha_dba(X: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """α-weighted database-side augmentation (dirtorch ``expand_descriptors`` with ``db=None``).

    Each row becomes ``l2n(x_i + Σ_{j ≤ k} max(x_i·x_j, 0)^α x_j)`` over its top-``k`` *other* database items (the
    item itself keeps weight 1; ties by lower id). Costs ``O(N² D)``; rows are processed in chunks.

    Returns:
        the augmented database ``(N, D)`` float32, rows unit norm.
    """
    x = _descriptors("X", X)
    n = x.shape[0]
    k = _int_at_least("k", k, minimum=0)
    alpha = _real("alpha", alpha, low=0.0)
    if k > n - 1:
        raise ValueError(f"k={k} exceeds the number of other database items ({n - 1})")
    out = np.empty_like(x)
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n, step):
        rows = np.arange(start, min(start + step, n))
        sim = x[rows] @ x.T
        sim[np.arange(rows.size), rows] = -np.inf  # never one's own neighbour
        weights = np.where(_top_k_mask(sim, k), np.maximum(sim, 0.0) ** alpha, 0.0).astype(np.float32)
        out[rows] = _l2n(x[rows] + weights @ x)
    return out


# --- k-reciprocal re-ranking ------------------------------------------------------------------------------------


def _reciprocal(order: np.ndarray, k: int) -> np.ndarray:
    """Boolean ``R[i, j]``: j is among the k+1 nearest of i and i among the k+1 nearest of j (``order`` rows).

    ``R[i, i]`` is always set: the authors' code drops i only when more than k exact duplicates precede it.
    """
    forward = np.zeros(order.shape, dtype=bool)
    np.put_along_axis(forward, order[:, : k + 1], True, axis=1)
    np.fill_diagonal(forward, True)
    return forward & forward.T


def k_reciprocal_distance(
    dist: np.ndarray, *, k1: int = 20, k2: int = 6, lam: float = 0.3, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Jaccard and final distances of k-reciprocal re-ranking (Zhong et al., CVPR 2017, Eqs. 4-13) on one node set.

    Follows the authors' ``re_ranking.py``: ``dist (n, n)`` squared Euclidean distances are scaled by each row's
    maximum; R(i, k1) are the k1-reciprocal neighbours (self included), expanded by a candidate's R(c, round(k1/2))
    when more than 2/3 of it lies in R(i, k1); ``V_i ∝ exp(-d_ij)`` on that set; with ``k2 > 1`` each ``V_i`` is
    replaced by the mean over its k2 nearest nodes; ``d_J(i, j) = 1 - Σ min(V_i, V_j) / Σ max(V_i, V_j)``; the final
    distance is ``(1 - lam) d_J + lam d``. Neighbour order ties break by lower node index.

    Args:
        dist: ``(n, n)`` symmetric non-negative distances of the whole node set (probes and gallery together).
        rows: the nodes whose distances are returned (default all).

    Returns:
        ``(jaccard, final)``, both ``(len(rows), n)`` float64.
    """
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise ValueError(f"dist must be a square (n, n) matrix, got shape {d.shape}")
    if not np.isfinite(d).all() or d.min() < 0:
        raise ValueError("dist must be finite and non-negative")
    k1, k2 = _int_at_least("k1", k1), _int_at_least("k2", k2)
    lam = _real("lam", lam, 0.0, 1.0)
    n = d.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).ravel()
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must index nodes in [0, {n})")

    d = d / np.maximum(d.max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    order = np.argsort(d, axis=1, kind="stable")
    recip = _reciprocal(order, k1)
    half = _reciprocal(order, int(np.around(k1 / 2.0)))
    # candidate c of R(i) adds R(c, k1/2) when |R(c, k1/2) ∩ R(i)| > 2/3 |R(c, k1/2)|
    overlap = recip.astype(np.float64) @ half.T.astype(np.float64)
    accept = recip & (overlap > 2.0 / 3.0 * half.sum(axis=1)[None, :])
    expanded = recip | (accept.astype(np.float64) @ half.astype(np.float64) > 0)
    v = np.where(expanded, np.exp(-d), 0.0)
    v /= v.sum(axis=1, keepdims=True)
    if k2 > 1:
        v = v[order[:, :k2]].mean(axis=1)
    jaccard = np.empty((rows.size, n))
    for i, r in enumerate(rows):
        jaccard[i] = 1.0 - np.minimum(v[r], v).sum(axis=1) / np.maximum(v[r], v).sum(axis=1)
    return jaccard, (1.0 - lam) * jaccard + lam * d[rows]


def k_reciprocal_rerank(
    Q: np.ndarray,
    X: np.ndarray,
    *,
    M: int = 400,
    k1: int = 20,
    k2: int = 6,
    lam: float = 0.3,
    ranks: np.ndarray | None = None,
) -> Reranked:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of each query's top-``M`` shortlist.

    Limitation: Zhong et al. encode all probes and the whole gallery at once (``O((n_q + N)²)`` memory). Here each
    query is encoded on the node set ``{q} ∪ shortlist`` only (``M' + 1`` nodes, no other query), so the cost is
    ``O(n_q M'² (M' + D))`` time and ``O(M'² k2)`` memory, and an item outside the shortlist is never a neighbour.
    Distances are squared Euclidean, ``|a|² + |b|² - 2 a·b`` in float64 (``2 - 2 cos`` for unit vectors).

    Returns:
        :class:`Reranked`: the shortlist sorted by the final distance (ties keep the initial order), ``scores`` =
        ``-final distance`` ``(n_q, M')``, ``details["jaccard"]`` ``(n_q, M')`` by shortlist position.
    """
    q, x = _pair(Q, X)
    M = _int_at_least("M", M)
    r = _ranks(ranks, q, x)
    m = min(M, r.shape[0])
    final = np.empty((q.shape[0], m))
    jaccard = np.empty((q.shape[0], m))
    for i in range(q.shape[0]):
        nodes = np.concatenate([q[i : i + 1], x[r[:m, i]]]).astype(np.float64)
        gram = nodes @ nodes.T
        sq = np.diag(gram)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
        jac, fin = k_reciprocal_distance(dist, k1=k1, k2=k2, lam=lam, rows=np.array([0]))
        jaccard[i], final[i] = jac[0, 1:], fin[0, 1:]
    order = np.argsort(final, axis=1, kind="stable")
    return Reranked(_rerank_head(r, order), _by_rank(-final, order), {"jaccard": jaccard})


# --- diffusion --------------------------------------------------------------------------------------------------


def diffusion_graph(G: np.ndarray, k: int, gamma: float = 3.0) -> sp.csr_array:
    """Symmetrically normalised mutual kNN affinity ``W = D^-1/2 A D^-1/2`` (Iscen et al., CVPR 2017, Sec. 3).

    ``a_ij = max(g_i·g_j, 0)^γ`` when i and j are among each other's ``k`` nearest (by inner product, self excluded,
    ties by lower index), else 0; nodes without a mutual neighbour keep a zero row and column.

    Returns:
        ``(n, n)`` sparse float64 ``W``.
    """
    g = _descriptors("G", G).astype(np.float64)
    n = g.shape[0]
    k = _int_at_least("k", k)
    gamma = _real("gamma", gamma, low=0.0)
    sim = g @ g.T
    ranked = sim.copy()
    np.fill_diagonal(ranked, -np.inf)
    near = _top_k_mask(ranked, min(k, n - 1))
    i, j = np.nonzero(near & near.T)
    a = np.maximum(sim[i, j], 0.0) ** gamma
    deg = np.bincount(i, weights=a, minlength=n)
    inv = 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))  # isolated nodes have no entries to scale
    return sp.csr_array((a * inv[i] * inv[j], (i, j)), shape=(n, n))


def diffusion_rerank(
    Q: np.ndarray,
    X: np.ndarray,
    *,
    M: int = 1000,
    k: int = 50,
    kq: int = 10,
    gamma: float = 3.0,
    alpha: float = 0.99,
    tol: float = 1e-6,
    ranks: np.ndarray | None = None,
) -> Reranked:
    """Diffusion re-ranking (Iscen et al., CVPR 2017) on a mutual kNN graph of each query's top-``M`` shortlist.

    Variant: the offline graph is replaced by :func:`diffusion_graph` of the shortlist (``k`` neighbours, ``γ``), as
    in truncated diffusion. The query vector ``y`` holds ``max(q·x_j, 0)^γ`` at the first ``kq`` shortlist positions
    and 0 elsewhere; ``(I - αW) f = y`` is solved by conjugate gradient to relative residual ``tol``. The
    shortlist is sorted by ``f`` (ties, e.g. nodes unreachable from the seeds with ``f = 0``, keep the initial
    order).

    Returns:
        :class:`Reranked`: ``scores`` = ``f`` in rank order ``(n_q, M')``; ``details["seeds"]`` (``y``) and
        ``details["solution"]`` (``f``), both ``(n_q, M')`` by shortlist position.
    """
    q, x = _pair(Q, X)
    M, kq = _int_at_least("M", M), _int_at_least("kq", kq)
    alpha = _real("alpha", alpha, 0.0, 1.0, open_high=True)
    tol = _real("tol", tol, low=0.0)
    if tol == 0.0:
        raise ValueError("tol must be positive")
    r = _ranks(ranks, q, x)
    m = min(M, r.shape[0])
    seeds = np.zeros((q.shape[0], m))
    solution = np.empty((q.shape[0], m))
    for i in range(q.shape[0]):
        g = x[r[:m, i]]
        w = diffusion_graph(g, k, gamma)
        top = min(kq, m)
        seeds[i, :top] = np.maximum(g[:top].astype(np.float64) @ q[i].astype(np.float64), 0.0) ** gamma
        system = sp.identity(m, format="csr") - alpha * w
        solution[i], info = cg(system, seeds[i], rtol=tol, atol=0.0)
        if info != 0:
            warnings.warn(
                f"conjugate gradient did not converge for query {i} (info={info})", RuntimeWarning, stacklevel=2
            )
    order = np.argsort(-solution, axis=1, kind="stable")
    return Reranked(_rerank_head(r, order), _by_rank(solution, order), {"seeds": seeds, "solution": solution})


# --- SuperGlobal ------------------------------------------------------------------------------------------------


def _superglobal_batch(
    q: torch.Tensor, g: torch.Tensor, k1: int, beta: float, stable: bool, details: bool
) -> dict[str, torch.Tensor]:
    """MDescAug + RerankwMDA for queries ``q (a, D)`` and shortlists ``g (a, M', D)``, in the official op order."""
    sim = torch.einsum("abc,adc->abd", g, g)  # (a, M', M')
    neighbours = torch.argsort(-sim, dim=-1, stable=stable)[:, :, :k1]
    weights = torch.take_along_dim(sim, neighbours, dim=-1).unsqueeze(-1)  # = the values of sort(-sim), negated
    weights[:, :, 1:] *= beta
    weights[:, :, :1] = 1.0  # slot 0 (whichever item comes first, usually oneself) gets weight 1
    batch = torch.arange(g.shape[0])[:, None]
    # The official sum(G[nb] * w, 2) without its (a, M', K+1, D) temporary: slots added in the same order
    total = g[batch, neighbours[:, :, 0]] * weights[:, :, 0]
    for slot in range(1, k1):
        total += g[batch, neighbours[:, :, slot]] * weights[:, :, slot]
    refined = total / torch.sum(weights, 2)  # (a, M', D), not re-normalised
    s1 = torch.einsum("ac,adc->ad", q, refined)
    s1_order = torch.argsort(-s1, dim=-1, stable=stable)
    s1_sorted = torch.take_along_dim(s1, s1_order, dim=-1)
    refined_query = torch.max(torch.take_along_dim(refined, s1_order[:, :k1, None], dim=1), 1, True)[0]
    in_s1_order = torch.take_along_dim(refined, s1_order[:, :, None], dim=1)
    final_scores = (s1_sorted + torch.sum(torch.einsum("abc,adc->abd", refined_query, in_s1_order), 1)) / 2.0
    out = {
        "s1": s1,
        "s1_order": s1_order,
        "refined_query": refined_query[:, 0],
        "final_scores": final_scores,
        "final_order": torch.argsort(-final_scores, dim=-1, stable=stable),
    }
    if details:
        out |= {"neighbours": neighbours, "neighbour_weights": weights[..., 0], "refined_db": refined}
    return out


def superglobal_rerank(
    Q: np.ndarray,
    X: np.ndarray,
    *,
    M: int = 400,
    K: int = 9,
    beta: float = 0.15,
    ranks: np.ndarray | None = None,
    stable: bool = True,
    return_details: bool = False,
) -> Reranked:
    """SuperGlobal reranking, MDescAug + RerankwMDA (Shao et al., ICCV 2023; official ``modules/reranking/``).

    Per query, with shortlist ``T = ranks[:M']`` (``M' = min(M, len(ranks))``) and ``G = X[T]``:

    1. ``S = G Gᵀ``; each position j takes the K+1 positions with the largest ``S_j`` "including oneself" (slot 0
       is whichever comes first, not forced to be j); weights ``1`` in slot 0 and ``β·S`` in slots 1..K (no clamp).
    2. ``d̃_j = Σ w G[nb] / Σ w`` (not re-normalised); ``s1_j = q·d̃_j``; ``o1 = argsort(-s1)``.
    3. ``q̃`` = element-wise max of the K+1 best ``d̃`` by s1 (the query itself is not included).
    4. ``f = (s1 + q̃·d̃) / 2``, indexed in s1 order; the new top ``M'`` is ``T[o1[argsort(-f)]]``; the tail is kept.

    Everything runs in float32 torch with the official op sequence; on the oracle cases (torch 2.14.1, CPU) every
    output equals the official one bit for bit. ``stable=True`` (default) makes every sort stable: ties go to the
    lower database id, shortlist position or s1 rank, which the official code does not promise. ``stable=False``
    calls ``torch.argsort`` without ``stable`` as the official code does; its tie order is implementation-defined
    (torch version, device, row length, the fp32 bits of the batch), so it reproduces the official ties only under
    identical conditions (it does on the oracle's tie cases with this torch build).
    Queries are processed in chunks, so memory is ``O(chunk · M' · (M' + K·D))`` instead of the official
    ``n_q · M' · (K+1) · D`` gather.

    Returns:
        :class:`Reranked` with ``scores`` = final scores in rank order ``(n_q, M')`` and ``details``:
        ``initial_ranks (L, n_q)``; ``s1 (n_q, M')`` by shortlist position; ``s1_order (n_q, M')`` (positions);
        ``refined_query (n_q, D)``; ``final_scores (n_q, M')`` in s1 order; ``final_order (n_q, M')`` (indices into
        s1 order). With ``return_details``, also ``neighbours`` and ``neighbour_weights`` ``(n_q, M', K+1)`` and
        ``refined_db (n_q, M', D)``, by shortlist position (K+1 capped at M').
    """
    q, x = _pair(Q, X)
    M = _int_at_least("M", M)
    K = _int_at_least("K", K, minimum=0)
    beta = _real("beta", beta, low=0.0)
    r = _ranks(ranks, q, x, stable=stable)
    m = min(M, r.shape[0])
    k1 = min(K + 1, m)
    qt, xt = torch.from_numpy(q), torch.from_numpy(x)
    shortlist = torch.from_numpy(np.ascontiguousarray(r[:m].T))  # (n_q, M') ids
    step = max(1, _CHUNK_ELEMENTS // (m * (m + k1 * x.shape[1])))
    parts = [
        _superglobal_batch(qt[s : s + step], xt[shortlist[s : s + step]], k1, beta, stable, return_details)
        for s in range(0, q.shape[0], step)
    ]
    out = {key: torch.cat([p[key] for p in parts]).numpy() for key in parts[0]}
    order = np.take_along_axis(out["s1_order"], out["final_order"], axis=1)  # positions, best first
    scores = np.take_along_axis(out["final_scores"], out["final_order"], axis=1)
    return Reranked(_rerank_head(r, order), scores, {"initial_ranks": r, **out})


# --- learned (AMES) -------------------------------------------------------------------------------------------------

# query-database pairs scored per forward pass of the matching transformer
_PAIRS_PER_BATCH = 500


def learned_weights(reranker: str | os.PathLike, lam: float | None, gamma: float | None) -> tuple[float, float]:
    """``(λ, γ)`` of :func:`learned_rerank`: the values given, or those stored in the reranker file (chosen on
    held-out training landmarks by :mod:`irlib.train.reranker`) where None."""
    if lam is None or gamma is None:
        meta = load_reranker(reranker)[1]
        lam = meta.get("lam") if lam is None else lam
        gamma = meta.get("gamma") if gamma is None else gamma
        if lam is None or gamma is None:
            raise ValueError(f"{os.fspath(reranker)} stores no lam/gamma: pass them (rerank_params lam=..., gamma=...)")
    return _real("lam", lam, 0.0, 1.0), _real("gamma", gamma, low=0.0)


def learned_rerank(
    Q: np.ndarray,
    X: np.ndarray,
    *,
    reranker: str,
    M: int = 100,
    lam: float | None = None,
    gamma: float | None = None,
    ranks: np.ndarray | None = None,
    query_locals: BinaryLocals | None = None,
    database_locals: BinaryLocals | None = None,
) -> Reranked:
    """AMES reranking (Suma et al., ECCV 2024): each query's top-``M`` reordered by
    ``λ·(q·x) + (1 − λ)·sigmoid(γ·logit(q, x))``, the logit of the trained reranker in file ``reranker`` from the
    binary local descriptors of the query and of the database image; the tail is kept.

    ``query_locals`` / ``database_locals``: :class:`irlib.models.ames.BinaryLocals` aligned with the rows of ``Q`` and
    ``X``, made by the same reranker file (checked by its SHA-256). ``lam`` / ``gamma`` None: the file's values
    (:func:`learned_weights`). Each image's first self-attention is computed once, then the pairs in batches.

    Returns:
        :class:`Reranked` with ``scores`` = the combined scores in rank order ``(n_q, M')`` and ``details``: ``logits``
        and ``global`` (the descriptor similarity), both ``(n_q, M')`` by shortlist position, ``lam`` and ``gamma``.
    """
    q, x = _pair(Q, X)
    M = _int_at_least("M", M)
    lam, gamma = learned_weights(reranker, lam, gamma)
    r = _ranks(ranks, q, x)
    m = min(M, r.shape[0])
    sha = sha256_file(reranker)
    for name, locals_, n in (("query_locals", query_locals, len(q)), ("database_locals", database_locals, len(x))):
        if locals_ is None or len(locals_) != n:
            raise ValueError(f"learned reranking needs {name}: BinaryLocals of the {n} rows (got {locals_!r:.80})")
        if locals_.source != sha:
            raise ValueError(f"{name} were made by another reranker than {os.fspath(reranker)} (SHA-256 differs)")
    model = load_reranker(reranker)[0]
    shortlist = np.ascontiguousarray(r[:m].T)  # (n_q, M') database ids
    rows, position = np.unique(shortlist, return_inverse=True)
    logits = np.empty(shortlist.shape, dtype=np.float32)
    with torch.inference_mode():
        queries = model.encode(*query_locals.tensors())
        database = model.encode(*database_locals.take(rows).tensors())
        position = torch.from_numpy(position.reshape(shortlist.shape))
        for i in tqdm(range(len(q)), desc="learned rerank", unit="query", leave=False, disable=None):
            for s in range(0, m, _PAIRS_PER_BATCH):
                ids = position[i, s : s + _PAIRS_PER_BATCH]
                pairs = model.match(queries.repeat(i, len(ids)), database.take(ids))
                logits[i, s : s + len(ids)] = pairs.numpy()
    similarity = np.einsum("nd,nmd->nm", q, x[shortlist])
    combined = rerank_score(torch.from_numpy(similarity), torch.from_numpy(logits), lam, gamma).numpy()
    order = np.argsort(-combined, axis=1, kind="stable")
    details = {"logits": logits, "global": similarity, "lam": np.float32(lam), "gamma": np.float32(gamma)}
    return Reranked(_rerank_head(r, order), _by_rank(combined, order), details)


class LocalDescriptors(Protocol):
    """What a local reranker reads besides descriptors (e.g. :class:`irlib.eval.local_features.DatasetLocals`)."""

    def queries(self) -> BinaryLocals:
        """The local descriptors of every query, in query order."""

    def database(self, ids: np.ndarray) -> BinaryLocals:
        """The local descriptors of database images ``ids``."""

    def record(self) -> dict[str, Any]:
        """What a run records of them (JSON-ready)."""


# --- test-time batch attention over the shortlist (batch-dependent) ---------------------------------------------

DescriptorAttention = Callable[[torch.Tensor], torch.Tensor]
"""``attend(sets)``: ``(S, L, D)`` float32 descriptors -> ``(S, L, D)``, a descriptor-level batch attention run over
each of the ``S`` sets separately (:meth:`BatchAttention.attend`, L2-normalised rows)."""


def shortlist_attention_rerank(
    Q: np.ndarray,
    X: np.ndarray,
    *,
    attend: DescriptorAttention,
    M: int = 100,
    lam: float = 0.0,
    ranks: np.ndarray | None = None,
) -> Reranked:
    """BATCH-DEPENDENT test-time batch attention over each query's shortlist (Hou et al., BatchFormer, CVPR 2022).

    Per query, the set ``[q; x_T1; ...; x_TM']`` ``(M'+1, D)`` of the query and its top-``M`` shortlist
    ``T = ranks[:M']`` goes through ``attend`` (the model's trained encoder, :func:`batch_attention`), giving the
    attended ``q̂`` and ``x̂_j``; the shortlist is sorted by ``λ·(q·x_j) + (1 − λ)·(q̂·x̂_j)`` (``lam=0``, the
    default: the attended scores alone; ``lam=1``: the initial order). Ties keep the initial order; the tail is
    kept. Queries go through ``attend`` in chunks of ``(a, M'+1, D)`` sets.

    Batch-dependent (:data:`BATCH_DEPENDENT_RERANKERS`, ``"batch_dependent": true`` in a run's rerank record): the
    score of a (query, database image) pair depends on the other images of the shortlist, so it changes with ``M``,
    the database (e.g. distractors) and the initial ranking. The descriptors themselves never depend on the batch.

    Returns:
        :class:`Reranked` with ``scores`` = the combined scores in rank order ``(n_q, M')`` and ``details``:
        ``attended`` (``q̂·x̂_j``) and ``global`` (``q·x_j``), both ``(n_q, M')`` by shortlist position.
    """
    q, x = _pair(Q, X)
    M = _int_at_least("M", M)
    lam = _real("lam", lam, 0.0, 1.0)
    r = _ranks(ranks, q, x)
    m = min(M, r.shape[0])
    shortlist = np.ascontiguousarray(r[:m].T)  # (n_q, M') database ids
    attended = np.empty(shortlist.shape, dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // ((m + 1) * (x.shape[1] + m + 1)))  # the sets and their attention maps
    for s in range(0, len(q), step):
        sets = torch.from_numpy(np.concatenate([q[s : s + step, None], x[shortlist[s : s + step]]], axis=1))
        out = attend(sets)
        if tuple(out.shape) != tuple(sets.shape):
            raise ValueError(f"attend must map (S, L, D) sets to the same shape, got {tuple(out.shape)}")
        attended[s : s + step] = torch.einsum("ad,amd->am", out[:, 0], out[:, 1:]).float().cpu().numpy()
    similarity = np.einsum("nd,nmd->nm", q, x[shortlist])
    combined = lam * similarity + (1.0 - lam) * attended
    order = np.argsort(-combined, axis=1, kind="stable")
    return Reranked(_rerank_head(r, order), _by_rank(combined, order), {"attended": attended, "global": similarity})


# --- what rerankers read besides descriptors ----------------------------------------------------------------------

LOCAL_RERANKERS: frozenset[str] = frozenset({"learned"})
"""The shortlist rerankers that read local descriptors (a :class:`LocalDescriptors` provider) besides ``Q`` and
``X``."""
ATTENTION_RERANKERS: frozenset[str] = frozenset({"shortlist_attention"})
"""The shortlist rerankers that read a model's descriptor-level batch attention (a :class:`BatchAttention`)."""
BATCH_DEPENDENT_RERANKERS: frozenset[str] = frozenset({"shortlist_attention"})
"""The rerankers whose score of a (query, database image) pair depends on the other images they rerank with it
(the shortlist): a run records ``"batch_dependent": true`` for them."""


class RerankInputs(Protocol):
    """What a reranker reads besides ``Q``, ``X`` and its parameters (kept JSON-ready for the run record), passed by
    the pipeline: :class:`LocalInputs` or :class:`BatchAttention`."""

    rerankers: ClassVar[frozenset[str]]
    """The rerankers that read it."""

    def arguments(self, rows: np.ndarray) -> dict[str, Any]:
        """The reranker's keyword arguments when it reranks the database rows ``rows`` (distinct ids, sorted)."""

    def record(self) -> dict[str, Any]:
        """What the run's rerank record adds of them (JSON-ready)."""


@dataclass(frozen=True)
class LocalInputs:
    """A :class:`LocalDescriptors` provider as the :class:`RerankInputs` of :data:`LOCAL_RERANKERS`."""

    local_descriptors: LocalDescriptors
    rerankers: ClassVar[frozenset[str]] = LOCAL_RERANKERS

    def arguments(self, rows: np.ndarray) -> dict[str, Any]:
        """``query_locals`` of every query and ``database_locals`` of ``rows``."""
        return {
            "query_locals": self.local_descriptors.queries(),
            "database_locals": self.local_descriptors.database(rows),
        }

    def record(self) -> dict[str, Any]:
        return {"local_descriptors": self.local_descriptors.record()}


@dataclass(frozen=True)
class BatchAttention:
    """A model's trained descriptor-level batch attention, the :class:`RerankInputs` of :data:`ATTENTION_RERANKERS`
    (made by :func:`batch_attention`).

    Attributes:
        module: the :class:`~irlib.models.batchformer.BatchFormer` whose encoder attends.
        name: the model's name (:func:`irlib.models.method_label`), recorded.
    """

    module: BatchFormer
    name: str
    rerankers: ClassVar[frozenset[str]] = ATTENTION_RERANKERS

    def attend(self, sets: torch.Tensor) -> torch.Tensor:
        """``(S, L, D)`` -> ``(S, L, D)`` float32 on the CPU: :meth:`BatchFormer.attend_sets` in eval mode (no
        dropout, the training flag restored after), without gradients, on the module's device."""
        layer = self.module.batchformer
        weight = next(layer.parameters())
        training = layer.training
        layer.eval()
        try:
            with torch.inference_mode():
                out = self.module.attend_sets(sets.to(weight.device, weight.dtype))
        finally:
            layer.train(training)
        return out.float().cpu()

    def arguments(self, rows: np.ndarray) -> dict[str, Any]:
        """``attend``, the same for every shortlist."""
        return {"attend": self.attend}

    def record(self) -> dict[str, Any]:
        return {"batch_attention": {"model": self.name, "module": type(self.module).__name__}}


def batch_attention(model: torch.nn.Module) -> BatchAttention:
    """The descriptor-level batch attention of ``model``, for :func:`shortlist_attention_rerank`: a BatchFormer
    (``create_model("batchformer", ...)``, or ``create_model("compose", batch_attention="batchformer", ...)``, which
    is a BatchFormer around the composed network). Any other model raises ValueError naming it and saying why."""
    name = method_label(getattr(model, "config", None) or {}) or type(model).__name__
    if isinstance(model, BatchFormer):
        return BatchAttention(model, name)
    if isinstance(model, BatchTransformer):
        why = (
            "its Class Batch Attention reads every shortlisted image's backbone feature maps (queries and keys), "
            "not descriptors, so it cannot attend over stored descriptors"
        )
    else:
        why = "it has no batch attention"
    raise ValueError(
        f"shortlist_attention reranking needs a model with a descriptor-level batch attention, a BatchFormer "
        f"(method 'batchformer', or 'compose' with batch_attention='batchformer'); model {name!r} has none: {why}"
    )


# what each reranker that reads inputs needs, for the error that says what to pass
_INPUT_HINTS = dict.fromkeys(
    LOCAL_RERANKERS,
    "local descriptors: pass local_descriptors (e.g. irlib.eval.local_features.DatasetLocals(model, dataset, "
    "reranker, cfg))",
) | dict.fromkeys(
    ATTENTION_RERANKERS,
    "a model's descriptor-level batch attention: pass irlib.eval.rerank.batch_attention(model) as inputs "
    "(rerank_inputs in irlib.eval.pipeline; evaluate_model finds it in its model)",
)


def reranker_inputs(
    method: str, inputs: RerankInputs | None = None, local_descriptors: LocalDescriptors | None = None
) -> RerankInputs | None:
    """What ``method`` reads besides descriptors: ``inputs``, or ``local_descriptors`` as :class:`LocalInputs`; None
    for a reranker that reads nothing else (whatever is given is then ignored). Missing inputs, or inputs of another
    reranker, raise ValueError saying what to pass."""
    if method not in _INPUT_HINTS:
        return None
    if inputs is not None and local_descriptors is not None:
        raise ValueError("pass either inputs or local_descriptors, not both")
    if inputs is None and local_descriptors is not None:
        inputs = LocalInputs(local_descriptors)
    if inputs is None or method not in inputs.rerankers:
        got = "nothing" if inputs is None else type(inputs).__name__
        raise ValueError(f"{method} reranking reads {_INPUT_HINTS[method]}; got {got}")
    return inputs


# --- one entry point for the evaluation pipeline -----------------------------------------------------------------

RERANKERS: Registry[Callable[..., Reranked]] = Registry("reranker")
"""Names accepted by :func:`rerank_scores` (``--rerank`` of ``python -m irlib eval``): shortlist rerankers and the
query expansions (:data:`QUERY_EXPANSIONS`); those of :data:`BATCH_DEPENDENT_RERANKERS` score a pair with the rest
of the shortlist."""
for _name, _fn in (
    ("superglobal", superglobal_rerank),
    ("k_reciprocal", k_reciprocal_rerank),
    ("diffusion", diffusion_rerank),
    ("alpha_qe", alpha_qe),
    ("average_qe", average_qe),
    ("learned", learned_rerank),
    ("shortlist_attention", shortlist_attention_rerank),
):
    RERANKERS.register(_name, _fn)
QUERY_EXPANSIONS: frozenset[str] = frozenset({"alpha_qe", "average_qe"})
"""The rerankers that expand the queries and search again instead of reordering a shortlist."""
_PROVIDED = ("ranks", "return_details", "query_locals", "database_locals", "attend")  # the caller's, not parameters


def reranker_params(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``params`` completed with the method's defaults (what a run records); unknown names raise ValueError."""
    signature = inspect.signature(RERANKERS.get(method))
    accepted = {
        n: p.default for n, p in signature.parameters.items() if p.kind == p.KEYWORD_ONLY or n in ("k", "alpha")
    }
    for name in _PROVIDED:
        accepted.pop(name, None)
    unknown = sorted(set(params or {}) - set(accepted))
    if unknown:
        raise ValueError(f"{method} takes {', '.join(sorted(accepted))}; unknown parameter(s) {', '.join(unknown)}")
    merged = accepted | dict(params or {})
    missing = [n for n, v in merged.items() if v is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"{method} needs parameter(s) {', '.join(missing)}")
    if method == "learned":  # record the weights used, which default to the reranker file's
        merged["lam"], merged["gamma"] = learned_weights(merged["reranker"], merged["lam"], merged["gamma"])
    return merged


def shortlist_depth(method: str, params: Mapping[str, Any]) -> int:
    """How many of each query's top results ``method`` reads: ``k`` for query expansion, else ``M``."""
    return int(params["k"] if method in QUERY_EXPANSIONS else params["M"])


def _shortlist_rows(
    Q: np.ndarray, X: np.ndarray | StackedDatabase, top: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(Q float32, rows, X[rows] float32, ranks)``: the distinct database ``rows`` of the shortlists ``top (n_q, m)``,
    read once, and ``ranks (m, n_q)`` indexing into them, as the rerankers take them."""
    rows, local = np.unique(top, return_inverse=True)
    return np.asarray(Q, np.float32), rows, np.asarray(X[rows], np.float32), local.reshape(top.shape).T


def rerank_ids(
    method: str,
    Q: np.ndarray,
    X: np.ndarray | StackedDatabase,
    top: np.ndarray,
    params: Mapping[str, Any],
    local_descriptors: LocalDescriptors | None = None,
    *,
    inputs: RerankInputs | None = None,
) -> np.ndarray:
    """Each query's shortlist ``top (n_q, m)`` of database ids (best first) reordered by the shortlist reranker
    ``method`` (completed ``params``), reading only those rows of ``X`` (and of what it reads besides, ``inputs`` or
    ``local_descriptors``: :func:`reranker_inputs`); returns ``(n_q, m)`` ids."""
    provided = reranker_inputs(method, inputs, local_descriptors)
    q, rows, sub, ranks = _shortlist_rows(Q, X, top)
    extra = provided.arguments(rows) if provided is not None else {}
    result = RERANKERS[method](q, sub, ranks=ranks, **params, **extra)
    return rows[result.ranks[: top.shape[1]].T]


def expand_queries(
    method: str, Q: np.ndarray, X: np.ndarray | StackedDatabase, top: np.ndarray, params: Mapping[str, Any]
) -> np.ndarray:
    """The queries ``(n_q, D)`` expanded by the query expansion ``method`` (completed ``params``) from their top
    results ``top (n_q, k)``, reading only those rows of ``X``; search again with them."""
    q, _, sub, ranks = _shortlist_rows(Q, X, top)
    return RERANKERS[method](q, sub, ranks=ranks, **params).details["queries"]


def rerank_scores(
    method: str,
    scores: np.ndarray,
    Q: np.ndarray,
    X: np.ndarray | StackedDatabase,
    params: Mapping[str, Any] | None = None,
    local_descriptors: LocalDescriptors | None = None,
    *,
    inputs: RerankInputs | None = None,
) -> np.ndarray:
    """Rerank a full score matrix and return scores ``(n_q, N)`` whose order (descending, ties by lower id) is the
    reranked ranking, for ``evaluate(gnd, scores=...)``.

    The shortlist comes from ``scores`` alone (each query's top ``M`` or top ``k``, ties by lower id), and only the
    shortlisted rows of ``X`` are read, so a memory-mapped +1M database (or a :class:`StackedDatabase` of the test
    database and the distractors) stays on disk. Shortlist rerankers put their
    reordered shortlist above every other item, whose initial order is kept; query expansion searches ``X`` again
    with the expanded queries. :data:`LOCAL_RERANKERS` also read ``local_descriptors`` and
    :data:`ATTENTION_RERANKERS` ``inputs`` (:func:`batch_attention`; batch-dependent).
    """
    params = reranker_params(method, params)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (len(Q), X.shape[0]):
        raise ValueError(f"scores must have shape (n_q, N) = ({len(Q)}, {X.shape[0]}), got {scores.shape}")
    top = top_k_ids(scores, min(shortlist_depth(method, params), X.shape[0]))
    if method in QUERY_EXPANSIONS:
        if not top.shape[1]:  # nothing to expand with: the query is only re-normalised, the order is unchanged
            return scores
        return database_scores(expand_queries(method, Q, X, top, params), X)
    head = rerank_ids(method, Q, X, top, params, local_descriptors, inputs=inputs)
    out = scores.copy()
    # The head takes the next M' float32 values above each query's (positive) maximum, one ulp apart, so the
    # evaluator's score histogram keeps its resolution for the rest of the ranking.
    top_score = scores.max(axis=1, keepdims=True, initial=np.finfo(np.float32).tiny)
    head_bits = top_score.view(np.int32) + np.arange(head.shape[1], 0, -1, dtype=np.int32)
    np.put_along_axis(out, head, head_bits.view(np.float32), axis=1)
    return out
