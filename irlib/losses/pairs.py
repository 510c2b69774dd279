"""Pair and triplet losses over all mined tuples of a batch: contrastive (cirtorch form) and triplet.

Both take ``forward(embeddings (B, D), labels (B,)) -> ()``, L2-normalise the embeddings (unless told not to) and
mine triplets ``(a, p, n)`` with a miner (``"all"``, ``"hard"``, ``"semihard"`` or a callable, see
:mod:`irlib.losses.functional`) on the distance the loss uses. The contrastive loss uses the distinct pairs of the
mined triplets: positives ``(a, p)`` and negatives ``(a, n)``, so an anchor without a positive or a negative in the
batch contributes nothing, as in tuple training.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from irlib.losses import functional as LF
from irlib.losses.base import ConfiguredLoss
from irlib.losses.functional import TripletMiner


def _miner_name(miner: str | TripletMiner) -> str:
    return miner if isinstance(miner, str) else getattr(miner, "__name__", repr(miner))


class _MinedLoss(ConfiguredLoss):
    """Shared set-up of the mined losses: margin, miner, reduction and normalisation."""

    needs_positives = True

    def __init__(
        self,
        margin: float,
        miner: str | TripletMiner,
        reduction: Literal["mean", "sum"],
        normalize: bool,
        **extra: Any,
    ) -> None:
        super().__init__(margin=margin, miner=_miner_name(miner), reduction=reduction, normalize=normalize, **extra)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'sum'")
        self.margin, self.miner, self.reduction, self.normalize = margin, LF.get_miner(miner), reduction, normalize

    def _mine(self, embeddings: Tensor, labels: Tensor, squared: bool) -> tuple[Tensor, Tensor]:
        """``(dist (B, B), triplet mask (B, B, B))`` in float32 (float64 for double inputs)."""
        x = embeddings.to(LF.compute_dtype(embeddings))
        x = F.normalize(x, dim=-1) if self.normalize else x
        dist = LF.pairwise_distances(x, squared=squared)
        return dist, self.miner(dist, labels, self.margin)


class ContrastiveLoss(_MinedLoss):
    """Contrastive loss on Euclidean distances (Radenović et al., TPAMI 2018, cirtorch ``contrastive_loss``):
    ``½ d²`` per positive pair and ``½ max(0, margin − d)²`` per negative pair, averaged (or summed) over the mined
    pairs. margin = 0.7 is cirtorch's GeM recipe (0.85 for R101); cirtorch sums, ``reduction="sum"``."""

    name = "contrastive"

    def __init__(
        self,
        margin: float = 0.7,
        miner: str | TripletMiner = "all",
        reduction: Literal["mean", "sum"] = "mean",
        normalize: bool = True,
    ) -> None:
        super().__init__(margin, miner, reduction, normalize)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``(B, D), (B,) -> ()``."""
        with LF.fp32(embeddings):
            dist, mask = self._mine(embeddings, labels, squared=False)
            pos_terms = 0.5 * dist[mask.any(2)] ** 2
            neg_terms = 0.5 * F.relu(self.margin - dist[mask.any(1)]) ** 2
            return LF.reduce_terms(torch.cat([pos_terms, neg_terms]), self.reduction, dist)


class TripletLoss(_MinedLoss):
    """Triplet margin loss ``max(0, d(a, p) − d(a, n) + margin)`` over the mined triplets, on squared Euclidean
    distances by default as in cirtorch's ``triplet_loss`` (margin 0.5 in methods.md §13.2's GeM row)."""

    name = "triplet"

    def __init__(
        self,
        margin: float = 0.5,
        miner: str | TripletMiner = "all",
        squared: bool = True,
        reduction: Literal["mean", "sum"] = "mean",
        normalize: bool = True,
    ) -> None:
        super().__init__(margin, miner, reduction, normalize, squared=squared)
        self.squared = squared

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``(B, D), (B,) -> ()``."""
        with LF.fp32(embeddings):
            dist, mask = self._mine(embeddings, labels, squared=self.squared)
            a, p, n = mask.nonzero(as_tuple=True)
            terms = F.relu(dist[a, p] - dist[a, n] + self.margin)
            return LF.reduce_terms(terms, self.reduction, dist)
