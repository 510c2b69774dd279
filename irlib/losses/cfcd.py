"""CFCD's stage-2 local triplet loss (Zhu et al., ICCV 2023; ``bassyess/CFCD`` ``core/losses/super_loss.py`` and
``triplet_loss.py``, themselves derived from naver/FIRe's super-feature loss).

The batch is a run of tuples of ``tuple_size`` (8) consecutive images ``[anchor, positive, negative x (S - 2)]``
(:class:`irlib.data.samplers.TupleSampler`). In each tuple, with every position of the backbone map ``f4`` an
L2-normalised C-dim local descriptor (K = h*w of them per image):

1. **Matching** anchor <-> positive (:func:`match_local`), computed for each *positive* position j: its nearest anchor
   descriptor i = argmin_i ||a_i - p_j|| must have j as its own nearest positive descriptor (reciprocal nearest
   neighbours); Lowe's ratio ``||a_i - p_j|| / ||a_i' - p_j|| <= 0.9``, with i' the second-nearest *anchor*
   descriptor of p_j (the official code takes the ratio along the positive's column of the distance matrix); and j
   must be among the top ``K // 2`` positions of the positive image's attention ``|f4|.sum(1)``.
2. **Negatives** (:func:`nearest_negatives`): for each matched anchor descriptor, its nearest descriptor in each
   negative image (distances on detached features; only the choice is detached, the loss keeps its gradient).
3. **Loss**: ``sum over matches (i, j) and the S - 2 negatives n of max(0, ||a_i - p_j||^2 - ||a_i - n||^2 +
   margin)``, margin 0.1, summed over the tuples of the batch (not averaged), so its scale grows with the number of
   tuples per process: the official batch is 16 images (2 tuples) per GPU. A tuple without matches adds 0.

The stage-2 objective is ``CE(MadaCos) + weight * this``. **Official bug kept as the default:** the config's
``LAMDA: 0.05`` is never applied (``TripletLoss()`` is built without arguments, so ``SuperfeatureTripletLoss`` gets
weight 1.0), so the official code trains with weight 1; the CFCD model declares the term with weight 1.0
(:data:`irlib.models.cfcd.LOCAL_LOSS_WEIGHT`) and the paper's lambda = 0.05 is the term weight a run names
(``{"name": "cfcd_local_triplet", "weight": 0.05}``). The margin is 0.1 in both (the config's ``MARGIN`` is also
unused, but equals the constructor default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from irlib.losses import functional as LF
from irlib.losses.base import ConfiguredLoss


def match_local(anchor: Tensor, positive: Tensor, attention: Tensor, lowe_ratio: float = 0.9) -> tuple[Tensor, Tensor]:
    """CFCD/FIRe matching of local descriptors, batched over T tuples (no gradient).

    Args:
        anchor, positive: ``(T, K, C)`` L2-normalised local descriptors of the anchor and positive images.
        attention: ``(T, K)`` attention of the positive image; only its top ``K // 2`` positions may match.
        lowe_ratio: the largest accepted ratio of the nearest to the second-nearest anchor distance.

    Returns:
        ``(valid (T, K) bool, anchor_index (T, K) int64)``: for every positive position j whether it is matched, and
        its nearest anchor position (meaningful where valid).
    """
    with torch.no_grad():
        dist = torch.cdist(anchor, positive)  # (T, K_anchor, K_positive)
        k = dist.shape[-1]
        best_positive = dist.argmin(dim=2)  # per anchor position
        best_anchor = dist.argmin(dim=1)  # per positive position
        positions = torch.arange(k, device=dist.device)
        reciprocal = best_positive.gather(1, best_anchor) == positions
        nearest = dist.gather(1, best_anchor.unsqueeze(1)).squeeze(1)
        second = dist.scatter(1, best_anchor.unsqueeze(1), float("inf")).amin(dim=1)
        valid = reciprocal & (nearest / second <= lowe_ratio)
        top = attention.topk(attention.shape[-1] // 2, dim=-1).indices
        valid &= torch.zeros_like(valid).scatter(1, top, True)
    return valid, best_anchor


def nearest_negatives(anchor: Tensor, negatives: Tensor) -> Tensor:
    """``(T, K, C), (T, N, K, C) -> (T, N, K)``: for each anchor position, the position of its nearest descriptor in
    each of the N negative images (Euclidean, on detached features)."""
    with torch.no_grad():
        return torch.cdist(anchor.unsqueeze(1), negatives).argmin(dim=-1)


class CFCDLocalTripletLoss(ConfiguredLoss):
    """CFCD's local triplet loss ``(f4 (B, C, h, w), attention (B, h, w), labels (B,)) -> ()`` (module docstring).

    ``B`` must be a multiple of ``tuple_size`` and every tuple ``[anchor, positive, negatives...]`` must have the
    anchor's class at the positive and other classes at the negatives (checked on the labels: a ValueError points to
    ``sampler: tuple``). Computed in float32 (float64 for double inputs), even under autocast.

    Args:
        margin: the triplet margin on squared distances (0.1).
        lowe_ratio: Lowe's ratio threshold of the matching (0.9).
        tuple_size: images per tuple (8: anchor, positive, 6 negatives); the Trainer's tuple sampler reads it.
    """

    name = "cfcd_local_triplet"
    inputs = ("local_features", "attention")

    def __init__(self, margin: float = 0.1, lowe_ratio: float = 0.9, tuple_size: int = 8) -> None:
        super().__init__(margin=margin, lowe_ratio=lowe_ratio, tuple_size=tuple_size)
        if isinstance(tuple_size, bool) or not isinstance(tuple_size, int) or tuple_size < 3:
            raise ValueError(f"tuple_size must be an int >= 3 (anchor, positive, negatives), got {tuple_size!r}")
        if not lowe_ratio > 0:
            raise ValueError(f"lowe_ratio must be positive, got {lowe_ratio}")
        self.margin, self.lowe_ratio, self.tuple_size = margin, lowe_ratio, tuple_size

    def check_tuples(self, labels: Tensor) -> None:
        """ValueError unless ``labels`` form tuples ``[y, y, not y, ..., not y]`` of ``tuple_size``."""
        s = self.tuple_size
        if labels.numel() % s:
            raise ValueError(f"{self.name}: the batch ({labels.numel()} images) is not a whole number of {s}-tuples")
        lab = labels.reshape(-1, s)
        ok = (lab[:, 0] == lab[:, 1]).all() & (lab[:, 2:] != lab[:, :1]).all()
        if not bool(ok):
            raise ValueError(
                f"{self.name} reads batches of {s}-image tuples [anchor, positive of its class, {s - 2} negatives of "
                f"other classes]; these labels are not: set sampler: tuple (irlib.data.samplers.TupleSampler)"
            )

    def forward(self, local_features: Tensor, attention: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(B, C, h, w), (B, h, w), (B,) -> ()`` the summed hinge over matches and negatives of every tuple."""
        b, c = local_features.shape[:2]
        s = self.tuple_size
        if b % s:
            raise ValueError(f"{self.name}: the batch ({b} images) is not a whole number of {s}-tuples")
        if labels is not None:
            self.check_tuples(labels)
        dtype = LF.compute_dtype(local_features)
        with LF.fp32(local_features):
            x = F.normalize(local_features.to(dtype).flatten(2).transpose(1, 2), dim=-1)  # (B, K, C)
            k = x.shape[1]
            x = x.reshape(b // s, s, k, c)
            anchor, positive, negatives = x[:, 0], x[:, 1], x[:, 2:]
            valid, anchor_index = match_local(
                anchor, positive, attention.reshape(b // s, s, k)[:, 1].to(dtype), self.lowe_ratio
            )
            neg_index = nearest_negatives(anchor, negatives)  # (T, S-2, K)
            t, j = valid.nonzero(as_tuple=True)
            if t.numel() == 0:
                return x.sum() * 0.0  # keeps the graph (and DDP) connected
            i = anchor_index[t, j]
            a = anchor[t, i]  # (M, C)
            p = positive[t, j]
            slots = torch.arange(s - 2, device=x.device)
            n = negatives[t[:, None], slots, neg_index[t, :, i]]  # (M, S-2, C)
            d_pos = (a - p).pow(2).sum(-1)
            d_neg = (a.unsqueeze(1) - n).pow(2).sum(-1)
            return (d_pos.unsqueeze(1) - d_neg + self.margin).clamp(min=0).sum()
