"""DELG (Cao, Araujo, Sim, ECCV 2020): GeM (p=3 fixed) + FC whitening global descriptor, optional DELF-style
local branch (attention + autoencoder) on stop-gradient stride-16 features.

Global branch (``tensorflow/models`` ``research/delf/delf/python/training/model/delg_model.py``): last backbone
feature map ``(B, C, h, w)`` -> GeM with fixed p = 3 -> Linear C -> ``dim`` (2048, with bias) -> L2.

Local branch (``local_branch=True``), on the stride-16 stage (ResNet ``layer3`` = "conv4"/"block3") detached from
the graph, as ``block3 = tf.stop_gradient(block3)`` in DELG's ``train.py``, so its losses never train the backbone:

- attention: ``score = Conv1x1_{512->1}(ReLU(BN(Conv1x1_{C3->512}(F3))))``, ``attention = softplus(score)``;
- autoencoder: ``L = Conv1x1_{C3->128}(F3)`` (the 128-d local descriptors), ``F3' = ReLU(Conv1x1_{128->C3}(L))``;
- attention pooling (input of the attention classifier in training):
  ``mean_{ij}(attention_ij * F3'_ij / ||F3'_ij||)`` ``(B, C3)``.

The attention scores come from the stride-16 features themselves and the pooled vector from the normalised
reconstruction, as in the final TF2 DELF/DELG code (``delf_model.py``); the attention module has one BN, after its
first conv. Training (:meth:`DELG.forward_train`, :meth:`DELG.loss_terms`): the run's loss on the descriptor (ArcFace
m = 0.1, s = 45.25 in the ``delg`` recipe) plus DELG's attention loss (``delg_attention``: softmax cross-entropy of a
linear classifier on the attention-pooled vector, weight 1) and reconstruction loss (``delg_reconstruction``: MSE,
weight 10), the ``train.py`` flag defaults (:mod:`irlib.losses.delg`).

``inspect`` keys: ``"features"`` ``(B, C, h, w)``, ``"descriptor"`` ``(B, dim)``; with the local branch also
``"attention"`` ``(B, h3, w3)`` (softplus scores) and ``"local_features"`` ``(B, 128, h3, w3)`` (h3 = 2h, w3 = 2w
for stride-32 backbones).

ViT backbones (all blocks at the patch stride): the local branch reads the raw output of block
``ceil(2 depth / 3) - 1`` (:func:`irlib.models.backbones.local_stage_index`), on the same grid as ``features``.
"""

from __future__ import annotations

import os

import torch.nn.functional as F
from torch import Tensor, nn

from irlib.losses.composite import LossTerm
from irlib.models._registry import register_model
from irlib.models.backbones import feature_maps, local_stage_index
from irlib.models.base import RetrievalModel
from irlib.models.pooling import GeM

ATTENTION_LOSS_WEIGHT = 1.0
RECONSTRUCTION_LOSS_WEIGHT = 10.0


class DELGAttention(nn.Module):
    """DELF attention: ``(B, C3, h, w)`` -> softplus scores ``(B, h, w)`` (Noh et al., ICCV 2017)."""

    def __init__(self, in_channels: int, hidden: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.conv1.bias.requires_grad_(False)  # frozen on purpose: the BN that follows cancels it (TF keeps it)
        self.bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C3, h, w)`` -> ``(B, h, w)`` non-negative attention."""
        return F.softplus(self.conv2(F.relu(self.bn(self.conv1(x))))).squeeze(1)


class DELGAutoencoder(nn.Module):
    """1x1-conv autoencoder: ``(B, C3, h, w)`` -> (reconstruction ``(B, C3, h, w)``, code ``(B, dim, h, w)``)."""

    def __init__(self, in_channels: int, dim: int = 128) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, dim, 1)
        self.expand = nn.Conv2d(dim, in_channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C3, h, w)`` -> ``(ReLU(expand(code)), code)``."""
        code = self.reduce(x)
        return F.relu(self.expand(code)), code


@register_model("delg")
class DELG(RetrievalModel):
    """DELG: (B,3,H,W) images -> (B, ``dim``) unit-norm global descriptors; optional local branch.

    ``dim``: FC whitening output (2048 in the paper); ``local_branch``: add attention + autoencoder on the
    stride-16 stage (``local_dim``-d codes, ``attention_hidden`` channels), trained through :meth:`forward_train`.
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
        local_branch: bool = False,
        local_dim: int = 128,
        attention_hidden: int = 512,
    ) -> None:
        super().__init__()
        channels = self.build_backbone(backbone, pretrained)
        self.pool = GeM(p=3.0)
        self.whiten = nn.Linear(channels, dim)
        self.local_branch = local_branch
        self._stage3 = local_stage_index(self.backbone)
        if local_branch:
            c3 = int(self.backbone.feature_info[self._stage3]["num_chs"])
            self.attention = DELGAttention(c3, attention_hidden)
            self.autoencoder = DELGAutoencoder(c3, local_dim)
        self.feat_dim: int = dim

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,C,h,w) last backbone feature map."""
        return self.backbone(self.to_backbone_order(x))

    def _global(self, features: Tensor) -> Tensor:
        return F.normalize(self.whiten(self.pool(features)), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,D) L2-normalised global descriptors, D = ``feat_dim``."""
        return self._global(self.forward_features(x))

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """Everything training needs in one backbone pass.

        Returns ``"descriptor"`` (B,D); with the local branch also ``"reconstruction_target"`` (B,C3,h3,w3, the
        detached stride-16 features), ``"attention"`` (B,h3,w3), ``"local_features"`` (B,local_dim,h3,w3),
        ``"reconstruction"`` (B,C3,h3,w3) and ``"attention_pooled"`` (B,C3), the input of the attention classifier.
        """
        if not self.local_branch:
            return {"descriptor": self(x)}
        features, (stage3,) = feature_maps(self.backbone, self.to_backbone_order(x), [self._stage3])
        out = self.local_outputs(stage3)
        out["descriptor"] = self._global(features)
        return out

    def local_outputs(self, stage3: Tensor) -> dict[str, Tensor]:
        """Local branch on ``stage3`` (B,C3,h3,w3), detached first (DELG's stop-gradient); keys as
        :meth:`forward_train` minus ``"descriptor"``."""
        if not self.local_branch:
            raise RuntimeError("this DELG model was built with local_branch=False")
        stage3 = stage3.detach()
        attention = self.attention(stage3)
        reconstruction, local_features = self.autoencoder(stage3)
        pooled = (F.normalize(reconstruction, dim=1) * attention.unsqueeze(1)).mean(dim=(-2, -1))
        return {
            "reconstruction_target": stage3,
            "attention": attention,
            "local_features": local_features,
            "reconstruction": reconstruction,
            "attention_pooled": pooled,
        }

    def output_dims(self) -> dict[str, int]:
        """The descriptor's size, and with the local branch C3 for the local outputs the losses read."""
        dims = super().output_dims()
        if self.local_branch:
            c3 = self.autoencoder.expand.out_channels
            dims |= {"attention_pooled": c3, "reconstruction": c3, "reconstruction_target": c3}
        return dims

    def loss_terms(self) -> list[LossTerm]:
        """With the local branch, DELG's attention and reconstruction losses with the paper's weights (a run
        re-weights them by naming them in ``TrainConfig.losses``)."""
        if not self.local_branch:
            return []
        return [
            LossTerm("delg_attention", weight=ATTENTION_LOSS_WEIGHT),
            LossTerm("delg_reconstruction", weight=RECONSTRUCTION_LOSS_WEIGHT),
        ]

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """``"features"``, ``"descriptor"``; with the local branch ``"attention"`` (B,h3,w3) and
        ``"local_features"`` (B,local_dim,h3,w3)."""
        if not self.local_branch:
            return super().inspect(x)
        features, (stage3,) = feature_maps(self.backbone, self.to_backbone_order(x), [self._stage3])
        local = self.local_outputs(stage3)
        return {
            "features": features,
            "descriptor": self._global(features),
            "attention": local["attention"],
            "local_features": local["local_features"],
        }
