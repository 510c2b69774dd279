"""Global pooling of convolutional feature maps into image descriptors."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gem(x: Tensor, p: float | Tensor = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalized-mean pooling (B,C,H,W) -> (B,C) (Radenović et al., TPAMI 2018)."""
    if x.ndim != 4:
        raise ValueError(f"gem expects a (B,C,H,W) feature map, got shape {tuple(x.shape)}.")
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling layer (B,C,H,W) -> (B,C) with exponent ``p`` fixed (a buffer) or learnable.

    p=1 is average pooling and p -> inf tends to max pooling; retrieval usually uses p=3.
    """

    p: Tensor

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = False) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be positive, got {p}.")
        self.eps = eps
        self.learn_p = learn_p
        p_tensor = torch.tensor(float(p))
        if learn_p:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)

    def forward(self, x: Tensor) -> Tensor:
        """(B,C,H,W) feature map -> (B,C) pooled descriptor."""
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4g}, eps={self.eps:g}, learn_p={self.learn_p}"


def mean_of_scales(per_scale: Iterable[Tensor]) -> Tensor:
    """Multi-scale aggregation, ``S x (B, D)`` per-scale descriptors (or a stacked ``(S, B, D)``) -> ``(B, D)``: L2
    per scale, summed in scale order, L2 (the mean's direction): cirtorch's, CVNet's and DOLG's (``extract`` sums in
    scale order, ``evaler/infer.py:51-67``)."""
    total: Tensor | None = None
    for descriptor in per_scale:
        descriptor = F.normalize(descriptor, dim=-1)
        total = descriptor if total is None else total + descriptor
    if total is None:
        raise ValueError("mean_of_scales needs at least one scale")
    return F.normalize(total, dim=-1)
