"""Pure tensor functions behind :mod:`irlib.losses`: cosine logits, margin transforms, pair distances, triplet
miners and AP surrogates (no parameters, no state; the modules in ``margin``, ``pairs`` and ``ranking`` wrap them).

Shapes: ``B`` embeddings of size ``D``, ``C`` classes with ``K`` sub-centres; ranking functions take ``(Q, N)`` score
matrices of Q queries against N items with boolean ``pos`` (relevant) and ``valid`` (rankable) masks of that shape.
Per-query AP functions return ``(Q,)`` with NaN for queries without a positive.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ArcFallback = Literal["none", "cos_minus_msinm", "easy_margin"]
"""What ArcFace does where θ_y + m would pass π (methods.md §13.2)."""

BReduce = Literal["default", "median", "mean"]
"""MadaCos ``method_B``: non-target mass of the median sample, or the median / mean over the batch."""

TripletMiner = Callable[[Tensor, Tensor, float], Tensor]
"""``miner(dist (B, B), labels (B,), margin) -> mask (B, B, B)``, ``mask[a, p, n]`` selecting triplet (a, p, n)."""

COS_EPS = 1e-6
"""Cosines are clamped to ±(1 − COS_EPS) before ``acos`` (SpCa/Token ``ArcFace``), so gradients stay finite at ±1."""

_DIST_EPS = 1e-12
_RANK_CLAMP = 50.0


def fp32(x: Tensor) -> torch.autocast:
    """A context with autocast disabled on ``x``'s device: the losses compute in float32 even inside AMP regions."""
    return torch.autocast(x.device.type, enabled=False)


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 when any of ``tensors`` is: half-precision inputs are upcast, double is kept."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)


# ----------------------------------------------------------------------------------------------- margin softmax


def cosine_logits(embeddings: Tensor, weight: Tensor, subcenters: int = 1) -> Tensor:
    """Cosine of each embedding with each class, ``(B, D), (C·K, D) -> (B, C)``; both sides are L2-normalised.

    With ``subcenters = K > 1`` rows ``c·K … c·K + K − 1`` of ``weight`` are class c's sub-centres and the class
    cosine is their max (sub-center ArcFace, Deng et al., ECCV 2020).
    """
    cos = F.linear(F.normalize(embeddings, dim=-1), F.normalize(weight, dim=-1))
    if subcenters > 1:
        cos = cos.unflatten(-1, (-1, subcenters)).amax(-1)
    return cos


def target_cosine(cos: Tensor, labels: Tensor) -> Tensor:
    """``cos[i, labels[i]]``: ``(B, C), (B,) -> (B,)``."""
    return cos.gather(1, labels[:, None]).squeeze(1)


def replace_target(logits: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """``logits`` (B, C) with entry ``(i, labels[i])`` set to ``target[i]``; out of place, differentiable in both."""
    return logits.scatter(1, labels[:, None], target[:, None].to(logits.dtype))


def additive_margin(cos: Tensor, labels: Tensor, m: float | Tensor) -> Tensor:
    """CosFace target ``cos θ_y − m``, non-targets unchanged (Wang et al., CVPR 2018), ``(B, C) -> (B, C)``."""
    return cos - m * F.one_hot(labels, cos.shape[1]).to(cos.dtype)


def _angle_plus_margin(cos_y: Tensor, m: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(clamped cos_y, θ_y, cos(θ_y + m))`` with θ_y = acos(clamp(cos_y, ±(1 − eps)))."""
    cos_y = cos_y.clamp(-1 + eps, 1 - eps)
    theta = torch.acos(cos_y)
    return cos_y, theta, torch.cos(theta + m)


def arcface_target(cos_y: Tensor, m: float, fallback: ArcFallback = "none", eps: float = COS_EPS) -> Tensor:
    """ArcFace target logit cos(θ_y + m) with a rule for large angles (Deng et al., CVPR 2019), ``(B,) -> (B,)``.

    θ_y = acos(clamp(cos_y, ±(1 − eps))). ``"none"`` (SpCa/Token, DELG): margin only where θ_y ≤ π − m, else the
    clamped cos_y; ``"cos_minus_msinm"`` (insightface, CurricularFace): ``cos_y − m·sin m`` there instead;
    ``"easy_margin"``: margin only where cos_y > 0 (θ_y < π/2), else cos_y.
    """
    cos_y, theta, phi = _angle_plus_margin(cos_y, m, eps)
    if fallback == "none":
        return torch.where(theta <= math.pi - m, phi, cos_y)
    if fallback == "cos_minus_msinm":
        return torch.where(theta <= math.pi - m, phi, cos_y - m * math.sin(m))
    if fallback == "easy_margin":
        return torch.where(cos_y > 0, phi, cos_y)
    raise ValueError(f"unknown ArcFace fallback {fallback!r}; expected 'none', 'cos_minus_msinm' or 'easy_margin'")


def curricular_logits(cos: Tensor, labels: Tensor, m: float, t: Tensor | float, eps: float = COS_EPS) -> Tensor:
    """CurricularFace cosines before scaling (Huang et al., CVPR 2020; DOLG ``Arcface``), ``(B, C) -> (B, C)``.

    Target: ``arcface_target(cos_y, m, "cos_minus_msinm")``. Non-target j: ``cos_j`` if ``cos_j ≤ cos(θ_y + m)``,
    else the hard negative is re-weighted to ``cos_j · (t + cos_j)`` (methods.md §13.1).
    """
    cos = cos.clamp(-1, 1)
    cos_y = target_cosine(cos, labels)
    _, _, phi = _angle_plus_margin(cos_y, m, eps)
    out = torch.where(cos > phi[:, None], cos * (t + cos), cos)
    return replace_target(out, labels, arcface_target(cos_y, m, "cos_minus_msinm", eps))


def all_gather_nograd(x: Tensor) -> Tensor:
    """``x`` of every rank concatenated along dim 0, detached (``x`` itself when not distributed).

    Every rank must pass the same shape (as ``torch.distributed.all_gather`` requires).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    world = torch.distributed.get_world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    torch.distributed.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


@torch.no_grad()
def madacos_scale_margin(
    cos: Tensor,
    labels: Tensor,
    rho: float = 0.02,
    k_c: float = 9_999_999,
    s_min: float = 32.0,
    b_reduce: BReduce = "default",
    training: bool = True,
    gather: Callable[[Tensor], Tensor] = all_gather_nograd,
) -> tuple[Tensor, Tensor]:
    """MadaCos adaptive scale and margin ``(s, m)`` (0-d, no gradient) for cosines ``(B, C)`` (CFCD, Zhu et al.,
    ICCV 2023, ``core/model/madacos.py``; methods.md §10).

    With c_med the (lower) median target cosine over all ranks, attained at sample i*:
    ``s = max(s_min, ln(k_c (1 − ρ) / ρ) / (1 − c_med))`` and ``m = c_med − ln(B ρ / (1 − ρ)) / s`` with B the
    non-target mass ``Σ_{j≠y} exp(s cos_j)`` of i* (``b_reduce="default"``), so that sample i*'s target softmax
    probability is exactly ρ. m is clamped to ≥ 0 and is 0 when not ``training``. B is handled in log space (the
    official code overflows float32 once s·cos_j > 88) and ``1 − c_med`` is floored at ``COS_EPS``.
    """
    cos = cos.detach()
    all_cos_y = gather(target_cosine(cos, labels))
    c_med, i_med = all_cos_y.median(0)
    s = (math.log(k_c * (1 - rho) / rho) / (1 - c_med).clamp_min(COS_EPS)).clamp_min(s_min)
    target = F.one_hot(labels, cos.shape[1]).bool()
    log_b = gather(torch.logsumexp((s * cos).masked_fill(target, -math.inf), dim=1))
    if b_reduce == "default":
        log_b_avg = log_b[i_med]
    elif b_reduce == "median":
        log_b_avg = log_b.median()
    elif b_reduce == "mean":
        log_b_avg = torch.logsumexp(log_b, 0) - math.log(log_b.numel())
    else:
        raise ValueError(f"unknown b_reduce {b_reduce!r}; expected 'default', 'median' or 'mean'")
    m = c_med - (log_b_avg + math.log(rho / (1 - rho))) / s
    return s, m.clamp_min(0) if training else torch.zeros_like(m)


# ----------------------------------------------------------------------------------------------- pairs and triplets


def pairwise_distances(x: Tensor, y: Tensor | None = None, squared: bool = False) -> Tensor:
    """Euclidean (or squared Euclidean) distances between rows, ``(B, D), (N, D) -> (B, N)`` (``y`` defaults to x).

    Near-zero distances are exactly 0 with zero gradient, so identical embeddings give finite gradients.
    """
    y = x if y is None else y
    sq = ((x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2 * x @ y.T).clamp_min(0)
    if squared:
        return sq
    return torch.where(sq > _DIST_EPS, sq.clamp_min(_DIST_EPS).sqrt(), torch.zeros_like(sq))


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(pos, neg)`` boolean ``(B, B)`` masks of a batch: same label without the diagonal, and different label."""
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device), ~same


def all_triplets(dist: Tensor, labels: Tensor, margin: float = 0.0) -> Tensor:
    """Every valid triplet: ``mask[a, p, n]`` with y_p = y_a (p ≠ a) and y_n ≠ y_a, ``(B, B) -> (B, B, B)``."""
    pos, neg = label_masks(labels)
    return pos[:, :, None] & neg[:, None, :]


def batch_hard_triplets(dist: Tensor, labels: Tensor, margin: float = 0.0) -> Tensor:
    """One triplet per anchor: its farthest positive and closest negative (Hermans et al., 2017, "In Defense of the
    Triplet Loss"); anchors lacking either get none. ``(B, B) -> (B, B, B)``."""
    pos, neg = label_masks(labels)
    dist = dist.detach()
    p = dist.masked_fill(~pos, -math.inf).argmax(1)
    n = dist.masked_fill(~neg, math.inf).argmin(1)
    anchors = torch.arange(len(labels), device=labels.device)
    mask = torch.zeros(len(labels), len(labels), len(labels), dtype=torch.bool, device=labels.device)
    mask[anchors, p, n] = pos.any(1) & neg.any(1)
    return mask


def semihard_triplets(dist: Tensor, labels: Tensor, margin: float = 0.0) -> Tensor:
    """Triplets whose negative is farther than the positive but within the margin, d_ap < d_an < d_ap + margin
    (Schroff et al., CVPR 2015, FaceNet). ``(B, B) -> (B, B, B)``."""
    dist = dist.detach()
    d_ap, d_an = dist[:, :, None], dist[:, None, :]
    return all_triplets(dist, labels) & (d_an > d_ap) & (d_an < d_ap + margin)


MINERS: dict[str, TripletMiner] = {"all": all_triplets, "hard": batch_hard_triplets, "semihard": semihard_triplets}
"""The built-in triplet miners by name."""


def get_miner(miner: str | TripletMiner) -> TripletMiner:
    """A miner by name (``"all"``, ``"hard"``, ``"semihard"``) or the callable itself."""
    if callable(miner):
        return miner
    if miner not in MINERS:
        raise ValueError(f"unknown miner {miner!r}; expected one of {sorted(MINERS)} or a callable")
    return MINERS[miner]


def reduce_terms(terms: Tensor, reduction: Literal["mean", "sum"], anchor: Tensor) -> Tensor:
    """Mean or sum of the selected loss ``terms`` (1-D); 0 attached to ``anchor``'s graph when there are none."""
    if terms.numel() == 0:
        return anchor.sum() * 0
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum()
    raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'sum'")


def mean_nonzero(terms: Tensor) -> Tensor:
    """Mean over the strictly positive entries of ``terms`` (0 when none): PML's ``AvgNonZeroReducer``."""
    nonzero = terms > 0
    return (terms * nonzero).sum() / nonzero.sum().clamp_min(1)


def calibration_loss(sim: Tensor, pos: Tensor, neg: Tensor, pos_margin: float = 0.9, neg_margin: float = 0.6) -> Tensor:
    """ROADMAP's calibration term, a contrastive loss on similarities (Ramzi et al., NeurIPS 2021,
    ``roadmap/losses/calibration_loss.py``): ``relu(pos_margin − s)`` over positive pairs plus
    ``relu(s − neg_margin)`` over negative pairs, each averaged over its non-zero terms. ``(B, B) -> ()``."""
    return mean_nonzero(F.relu(pos_margin - sim)[pos]) + mean_nonzero(F.relu(sim - neg_margin)[neg])


# ----------------------------------------------------------------------------------------------- AP surrogates


def tau_sigmoid(x: Tensor, tau: float) -> Tensor:
    """``sigmoid(x / tau)`` with the exponent clamped to ±50 (Smooth-AP ``sigmoid``)."""
    return 1.0 / (1.0 + torch.exp((-x / tau).clamp(-_RANK_CLAMP, _RANK_CLAMP)))


def _score_differences(scores: Tensor) -> Tensor:
    """``diff[q, i, j] = scores[q, j] − scores[q, i]``: ``(Q, N) -> (Q, N, N)``; > 0 when j ranks before i."""
    return scores[:, None, :] - scores[:, :, None]


def _mean_over_positives(total: Tensor, count: Tensor, pos: Tensor) -> Tensor:
    """``total / count`` per query, NaN without positives; the NaN branch passes no gradient (no 0/0 in backward)."""
    has_pos = pos.any(-1)
    return torch.where(has_pos, total / count.clamp_min(1e-16), torch.full_like(total, math.nan))


def rank_ap(before: Tensor, pos: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-query AP from soft "j ranks before i" indicators ``before[q, i, j]`` ``(Q, N, N)``, ``-> (Q,)``.

    ``rank(i) = 1 + Σ_{j ≠ i, valid} before[i, j]``, ``rank⁺(i) = 1 + Σ_{j ≠ i, pos} before[i, j]`` and
    ``AP = mean_{i ∈ pos} rank⁺(i) / rank(i)``; with the exact step function this is the non-interpolated AP.
    """
    valid = torch.ones_like(pos) if valid is None else valid
    before = before * ~torch.eye(before.shape[-1], dtype=torch.bool, device=before.device)
    rank_all = 1 + (before * valid[:, None, :]).sum(-1)
    rank_pos = 1 + (before * pos[:, None, :]).sum(-1)
    return _mean_over_positives((pos * rank_pos / rank_all).sum(-1), pos.sum(-1), pos)


def smooth_ap(scores: Tensor, pos: Tensor, valid: Tensor | None = None, tau: float = 0.01) -> Tensor:
    """Smooth-AP per query (Brown et al., ECCV 2020, ``src/Smooth_AP_loss.py``): ``rank_ap`` with
    ``before = sigmoid((s_j − s_i) / tau)`` for every item j. ``(Q, N) -> (Q,)``."""
    return rank_ap(tau_sigmoid(_score_differences(scores), tau), pos, valid)


def supap_negative_rank(
    diff: Tensor,
    tau: float = 0.01,
    rho: float = 100.0,
    delta: float = 0.05,
    offset: float = 1.44,
    linear_from_delta: bool = True,
) -> Tensor:
    """ROADMAP's rank surrogate H⁻ for a negative ``diff = s_j − s_i`` ahead of positive i (Ramzi et al.,
    NeurIPS 2021, ``step_rank``): ``sigmoid(D/τ)`` for D ≤ 0, ``0.5 + sigmoid(D/τ)`` for 0 < D ≤ δ, and
    ``ρ·(D − δ) + offset`` beyond (methods.md §14.3; ``linear_from_delta=False`` gives the official code's
    ``ρ·D + offset``). With offset ≥ 1 it upper-bounds the step function, so SupAP ≤ AP, and for D > 0 its slope
    never vanishes."""
    sig = tau_sigmoid(diff, tau)
    linear = rho * (diff - delta if linear_from_delta else diff) + offset
    return torch.where(diff <= 0, sig, torch.where(diff <= delta, 0.5 + sig, linear))


def sup_ap(scores: Tensor, pos: Tensor, valid: Tensor | None = None, **negative_rank: float | bool) -> Tensor:
    """ROADMAP's SupAP per query: ``rank_ap`` with the exact step ``[s_j ≥ s_i]`` for positive j and
    :func:`supap_negative_rank` (keyword arguments ``tau, rho, delta, offset, linear_from_delta``) for negative j.
    ``(Q, N) -> (Q,)``."""
    diff = _score_differences(scores)
    before = torch.where(pos[:, None, :], (diff >= 0).to(diff.dtype), supap_negative_rank(diff, **negative_rank))
    return rank_ap(before, pos, valid)


def soft_histogram(values: Tensor, lo: float, hi: float, bins: int) -> Tensor:
    """Triangular soft assignment to ``bins`` centres ``linspace(lo, hi, bins)``, ``(...) -> (..., bins)``.

    Each value (clamped to [lo, hi], so the end bins saturate as in APLoss) splits linearly between its two nearest
    centres, so every row sums to 1.
    """
    if bins < 2:
        raise ValueError(f"need at least 2 bin centres, got {bins}")
    centres = torch.linspace(lo, hi, bins, dtype=values.dtype, device=values.device)
    width = (hi - lo) / (bins - 1)
    return (1 - (values.clamp(lo, hi)[..., None] - centres).abs() / width).clamp_min(0)


def histogram_ap(assign: Tensor, pos: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-query AP of soft bin assignments ``assign (Q, N, L)``, bins ordered best first, ``-> (Q,)``.

    With soft counts h⁺_l (positives) and h_l (valid items) per bin and their cumulative sums H⁺_l, H_l:
    ``AP = Σ_l h⁺_l · H⁺_l / H_l / Σ_l h⁺_l`` (FastAP's and APLoss's common form). Exact when every item sits
    alone on a bin centre; finer bins alone do not make it exact: an item between two centres splits its mass,
    which under-counts a positive at rank r by up to 1/(4r) (tests/losses/test_functional.py).
    """
    valid = torch.ones_like(pos) if valid is None else valid
    h_pos = (assign * pos[..., None]).sum(1)
    h_all = (assign * valid[..., None]).sum(1)
    terms = h_pos * h_pos.cumsum(-1) / h_all.cumsum(-1).clamp_min(1e-16)
    return _mean_over_positives(terms.sum(-1), h_pos.sum(-1), pos)


def fast_ap(dist2: Tensor, pos: Tensor, valid: Tensor | None = None, bins: int = 10) -> Tensor:
    """FastAP per query from squared distances of unit vectors ``dist2 ∈ [0, 4]`` (Cakir et al., CVPR 2019,
    ``pytorch/FastAP_loss.py``): ``bins + 1`` triangular bins of width 4/bins centred on ``linspace(0, 4)``.
    ``(Q, N) -> (Q,)``."""
    return histogram_ap(soft_histogram(dist2, 0.0, 4.0, bins + 1), pos, valid)


def quantized_ap(
    scores: Tensor, pos: Tensor, valid: Tensor | None = None, bins: int = 25, lo: float = 0.0, hi: float = 1.0
) -> Tensor:
    """APLoss's quantised AP per query (Revaud et al., ICCV 2019, ``dirtorch/loss.py``): ``bins`` triangular bins
    centred on ``linspace(lo, hi)``, the end bins saturating, accumulated from the highest score. ``(Q, N) -> (Q,)``."""
    return histogram_ap(soft_histogram(scores, lo, hi, bins).flip(-1), pos, valid)
