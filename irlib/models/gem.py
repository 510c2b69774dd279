"""GeM retrieval network: CNN or ViT feature map -> GeM pooling -> optional FC whitening -> L2 normalisation.

With a ViT backbone the pooling may instead be the class token or the mean of the patch tokens (``pooling=``).
"""

from __future__ import annotations

import os

import torch.nn.functional as F
from torch import Tensor, nn

from irlib.models._registry import register_model
from irlib.models.backbones import has_class_token, vit_final
from irlib.models.base import RetrievalModel
from irlib.models.pooling import GeM

POOLINGS = ("gem", "mean", "cls")
"""``pooling`` values of :class:`GeMNet`."""


@register_model("gem")
class GeMNet(RetrievalModel):
    """Global descriptor of Radenović et al. (TPAMI 2018): (B,3,H,W) images -> (B,D) unit-norm descriptors.

    ``p`` is GeM's (initial) exponent, learnable with ``learn_p``; ``whitening=D`` adds a Linear C->D
    (with bias) before normalisation. ``weights``: a local state dict, see ``load_weights``.
    Inputs must be normalised with ``data_config`` (``mean``/``std`` on [0,1] RGB pixels).

    ``pooling`` (one of :data:`POOLINGS`): ``"gem"`` (default) pools the feature map with GeM; ``"mean"`` averages it
    (for a ViT the mean of the final patch tokens, prefix tokens excluded, as timm's ``global_pool="avg"``);
    ``"cls"`` takes a ViT's final normalised class token (``forward_features(x)[:, 0]``, see
    :func:`irlib.models.backbones.final_norm`), ValueError for a backbone without one. ``learn_p`` needs ``"gem"``.
    The final patch tokens do not feed the class token, so with ``"cls"`` Grad-CAM's default layer is the last
    block's normalised input (:func:`irlib.viz.attention.default_layer`).

    ``normalize_pooled`` L2-normalises the pooled vector before the whitening, as the UnED baselines do with the
    class token before their 768 -> 64 projection (Universal-Image-Embeddings ``vit_with_embedding.py``).
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
        pooling: str = "gem",
        normalize_pooled: bool = False,
    ) -> None:
        super().__init__()
        if whitening is not None and whitening <= 0:
            raise ValueError(f"whitening must be a positive dimension or None, got {whitening}.")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if learn_p and pooling != "gem":
            raise ValueError(f"learn_p applies to pooling='gem' only, got pooling={pooling!r}.")
        channels = self.build_backbone(backbone, pretrained)
        if pooling == "cls" and not has_class_token(self.backbone):
            raise ValueError(
                f"pooling='cls' needs a ViT backbone with a class token; {backbone!r} has none "
                f"(use pooling='mean' or 'gem')."
            )
        self.pooling = pooling
        self.normalize_pooled = normalize_pooled
        self.pool = GeM(p=p, learn_p=learn_p)
        self.whiten: nn.Module = nn.Linear(channels, whitening) if whitening is not None else nn.Identity()
        self.feat_dim: int = whitening if whitening is not None else channels

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,C,h,w) last backbone feature map."""
        return self.backbone(self.to_backbone_order(x))

    def pooled(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,C) pooled features (``pooling``), before whitening."""
        if self.pooling == "cls":
            # The final map goes through backbone.token_map as with the other poolings, so hooks find it.
            return vit_final(self.backbone, self.to_backbone_order(x))[0][:, 0]
        features = self.forward_features(x)
        return features.mean(dim=(-2, -1)) if self.pooling == "mean" else self.pool(features)

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,D) L2-normalised descriptors, D = ``feat_dim``."""
        pooled = self.pooled(x)
        return F.normalize(self.whiten(F.normalize(pooled, dim=-1) if self.normalize_pooled else pooled), dim=-1)
