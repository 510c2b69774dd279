"""DOLG: orthogonal fusion of a local (res4, attention-weighted) and a global (res5, GeM) descriptor.

Yang et al., "DOLG: Single-Stage Image Retrieval with Deep Orthogonal Fusion of Local and Global Features",
ICCV 2021; the forward follows the official code, feymanpriv/DOLG @ 63b117d ``core/model/dolg_model.py:34-172``.

For an input ``(B, 3, H, W)`` and a ResNet backbone (``C3``/``C4`` channels at stride 16/32, 1024/2048 for
ResNet-50/101; ``h3, w3`` and ``h4, w4`` the stride-16/32 sizes):

- global: ``fg = fc_t(GeM(f4))``, GeM with learnable ``p``, ``fc_t``: C4 -> C3;
- local (``SpatialAttention2d``): optional multi-atrous block on ``f3``, then ``y = BN(conv1(.))``,
  ``att = softplus(conv2(ReLU(y)))`` and ``fl = att * L2_channels(y)``;
- fusion: ``orth = fl - (fl . fg) fg / |fg|^2`` at every position, ``fo = mean_hw(orth)``,
  descriptor ``L2(fc(cat[fg, fo]))`` with ``fc``: 2 C3 -> ``reduction_dim`` (512).

:meth:`DOLG.inspect` keys (beyond ``features`` = ``f4`` ``(B, C4, h4, w4)`` and ``descriptor`` ``(B, D)``):

======================  ======================  ===========================================================
key                     shape                   meaning
======================  ======================  ===========================================================
``stage3``              ``(B, C3, h3, w3)``     ``f3``, the backbone's stride-16 output
``multi_atrous``        ``(B, C3, h3, w3)``     output of the multi-atrous block (only with ``multi_atrous``)
``attention``           ``(B, h3, w3)``         softplus spatial attention ``att``
``local``               ``(B, C3, h3, w3)``     ``fl``, attention-weighted unit-norm local features
``orthogonal``          ``(B, C3, h3, w3)``     ``orth``, the component of ``fl`` orthogonal to ``fg``
``global_pooled``       ``(B, C4)``             GeM of ``f4``
``global``              ``(B, C3)``             ``fg``
``fused_local``         ``(B, C3)``             ``fo``, the pooled orthogonal component
``global_feature``      ``(B, D)``              ``fc`` output before L2 normalisation
======================  ======================  ===========================================================

Official checkpoints (``load_checkpoint(model, path, source="dolg")``) are BGR; the converter sets
``bgr_weights``. Official multi-scale extraction: :meth:`DOLG.forward_multiscale`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from torch import Tensor, nn

from irlib.models._registry import register_model
from irlib.models.backbones import feature_maps, is_vit_backbone, local_stage_index
from irlib.models.base import RetrievalModel
from irlib.models.checkpoints import pycls_resnet_key, register_converter
from irlib.models.pooling import GeM, mean_of_scales

OFFICIAL_SCALES: tuple[float, ...] = (0.3535, 0.5, 0.7071, 1.0, 1.4142)
"""Scales of the official extraction, ``evaler/infer.py:33`` (1/(2 sqrt 2) ... sqrt 2)."""

CODE_DILATIONS: tuple[int, ...] = (6, 12, 18)
"""Atrous rates of the official code (``dolg_model.py:143``); the paper states 3, 6, 9."""

PAPER_DILATIONS: tuple[int, ...] = (3, 6, 9)

TRAINING_ONLY_KEYS: tuple[str, ...] = ("desc_cls.weight", "desc_cls.t")
"""Official tensors of the CurricularFace classifier (class ``Arcface``), dropped by the converter."""


class MultiAtrous(nn.Module):
    """The official ASPP block ``(B, C, h, w) -> (B, out, h, w)`` (DOLG, ``dolg_model.py:135-172``).

    Branches, concatenated in this order: image pooling (GAP, 1x1 conv, ReLU, broadcast back to ``h x w``), a
    1x1 conv, and a 3x3 conv per dilation (padding = dilation); no activation after the convolution branches.
    Then a 1x1 conv to ``out_channels`` and a ReLU.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.image_pool = nn.Conv2d(in_channels, mid_channels, 1)
        self.branches = nn.ModuleList(
            [nn.Conv2d(in_channels, mid_channels, 1)]
            + [nn.Conv2d(in_channels, mid_channels, 3, padding=d, dilation=d) for d in dilations]
        )
        self.project = nn.Conv2d(mid_channels * (len(dilations) + 2), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B,C,h,w) -> (B,out,h,w)."""
        # Bilinear upsampling of a 1x1 map (the official code) is an exact broadcast.
        pooled = F.relu(self.image_pool(x.mean(dim=(-2, -1), keepdim=True))).expand(-1, -1, *x.shape[-2:])
        return F.relu(self.project(torch.cat([pooled] + [branch(x) for branch in self.branches], dim=1)))


class SpatialAttention2d(nn.Module):
    """DOLG's local branch (``dolg_model.py:88-129``): ``(B, C, h, w)`` -> ``fl`` ``(B, C, h, w)`` and the
    softplus attention ``(B, 1, h, w)``; ``aspp`` is the optional :class:`MultiAtrous` block run first."""

    def __init__(self, channels: int, aspp: MultiAtrous | None = None) -> None:
        super().__init__()
        self.aspp = aspp
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)  # eps 1e-5, momentum 0.1: pycls cfg.BN defaults
        self.conv2 = nn.Conv2d(channels, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B,C,h,w) -> (fl (B,C,h,w), attention (B,1,h,w))."""
        y = self.bn(self.conv1(x))
        attention = F.softplus(self.conv2(F.relu(y)))
        return attention * F.normalize(y, dim=1), attention


def orthogonal_component(local: Tensor, global_: Tensor) -> Tensor:
    """``local`` (B,C,h,w) minus its projection on ``global_`` (B,C) at every position -> (B,C,h,w) (DOLG fusion)."""
    coef = torch.einsum("bchw,bc->bhw", local, global_) / global_.pow(2).sum(dim=1).view(-1, 1, 1)
    return local - coef.unsqueeze(1) * global_[:, :, None, None]


def rescale(x: Tensor, scale: float) -> Tensor:
    """(B,3,H,W) -> (B,3,round(H*s),round(W*s)), bilinear, no antialias; unchanged at the input size.

    Stands in for the official ``cv2.resize(INTER_LINEAR)`` of the float image (``evaler/process.py:24-29``);
    resizing commutes with the normalisation up to float rounding.
    """
    size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
    if size == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


@register_model("dolg")
class DOLG(RetrievalModel):
    """DOLG (Yang et al., ICCV 2021): (B,3,H,W) RGB images -> (B, reduction_dim) unit-norm descriptors.

    Args:
        backbone: a timm ResNet (``resnet50``, ``resnet101``, ``resnet18``, ...); the local branch reads
            ``layer3`` (stride 16), the global branch ``layer4`` (stride 32). Or a timm ViT: the local branch reads
            the raw output of block ``ceil(2 depth / 3) - 1``, the global branch the final patch-token map, both
            on the patch grid (:func:`irlib.models.backbones.local_stage_index`).
        pretrained: ImageNet weights for the backbone (timm hub).
        weights: a local irlib state dict (keys ``backbone.*`` = the whole model, otherwise the bare backbone),
            loaded strictly.
        multi_atrous: run the multi-atrous (ASPP) block before the attention. The official scripts never build
            it (the default argument is bound at import time), so the released weights are without it.
        dilations: atrous rates of that block; default the official code's :data:`CODE_DILATIONS` (6, 12, 18),
            the paper's are :data:`PAPER_DILATIONS` (3, 6, 9).
        p: initial exponent of the learnable GeM of the global branch.
        reduction_dim: descriptor size D (``MODEL.HEADS.REDUCTION_DIM``).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        multi_atrous: bool = False,
        dilations: Sequence[int] = CODE_DILATIONS,
        p: float = 3.0,
        reduction_dim: int = 512,
    ) -> None:
        super().__init__()
        if reduction_dim <= 0:
            raise ValueError(f"reduction_dim must be positive, got {reduction_dim}.")
        if multi_atrous and (not dilations or any(d < 1 for d in dilations)):
            raise ValueError(f"dilations must be positive integers, got {tuple(dilations)}.")
        c4 = self.build_backbone(backbone, pretrained)
        if not isinstance(self.backbone, ResNet) and not is_vit_backbone(self.backbone):
            raise ValueError(f"DOLG needs a timm ResNet backbone (layer3 and layer4) or a ViT, got {backbone!r}.")
        self._stage3 = local_stage_index(self.backbone)
        c3 = int(self.backbone.feature_info[self._stage3]["num_chs"])
        aspp = MultiAtrous(c3, c3 // 2, c3, dilations) if multi_atrous else None
        self.local = SpatialAttention2d(c3, aspp)
        self.pool = GeM(p=p, learn_p=True)
        self.fc_t = nn.Linear(c4, c3)
        self.fc = nn.Linear(2 * c3, reduction_dim)
        self.feat_dim: int = reduction_dim

    def _stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B,3,H,W) RGB -> (f3 (B,C3,h3,w3), f4 (B,C4,h4,w4)); for a ResNet timm's ``forward_intermediates`` runs
        exactly ``conv1, bn1, act1, maxpool, layer1..layer4``."""
        f4, (f3,) = feature_maps(self.backbone, self.to_backbone_order(x), [self._stage3])
        return f3, f4

    def _branches(self, x: Tensor) -> dict[str, Tensor]:
        """Every tensor of the forward, keyed as in :meth:`inspect` (``descriptor`` excepted)."""
        f3, f4 = self._stages(x)
        out = {"features": f4, "stage3": f3}
        if self.local.aspp is not None:
            f3 = out["multi_atrous"] = self.local.aspp(f3)
        fl, attention = self.local(f3)
        fg_o = self.pool(f4)
        fg = self.fc_t(fg_o)
        orth = orthogonal_component(fl, fg)
        fo = orth.mean(dim=(-2, -1))
        out |= {
            "attention": attention.squeeze(1),
            "local": fl,
            "orthogonal": orth,
            "global_pooled": fg_o,
            "global": fg,
            "fused_local": fo,
            "global_feature": self.fc(torch.cat([fg, fo], dim=1)),
        }
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised RGB images -> (B,C4,h4,w4) last backbone map (the global branch's input)."""
        return self._stages(x)[1]

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised RGB images -> (B,D) L2-normalised descriptors, D = ``feat_dim``."""
        return F.normalize(self._branches(x)["global_feature"], dim=-1)

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """(B,3,H,W) -> the tensors of the module docstring's table, plus ``features`` and ``descriptor``."""
        out = self._branches(x)
        out["descriptor"] = F.normalize(out["global_feature"], dim=-1)
        return out

    def per_scale_descriptors(self, x: Tensor, scales: Sequence[float] = OFFICIAL_SCALES) -> Tensor:
        """(B,3,H,W) -> (S,B,D): the L2-normalised descriptor of :func:`rescale` (x, s) for each scale s."""
        return torch.stack([self(rescale(x, s)) for s in scales])

    def forward_multiscale(self, x: Tensor, scales: Sequence[float] = OFFICIAL_SCALES) -> Tensor:
        """(B,3,H,W) -> (B,D): the official multi-scale descriptor (``evaler/infer.py:51-67``), i.e.
        :func:`mean_of_scales` of :meth:`per_scale_descriptors`; images of one size may share a batch."""
        return mean_of_scales(self.per_scale_descriptors(x, scales))


_HEAD_KEYS = {
    "fc_t.weight": "fc_t.weight",
    "fc_t.bias": "fc_t.bias",
    "fc.weight": "fc.weight",
    "fc.bias": "fc.bias",
    "localmodel.aspp.im_pool.1.weight": "local.aspp.image_pool.weight",
    "localmodel.aspp.im_pool.1.bias": "local.aspp.image_pool.bias",
    "localmodel.aspp.conv_after.0.weight": "local.aspp.project.weight",
    "localmodel.aspp.conv_after.0.bias": "local.aspp.project.bias",
}


def _official_key(key: str) -> str | None:
    """Official DOLG key -> irlib key; ``None`` when it has no counterpart."""
    if key in _HEAD_KEYS:
        return _HEAD_KEYS[key]
    if key.startswith("globalmodel."):
        mapped = pycls_resnet_key(key.removeprefix("globalmodel."))
        return None if mapped is None else f"backbone.{mapped}"
    if key.startswith("localmodel.aspp.aspp."):
        return "local.aspp.branches." + key.removeprefix("localmodel.aspp.aspp.")
    for part in ("conv1.", "bn.", "conv2."):
        if key.startswith(f"localmodel.{part}"):
            return "local." + key.removeprefix("localmodel.")
    return None


@register_converter("dolg")
def convert_official_dolg(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """feymanpriv/DOLG ``DOLG`` state dict -> irlib :class:`DOLG` state dict; sets ``model.bgr_weights``.

    ``globalmodel.*`` (pycls ResNet) -> ``backbone.*``; ``localmodel.*`` -> ``local.*``; ``pool_g.p`` (shape [1])
    -> ``pool.p`` (a scalar). The training-only classifier :data:`TRAINING_ONLY_KEYS` is dropped. A checkpoint of
    the fixed-p code version (commit 1250f27, no ``pool_g.p``) gets p = 3 with a warning. Keys with no
    counterpart, or ASPP keys for a model built without ``multi_atrous`` (or the reverse) -> ValueError.
    """
    if not isinstance(model, DOLG):
        raise ValueError(f"the 'dolg' converter fills a DOLG model, got {type(model).__name__}")
    has_aspp = any(k.startswith("localmodel.aspp.") for k in state_dict)
    if has_aspp != (model.local.aspp is not None):
        found = "has" if has_aspp else "has no"
        raise ValueError(
            f"the DOLG checkpoint {found} multi-atrous (localmodel.aspp.*) tensors but the model was built with "
            f"multi_atrous={model.local.aspp is not None}; build it with multi_atrous={has_aspp}"
        )
    out: dict[str, Tensor] = {}
    unmapped = []
    for key, value in state_dict.items():
        if key in TRAINING_ONLY_KEYS:
            continue
        if key == "pool_g.p":
            if value.numel() != 1:
                raise ValueError(f"pool_g.p must hold one value, got shape {tuple(value.shape)}")
            out["pool.p"] = value.reshape(())
        elif (target := _official_key(key)) is not None:
            out[target] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"official DOLG keys with no irlib counterpart: {', '.join(sorted(unmapped))}")
    if "pool_g.p" not in state_dict:
        warnings.warn(
            "DOLG checkpoint without pool_g.p (the fixed-p GeM code version): using p = 3", UserWarning, stacklevel=2
        )
        out["pool.p"] = torch.tensor(3.0)
    model.bgr_weights = True
    return out
