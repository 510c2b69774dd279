"""Global pooling of convolutional feature maps into image descriptors."""

from __future__ import annotations

import torch
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
