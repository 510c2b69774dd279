"""AP-optimising ranking losses over a batch: Smooth-AP, FastAP, ROADMAP (SupAP + calibration) and APLoss's
quantised AP (methods.md §14).

Every batch item is a query against all the other items (itself excluded), ranked by cosine similarity of the
L2-normalised embeddings; its positives are the other items with its label. The loss is ``1 − mean AP`` over the
queries that have a positive (0, still attached to the graph, when none has). The exact AP these surrogates
approximate is the non-interpolated AP of that ranking. The official Smooth-AP and ROADMAP batch code keep the
query in its own ranking, as a positive at rank 1 (self-similarity 1); leaving it out targets the retrieval AP.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from irlib.losses import functional as LF
from irlib.losses.base import ConfiguredLoss


class _BatchAPLoss(ConfiguredLoss):
    """Shared batch handling of the AP losses; subclasses define ``query_ap(sim, pos, valid) -> (B,)``."""

    needs_positives = True

    def query_ap(self, sim: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        """Per-query surrogate AP ``(B, B) -> (B,)`` (NaN for a query without positives)."""
        raise NotImplementedError

    @staticmethod
    def batch_scores(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(sim, pos, neg)``: cosine similarities ``(B, B)`` (float32, or float64 for double inputs) and the label
        masks (the diagonal in neither)."""
        x = F.normalize(embeddings.to(LF.compute_dtype(embeddings)), dim=-1)
        return x @ x.T, *LF.label_masks(labels)

    def ap_loss(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(1 − mean AP, sim, pos, neg)``; the mean is over queries with at least one positive."""
        sim, pos, neg = self.batch_scores(embeddings, labels)
        ap = self.query_ap(sim, pos, pos | neg)
        return LF.reduce_terms(1 - ap[~ap.isnan()], "mean", sim), sim, pos, neg

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``(B, D), (B,) -> ()``."""
        with LF.fp32(embeddings):
            return self.ap_loss(embeddings, labels)[0]


class SmoothAP(_BatchAPLoss):
    """Smooth-AP (Brown et al., ECCV 2020): ranks from ``sigmoid((s_j − s_i) / tau)``; tau = 0.01 is the paper's."""

    name = "smoothap"

    def __init__(self, tau: float = 0.01) -> None:
        super().__init__(tau=tau)
        self.tau = tau

    def query_ap(self, sim: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        return LF.smooth_ap(sim, pos, valid, self.tau)


class FastAP(_BatchAPLoss):
    """FastAP (Cakir et al., CVPR 2019): soft histogram AP over squared distances ``2 − 2 cos ∈ [0, 4]``;
    ``bins = 10`` is the official default (``bins + 1`` centres)."""

    name = "fastap"

    def __init__(self, bins: int = 10) -> None:
        super().__init__(bins=bins)
        self.bins = bins

    def query_ap(self, sim: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        return LF.fast_ap(2 - 2 * sim, pos, valid, self.bins)


class QuantizedAP(_BatchAPLoss):
    """APLoss (Revaud et al., ICCV 2019): quantised AP over ``bins`` triangular bins of the similarity range
    ``[lo, hi]`` (code defaults: 25 bins on [0, 1]; similarities outside saturate the end bins)."""

    name = "quantizedap"

    def __init__(self, bins: int = 25, lo: float = 0.0, hi: float = 1.0) -> None:
        if not 2 <= bins or not lo < hi:
            raise ValueError(f"QuantizedAP needs bins >= 2 and lo < hi, got {bins=}, {lo=}, {hi=}")
        super().__init__(bins=bins, lo=lo, hi=hi)
        self.bins, self.lo, self.hi = bins, lo, hi

    def query_ap(self, sim: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        return LF.quantized_ap(sim, pos, valid, self.bins, self.lo, self.hi)


class ROADMAP(_BatchAPLoss):
    """ROADMAP (Ramzi et al., NeurIPS 2021): ``supap_weight · (1 − mean SupAP) + calibration_weight · L_calib``.

    Defaults are ``roadmap/config/loss/roadmap.yaml`` (methods.md §14.3): tau = 0.01, rho = 100, delta = 0.05,
    offset = 1.44, both weights 1, calibration margins 0.9 (positives) and 0.6 (negatives) on the cosine.
    ``linear_from_delta`` picks methods.md's ``ρ·(D − δ) + offset`` (True) or the official ``step_rank``'s
    ``ρ·D + offset`` (False) beyond δ. The paper's ``(1 − λ), λ`` weighting is ``supap_weight = 1 − λ``,
    ``calibration_weight = λ``. No cross-batch memory.
    """

    name = "roadmap"

    def __init__(
        self,
        tau: float = 0.01,
        rho: float = 100.0,
        delta: float = 0.05,
        offset: float = 1.44,
        linear_from_delta: bool = True,
        pos_margin: float = 0.9,
        neg_margin: float = 0.6,
        supap_weight: float = 1.0,
        calibration_weight: float = 1.0,
    ) -> None:
        rank = {"tau": tau, "rho": rho, "delta": delta, "offset": offset, "linear_from_delta": linear_from_delta}
        calib = {"pos_margin": pos_margin, "neg_margin": neg_margin}
        super().__init__(**rank, **calib, supap_weight=supap_weight, calibration_weight=calibration_weight)
        self.rank_kwargs, self.calib_kwargs = rank, calib
        self.supap_weight, self.calibration_weight = supap_weight, calibration_weight

    def query_ap(self, sim: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        return LF.sup_ap(sim, pos, valid, **self.rank_kwargs)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``(B, D), (B,) -> ()``."""
        with LF.fp32(embeddings):
            supap_loss, sim, pos, neg = self.ap_loss(embeddings, labels)
            calib = LF.calibration_loss(sim, pos, neg, **self.calib_kwargs)
            return self.supap_weight * supap_loss + self.calibration_weight * calib
