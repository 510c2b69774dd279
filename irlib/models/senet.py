"""SENet, the Structural Embedding Network (Lee, Lee, Seong, Kim, "Revisiting Self-Similarity: Structural
Embedding for Image Retrieval", CVPR 2023, ``sungonce/SENet``); not Squeeze-and-Excitation.

Pipeline: backbone feature map ``X`` ``(B, C, h, w)`` -> Self-Similarity Module (SSM) -> GeM (learnable p, init 3)
-> Linear C -> ``dim`` (2048, with bias; no L2 before it) -> L2.

SSM, as ``methods.md`` §5a describes the official ``model/self_similarity.py`` (defaults ``mid_dim`` = 256,
``unfold_size`` = 7, ``kernel_size`` = 3):

1. ``q = L2norm_c(Conv1x1_{C->256}(X))``;
2. self-correlation ``s(i, j; u, v) = max(0, <q_ij, q_{i+u-3, j+v-3}>)`` over the 7x7 neighbourhood (``F.unfold``),
   laid out ``(B, 1, h*w, 7, 7)`` for the encoder;
3. Self-Similarity Encoder (SSE): ``7 // 2`` = 3 blocks Conv3d (kernel (1, 3, 3)) + BN3d + ReLU, mean over (u, v),
   Conv1x1 256 -> C + BN: the structure embedding ``S`` ``(B, C, h, w)``;
4. output ``FFN(X + S)``, FFN = Conv1x1 - ReLU - Conv1x1 on C channels.

Our choices where the reference is silent: the encoder's Conv3d layers have no padding (so 3 blocks shrink the 7x7
window to 1x1, which is what ``7 // 2`` blocks suggests, and the (u, v) mean is over one cell), every Conv3d block
outputs ``mid_dim`` channels (the first reads 1), convolutions followed by BN have no bias, the other 1x1 convs
(query, FFN) have one, the FFN hidden width is C, neighbours outside the map are zero (zero-padded unfold).

``inspect`` keys: ``"features"`` ``(B, C, h, w)`` (SSM output, the map GeM pools), ``"descriptor"`` ``(B, dim)``,
``"self_similarity"`` ``(B, 49, h, w)`` (clamped cosine similarity to neighbour ``k = 7u + v``; channel 24 is the
position itself), ``"structure"`` ``(B, C, h, w)`` (the embedding ``S``) and ``"structure_norm"`` ``(B, h, w)``
(its L2 norm per position).
"""

from __future__ import annotations

import os

import torch.nn.functional as F
from torch import Tensor, nn

from irlib.models._registry import register_model
from irlib.models.base import RetrievalModel
from irlib.models.pooling import GeM


def self_correlation(q: Tensor, unfold_size: int = 7) -> Tensor:
    """Clamped dot products of each position with its ``k x k`` neighbourhood (SENet, Lee et al., CVPR 2023).

    ``q`` ``(B, c, h, w)`` (L2-normalised over c) -> ``(B, k*k, h, w)``, channel ``k*u + v`` = neighbour
    ``(i + u - k//2, j + v - k//2)``; neighbours outside the map give 0.
    """
    b, c, h, w = q.shape
    k = unfold_size
    neighbours = F.unfold(q, kernel_size=k, padding=k // 2).view(b, c, k * k, h, w)
    return (q.unsqueeze(2) * neighbours).sum(dim=1).clamp(min=0)


class SelfSimilarityModule(nn.Module):
    """SENet's SSM: ``(B, C, h, w)`` -> ``(B, C, h, w)`` features with the structure embedding fused in."""

    def __init__(self, channels: int, mid_dim: int = 256, unfold_size: int = 7, kernel_size: int = 3) -> None:
        super().__init__()
        blocks = unfold_size // 2
        if unfold_size % 2 == 0 or unfold_size - blocks * (kernel_size - 1) < 1:
            raise ValueError(
                f"unfold_size must be odd and {unfold_size // 2} unpadded convs of kernel {kernel_size} must fit in it"
            )
        self.unfold_size = unfold_size
        self.query = nn.Conv2d(channels, mid_dim, 1)
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers += [
                nn.Conv3d(1 if i == 0 else mid_dim, mid_dim, (1, kernel_size, kernel_size), bias=False),
                nn.BatchNorm3d(mid_dim),
                nn.ReLU(inplace=True),
            ]
        self.encoder = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Conv2d(mid_dim, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.ffn = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1)
        )

    def similarity_and_structure(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, h, w)`` -> (self-similarity ``(B, k*k, h, w)``, structure embedding ``(B, C, h, w)``)."""
        b, _, h, w = x.shape
        k = self.unfold_size
        sim = self_correlation(F.normalize(self.query(x), dim=1), k)
        encoded = self.encoder(sim.flatten(2).transpose(1, 2).reshape(b, 1, h * w, k, k))
        structure = self.embed(encoded.mean(dim=(-2, -1)).view(b, -1, h, w))
        return sim, structure

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, h, w)`` -> ``FFN(X + S)`` ``(B, C, h, w)``."""
        return self.ffn(x + self.similarity_and_structure(x)[1])


@register_model("senet")
class SENet(RetrievalModel):
    """Structural Embedding Network: (B,3,H,W) images -> (B, ``dim``) unit-norm descriptors.

    ``mid_dim``/``unfold_size``/``kernel_size`` configure the SSM; ``p`` is GeM's initial (learnable) exponent.
    ``weights``: a local state dict of the whole model (keys ``backbone.*``, loaded strictly) or of the bare timm
    backbone.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        dim: int = 2048,
        mid_dim: int = 256,
        unfold_size: int = 7,
        kernel_size: int = 3,
        p: float = 3.0,
    ) -> None:
        super().__init__()
        channels = self.build_backbone(backbone, pretrained)
        self.ssm = SelfSimilarityModule(channels, mid_dim, unfold_size, kernel_size)
        self.pool = GeM(p=p, learn_p=True)
        self.whiten = nn.Linear(channels, dim)
        self.feat_dim: int = dim

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,C,h,w) SSM output."""
        return self.ssm(self.backbone(self.to_backbone_order(x)))

    def _head(self, features: Tensor) -> Tensor:
        return F.normalize(self.whiten(self.pool(features)), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,D) L2-normalised descriptors, D = ``feat_dim``."""
        return self._head(self.forward_features(x))

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """``"features"``, ``"descriptor"``, ``"self_similarity"`` (B,k*k,h,w), ``"structure"`` (B,C,h,w),
        ``"structure_norm"`` (B,h,w)."""
        maps = self.backbone(self.to_backbone_order(x))
        sim, structure = self.ssm.similarity_and_structure(maps)
        features = self.ssm.ffn(maps + structure)
        return {
            "features": features,
            "descriptor": self._head(features),
            "self_similarity": sim,
            "structure": structure,
            "structure_norm": structure.norm(dim=1),
        }
