"""GeM retrieval network: CNN feature map -> GeM pooling -> optional FC whitening -> L2 normalisation."""

from __future__ import annotations

import os
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from irlib.models._registry import register_model
from irlib.models.base import RetrievalModel
from irlib.models.pooling import GeM


@register_model("gem")
class GeMNet(RetrievalModel):
    """Global descriptor of Radenović et al. (TPAMI 2018): (B,3,H,W) images -> (B,D) unit-norm descriptors.

    ``p`` is GeM's (initial) exponent, learnable with ``learn_p``; ``whitening=D`` adds a Linear C->D
    (with bias) before normalisation. ``weights``: a local state dict, see ``load_weights``.
    Inputs must be normalised with ``data_config`` (``mean``/``std`` on [0,1] RGB pixels).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        p: float = 3.0,
        learn_p: bool = False,
        whitening: int | None = None,
    ) -> None:
        super().__init__()
        if whitening is not None and whitening <= 0:
            raise ValueError(f"whitening must be a positive dimension or None, got {whitening}.")
        channels = self.build_backbone(backbone, pretrained, weights)
        self.pool = GeM(p=p, learn_p=learn_p)
        self.whiten: nn.Module = nn.Linear(channels, whitening) if whitening is not None else nn.Identity()
        self.feat_dim: int = whitening if whitening is not None else channels
        self.config: dict[str, Any] = {
            "method": "gem",
            "backbone": backbone,
            "pretrained": pretrained,
            "weights": os.fspath(weights) if weights is not None else None,
            "p": p,
            "learn_p": learn_p,
            "whitening": whitening,
        }
        if weights is not None:
            self.load_weights(weights)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,C,h,w) last backbone feature map."""
        return self.backbone(self.to_backbone_order(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,D) L2-normalised descriptors, D = ``feat_dim``."""
        return F.normalize(self.whiten(self.pool(self.forward_features(x))), dim=-1)
