"""Margin-softmax classification heads: ArcFace (with its three large-angle variants), CosFace, CurricularFace and
MadaCos, each owning its class-weight matrix and returning the cross-entropy of its margin logits.

Which published method uses which exact variant is in methods.md §13.2: SpCa/Token and DELG use
``ArcFace(fallback="none")``; DOLG, DELG-pytorch and CFCD's ``Arcface`` class are CurricularFace; CFCD and ULTRON
use MadaCos. Every head records its variant in ``config``.
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from irlib.losses import functional as LF
from irlib.losses.base import ConfiguredLoss
from irlib.losses.functional import ArcFallback, BReduce


class MarginHead(ConfiguredLoss):
    """Base of the margin heads: weight ``(num_classes · subcenters, embedding_dim)`` (Xavier-uniform), cosine
    logits with a max over sub-centres, and ``forward = cross_entropy(logits(embeddings, labels), labels)``.

    Embeddings need not be normalised (the head normalises them); everything runs in float32 (float64 for double
    inputs), even under autocast.
    """

    owns_classes = True

    def __init__(self, num_classes: int, embedding_dim: int, subcenters: int = 1) -> None:
        super().__init__(num_classes=num_classes, embedding_dim=embedding_dim, subcenters=subcenters)
        if num_classes < 1 or embedding_dim < 1 or subcenters < 1:
            raise ValueError(
                f"{type(self).__name__} needs num_classes, embedding_dim and subcenters >= 1, "
                f"got {num_classes}, {embedding_dim}, {subcenters}"
            )
        self.num_classes, self.embedding_dim, self.subcenters = num_classes, embedding_dim, subcenters
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """Class cosines ``(B, D) -> (B, C)`` (max over sub-centres), in float32 (float64 for double inputs)."""
        dtype = LF.compute_dtype(embeddings, self.weight)
        with LF.fp32(embeddings):
            return LF.cosine_logits(embeddings.to(dtype), self.weight.to(dtype), self.subcenters)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Scaled, margin-applied logits ``(B, D), (B,) -> (B, C)`` that ``forward`` feeds to cross-entropy."""
        raise NotImplementedError

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of the margin logits: ``(B, D), (B,) -> ()``."""
        logits = self.logits(embeddings, labels)
        with LF.fp32(logits):
            return F.cross_entropy(logits, labels)


class ArcFace(MarginHead):
    """Additive angular margin: target ``cos(θ_y + m)``, non-targets ``cos θ_j``, all times s (Deng et al.,
    CVPR 2019).

    The defaults are SpCa's head exactly (Token/SpCa ``networks/RetrievalNet.py`` ``ArcFace``; spca-training.md
    §2.8): s = 32, m = 0.15, every cosine clamped to ±(1 − 1e-6), θ = acos, and the margin applied only where
    θ_y ≤ π − m (``fallback="none"``). ``"cos_minus_msinm"`` and ``"easy_margin"`` are the insightface variants
    (:func:`irlib.losses.functional.arcface_target`). The margin applies in train and eval mode alike.
    """

    name = "arcface"

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        s: float = 32.0,
        m: float = 0.15,
        fallback: ArcFallback = "none",
        subcenters: int = 1,
    ) -> None:
        super().__init__(num_classes, embedding_dim, subcenters)
        if fallback not in get_args(ArcFallback):
            raise ValueError(f"unknown ArcFace fallback {fallback!r}; expected one of {get_args(ArcFallback)}")
        self.s, self.m, self.fallback = s, m, fallback
        self.config.update(s=s, m=m, fallback=fallback)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = self.cosine(embeddings).clamp(-1 + LF.COS_EPS, 1 - LF.COS_EPS)
        target = LF.arcface_target(LF.target_cosine(cos, labels), self.m, self.fallback)
        return self.s * LF.replace_target(cos, labels, target)


class CosFace(MarginHead):
    """Additive cosine margin: target ``cos θ_y − m``, non-targets ``cos θ_j``, all times s (Wang et al., CVPR 2018,
    whose s = 64, m = 0.35 are the defaults). The margin applies in train and eval mode alike."""

    name = "cosface"

    def __init__(
        self, num_classes: int, embedding_dim: int, s: float = 64.0, m: float = 0.35, subcenters: int = 1
    ) -> None:
        super().__init__(num_classes, embedding_dim, subcenters)
        self.s, self.m = s, m
        self.config.update(s=s, m=m)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.s * LF.additive_margin(self.cosine(embeddings), labels, self.m)


class CurricularFace(MarginHead):
    """CurricularFace, the head pycls-family code calls ``Arcface`` (DOLG, DELG-pytorch, CFCD; methods.md §13.1).

    In training: ``t ← momentum · mean_i cos θ_{i,y_i} + (1 − momentum) · t`` (buffer, no gradient, updated before
    use), then :func:`irlib.losses.functional.curricular_logits` times s. In eval mode the logits are plain
    ``s · cos θ`` and t is left alone, as in DOLG. Defaults s = 30, m = 0.15 are DOLG's.
    """

    name = "curricularface"
    t: Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        s: float = 30.0,
        m: float = 0.15,
        momentum: float = 0.01,
        subcenters: int = 1,
    ) -> None:
        super().__init__(num_classes, embedding_dim, subcenters)
        self.s, self.m, self.momentum = s, m, momentum
        self.register_buffer("t", torch.zeros(1))
        self.config.update(s=s, m=m, momentum=momentum)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = self.cosine(embeddings)
        if not self.training:
            return self.s * cos
        with torch.no_grad():
            mean_target = LF.target_cosine(cos.clamp(-1, 1), labels).mean()
            self.t.mul_(1 - self.momentum).add_(self.momentum * mean_target)
        return self.s * LF.curricular_logits(cos, labels, self.m, self.t)


class MadaCos(MarginHead):
    """MadaCos (CFCD, Zhu et al., ICCV 2023): a CosFace whose s and m are recomputed every batch from the (all-
    gathered) median target cosine so that the median sample's target probability is ρ (methods.md §10).

    s ≥ ``s_min``, m ≥ 0 and m = 0 in eval mode; neither carries a gradient (CFCD returns ``grad · s``). The last
    values are kept in ``last_scale`` / ``last_margin`` (0-d tensors) for logging. ρ = 0.02 is CFCD's (ULTRON:
    0.04 [3rd]).
    """

    name = "madacos"

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        rho: float = 0.02,
        k_c: float = 9_999_999,
        s_min: float = 32.0,
        b_reduce: BReduce = "default",
        subcenters: int = 1,
    ) -> None:
        super().__init__(num_classes, embedding_dim, subcenters)
        if not 0 < rho < 1 or num_classes < 2:
            raise ValueError(f"MadaCos needs 0 < rho < 1 and num_classes >= 2, got rho={rho}, {num_classes=}")
        if b_reduce not in get_args(BReduce):
            raise ValueError(f"unknown b_reduce {b_reduce!r}; expected one of {get_args(BReduce)}")
        self.rho, self.k_c, self.s_min, self.b_reduce = rho, k_c, s_min, b_reduce
        self.last_scale: Tensor | None = None
        self.last_margin: Tensor | None = None
        self.config.update(rho=rho, k_c=k_c, s_min=s_min, b_reduce=b_reduce)

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = self.cosine(embeddings)
        s, m = LF.madacos_scale_margin(cos, labels, self.rho, self.k_c, self.s_min, self.b_reduce, self.training)
        self.last_scale, self.last_margin = s, m
        return s * LF.additive_margin(cos, labels, m)
