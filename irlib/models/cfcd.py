"""CFCD (Zhu, Gao, Ke, Qiao, Sun, "Coarse-to-Fine: Learning Compact Discriminative Representation for Single-Stage
Image Retrieval", ICCV 2023; code ``bassyess/CFCD``): GeM (p = 3 fixed) -> FC -> BN1d global descriptor, trained in
two stages with the same parameters.

Global descriptor (``core/model/model_s1.py``, ``model_deploy.py``): the last backbone feature map ``f4``
``(B, C, h, w)`` (ResNet ``layer4``, stride 32) -> GeM with fixed p = 3 (eps 1e-6) -> Linear C -> ``dim`` (512, with
bias) -> BatchNorm1d(``dim``) (PyTorch defaults, affine; batch statistics in training, running ones in eval) -> L2.
The margin head (MadaCos, rho = 0.02; ``irlib.losses.MadaCos``) is a training loss outside the model, as in every
irlib method, and reads the same descriptor (it normalises its input itself, so whether the BN output is normalised
first does not change its value).

Stage 1 (``local_loss=False``): MadaCos only. Stage 2 (``local_loss=True``, ``core/model/model_s2.py``): the same
parameters, no attention module; :meth:`CFCD.forward_train` also returns

- ``"local_features"``: ``f4`` itself ``(B, C, h, w)``, the h*w local descriptors (the loss L2-normalises each);
- ``"attention"``: ``f4.abs().sum(1)`` ``(B, h, w)``, the channel-wise L1 norm, detached: it only picks which
  positions may match (top ``h*w // 2``), no gradient flows through it (none does in the official code either,
  ``topk`` indices being its only use);

and :meth:`CFCD.loss_terms` adds the local triplet loss ``cfcd_local_triplet``
(:class:`irlib.losses.cfcd.CFCDLocalTripletLoss`) with weight :data:`LOCAL_LOSS_WEIGHT` = 1.0, which is what the
official code trains with: its stage-2 config sets ``LAMDA: 0.05`` but ``TripletLoss`` never passes it on
(``core/losses/triplet_loss.py``), so the effective weight is 1. The paper's lambda is :data:`PAPER_LAMBDA` = 0.05; a
run uses it by naming the term in ``TrainConfig.losses`` (``{"name": "cfcd_local_triplet", "weight": 0.05}``). Stage 2
needs batches of tuples (``sampler: tuple``, :class:`irlib.data.samplers.TupleSampler`) and starts from the stage-1
model (``weights=<stage-1 model.pth>``: both stages have the same state-dict keys). The official stage 2 also starts
from the stage-1 MadaCos class weights (its checkpoint holds the head); with the Trainer, ``init_from: <stage-1 run>``
starts model and head from the stage-1 checkpoint (the triplet term owns no parameters, so the keys match), as the
``cfcd_s2`` recipe does.

The stage flag lives on the model because the model must return the extra outputs; the loss term follows from it,
as DELG's local-branch terms do.

``inspect`` keys: ``"features"`` ``(B, C, h, w)``, ``"descriptor"`` ``(B, dim)`` and ``"attention"`` ``(B, h, w)``
(the L1-norm map above, whatever the stage).
"""

from __future__ import annotations

import os

import torch.nn.functional as F
from torch import Tensor, nn

from irlib.losses.composite import DESCRIPTOR, LossTerm
from irlib.models._registry import register_model
from irlib.models.base import RetrievalModel
from irlib.models.pooling import GeM

LOCAL_LOSS_WEIGHT = 1.0
"""Weight of the stage-2 local triplet term: the official code's effective weight (its ``LAMDA`` is never applied)."""

PAPER_LAMBDA = 0.05
"""The paper's (and config's ``MODEL.LOSSES.LAMDA``) weight of the local triplet term, unused by the official code."""

LOCAL_FEATURES = "local_features"
ATTENTION = "attention"


@register_model("cfcd")
class CFCD(RetrievalModel):
    """CFCD: (B,3,H,W) images -> (B, ``dim``) unit-norm descriptors ``L2(BN(FC(GeM_3(f4))))``.

    Args:
        backbone, pretrained, weights: as every irlib model (``weights``: a local state dict of the whole model,
            keys ``backbone.*``, or of the bare backbone; pycls-layout weights mark the model BGR).
        dim: descriptor size (512 in all CFCD configs).
        local_loss: stage 2: :meth:`forward_train` also returns the local descriptors and their attention, and
            :meth:`loss_terms` adds the local triplet loss (module docstring). The parameters are the same in both
            stages.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        dim: int = 512,
        local_loss: bool = False,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        channels = self.build_backbone(backbone, pretrained)
        self.channels = channels
        self.pool = GeM(p=3.0, eps=1e-6)
        self.fc = nn.Linear(channels, dim)
        self.bn = nn.BatchNorm1d(dim)
        self.local_loss = local_loss
        self.feat_dim: int = dim

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,C,h,w) last backbone feature map ``f4``."""
        return self.backbone(self.to_backbone_order(x))

    def _global(self, features: Tensor) -> Tensor:
        return F.normalize(self.bn(self.fc(self.pool(features))), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,D) L2-normalised descriptors, D = ``feat_dim``."""
        return self._global(self.forward_features(x))

    @staticmethod
    def attention_map(features: Tensor) -> Tensor:
        """``(B, C, h, w)`` -> ``(B, h, w)`` channel-wise L1 norm ``|f4|.sum(1)``, detached (used for indices only)."""
        return features.detach().abs().sum(dim=1)

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """``"descriptor"`` (B,D); with ``local_loss`` also ``"local_features"`` (B,C,h,w), the backbone map with its
        gradient, and ``"attention"`` (B,h,w), detached. One backbone pass."""
        features = self.forward_features(x)
        out = {DESCRIPTOR: self._global(features)}
        if self.local_loss:
            out |= {LOCAL_FEATURES: features, ATTENTION: self.attention_map(features)}
        return out

    def output_dims(self) -> dict[str, int]:
        """The descriptor's size; in stage 2 also C for the local descriptors and 1 for the (channel-less) attention."""
        dims = super().output_dims()
        if self.local_loss:
            dims |= {LOCAL_FEATURES: self.channels, ATTENTION: 1}
        return dims

    def loss_terms(self) -> list[LossTerm]:
        """Stage 2: the local triplet term with the official effective weight :data:`LOCAL_LOSS_WEIGHT` (a run
        re-weights it, e.g. to the paper's :data:`PAPER_LAMBDA`, by naming it in ``TrainConfig.losses``)."""
        if not self.local_loss:
            return []
        return [LossTerm("cfcd_local_triplet", weight=LOCAL_LOSS_WEIGHT)]

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """``"features"``, ``"descriptor"`` and the L1-norm ``"attention"`` (B,h,w)."""
        features = self.forward_features(x)
        return {"features": features, "descriptor": self._global(features), "attention": self.attention_map(features)}
