"""SuperGlobal (Shao, Chen, Karpur, Cui, Araujo, Cao, "Global Features are All You Need for Image Retrieval and
Reranking", ICCV 2023): training-free pooling on the CVNet-Global network.

Pipeline (ShihaoShao-GH/SuperGlobal ``model/resnet.py:248-291``), with each part switchable:

1. for every scale s: resize the normalised input tensor to ``(int(H*s), int(W*s))`` (bilinear, as torchvision's
   tensor ``resize``; ``antialias`` chooses between torchvision >= 0.17 (True) and < 0.17 (False));
2. backbone, with **ReLU+** ``max(x, 0.014)`` (``relup``) on the block outputs of all stages but the last;
3. **Regional-GeM** (``rgem``): ``0.5 * X + 0.5 * localGeM_{p=2.5, 5x5, reflect padding}(X)``;
4. **GeM+** (``gemp``): GeM with fixed p = 4.6, eps 1e-8 (else CVNet's learnable GeM);
5. L2, then CVNet's FC;
6. **Scale-GeM** with p = inf (``sgem``): L2 each per-scale FC output, element-wise max over scales (else the
   plain mean of the un-normalised outputs); then L2.

The official-code quirk kept by default (``relup_s1_always=True``): inside the first-stage bottlenecks the two inner
ReLUs are ReLU+ even when ``relup`` is off (``ResBlock`` passes the truthy class ``relup`` instead of the flag,
``model/resnet.py:149``), so ``relup=False`` is not plain CVNet. ``relup_s1_always=False`` makes them ReLU+ only
when ``relup`` is on, as the code intends.

Training (:meth:`SuperGlobal.forward_train`) is CVNet-Global's, single-scale, with the pooling switched on here
(GeM+ keeps its fixed p, so CVNet's learnable p is frozen); SuperGlobal itself trains nothing.

``inspect(x)`` keys (all at the input scale 1.0 except ``scale_descriptors``):
    ``features`` ``(B, C, h, w)``: backbone feature map (with this model's ReLU+).
    ``descriptor`` ``(B, D)``: the multi-scale descriptor.
    ``rgem_features`` ``(B, C, h, w)``: the map that is pooled, the Regional-GeM output (``features`` if rgem off).
    ``rgem_norm`` ``(B, h, w)``: L2 norm over channels of ``rgem_features`` at each position.
    ``gem_weights`` ``(B, h, w)``: each position's share of the (GeM+ or GeM) pooling of ``rgem_features``,
        see :func:`irlib.models.cvnet.gem_position_weights`; sums to 1 over positions.
    ``scale_descriptors`` ``(B, S, D)``: L2-normalised FC output per scale, what S-GeM takes the max of.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck
from torch import Tensor, nn

from irlib.models._registry import register_model
from irlib.models.checkpoints import register_converter
from irlib.models.cvnet import CVNET_RERANK_PREFIXES, CVNetGlobal, convert_encoder_q, gem_position_weights
from irlib.models.pooling import gem

SUPERGLOBAL_DEAD_PREFIXES = ("encoder_q.seb1.", "encoder_q.seb2.", "encoder_q.sefc.")
"""SuperGlobal's ``seb1``/``seb2``/``sefc``: built but never used in forward, absent from real CVNet checkpoints."""

GEMP_EPS = 1e-8


class ReLUPlus(nn.Module):
    """ReLU+ ``max(x, alpha)`` (SuperGlobal ``modules/coarse_retrieval/relup.py``); any shape."""

    def __init__(self, alpha: float = 0.014) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(min=self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}"


def apply_relup(backbone: nn.Module, alpha: float, block_outputs: bool, s1_inner: bool) -> None:
    """Put ReLU+ into a timm ResNet in place (SuperGlobal ``model/resnet.py:106-166``).

    ``block_outputs``: the activation after the residual sum of every block of ``layer1``-``layer3`` (``layer4``
    keeps ReLU). ``s1_inner``: the two inner activations of the ``layer1`` bottlenecks. Other backbones ->
    ValueError.
    """
    stages = [getattr(backbone, f"layer{i}", None) for i in range(1, 5)]
    blocks_ok = all(
        isinstance(s, nn.Sequential) and all(isinstance(b, (Bottleneck, BasicBlock)) for b in s) for s in stages
    )
    if not blocks_ok:
        raise ValueError(
            f"SuperGlobal's ReLU+ needs a timm ResNet backbone (layer1..layer4 of Bottleneck/BasicBlock), got "
            f"{type(backbone).__name__}; pass relup=False, relup_s1_always=False for other backbones."
        )
    for index, stage in enumerate(stages[:3]):
        for block in stage:
            if block_outputs:
                setattr(block, "act3" if isinstance(block, Bottleneck) else "act2", ReLUPlus(alpha))
            if index == 0 and s1_inner and isinstance(block, Bottleneck):
                block.act1, block.act2 = ReLUPlus(alpha), ReLUPlus(alpha)


def regional_gem(x: Tensor, p: float = 2.5, size: int = 5) -> Tensor:
    """Regional-GeM (B,C,h,w) -> (B,C,h,w): ``0.5 x + 0.5 (mean_{size x size window} x^p)^(1/p)``, reflect padding,
    stride 1 (SuperGlobal ``modules/coarse_retrieval/rgem.py``); ``x`` non-negative, ``size`` odd.

    Same float operations as the official ``LPPool2d(ReflectionPad2d(x / size^(2/p)))``; windows that are all zero
    give 0 with a zero (not NaN) gradient. Negative values (a ViT's token maps) count as 0 in the local GeM, as GeM
    clamps them (the official code would give NaN); for non-negative maps the clamp changes nothing.
    """
    pad = (size - 1) // 2
    if min(x.shape[-2:]) <= pad:
        raise ValueError(f"regional_gem with a {size}x{size} window needs maps larger than {pad}, got {tuple(x.shape)}")
    scaled = F.pad(x.clamp(min=0) / (size**2) ** (1.0 / p), (pad, pad, pad, pad), mode="reflect")
    summed = F.avg_pool2d(scaled.pow(p), size, stride=1).mul(size * size)
    positive = summed > 0
    local = torch.where(positive, torch.where(positive, summed, 1.0).pow(1.0 / p), 0.0)
    return 0.5 * local + 0.5 * x


def resize_to_scale(x: Tensor, scale: float, antialias: bool) -> Tensor:
    """(B,C,H,W) -> (B,C,int(H*scale),int(W*scale)), bilinear, ``align_corners=False``; ``x`` itself when the size is
    unchanged (torchvision's tensor ``resize``, as SuperGlobal ``model/resnet.py:281`` calls it)."""
    size = (int(x.shape[-2] * scale), int(x.shape[-1] * scale))
    if size == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


@register_model("superglobal")
class SuperGlobal(CVNetGlobal):
    """SuperGlobal on CVNet-Global: (B,3,H,W) images -> (B,D) unit-norm multi-scale descriptors.

    Args:
        backbone, pretrained, weights, p, dim: as :class:`CVNetGlobal` (``p`` is the learnable GeM used when
            ``gemp`` is off).
        gemp: GeM+ with fixed exponent ``gemp_p`` (4.6) instead of the learnable GeM.
        rgem: Regional-GeM with exponent ``rgem_p`` (2.5) over ``rgem_size`` x ``rgem_size`` (5) windows.
        sgem: Scale-GeM (p = inf, max of L2-normalised per-scale outputs) instead of the mean.
        relup: ReLU+ (floor ``relup_alpha`` = 0.014) on the block outputs of ``layer1``-``layer3``.
        scales: resize factors of the input tensor (official: 1 -> ``(1.0,)``, 3 -> the default,
            5 -> ``(0.5, 0.7071, 1.0, 1.4142, 2.0)``).
        antialias: antialiased downscaling. True reproduces the official code under torchvision >= 0.17 (the
            default since then), False under torchvision < 0.17 (the authors' 2023 environment, most likely).
        relup_s1_always: the official quirk, ReLU+ on the inner activations of the ``layer1`` bottlenecks even when
            ``relup`` is off; False: only when ``relup`` is on.

    Input order: RGB, normalised with ``data_config``; the official weights are BGR, so the ``"superglobal"`` (or
    ``"cvnet"``) converter sets ``bgr_weights = True`` and the model flips the channels before the backbone
    (per-channel, so it commutes with the in-model resize).
    ReLU+ needs a timm ResNet backbone; for others (other CNNs, ViTs) pass ``relup=False, relup_s1_always=False``
    (the defaults raise ValueError); Regional-GeM needs maps larger than ``(rgem_size - 1) / 2`` at every scale.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        gemp: bool = True,
        rgem: bool = True,
        sgem: bool = True,
        relup: bool = True,
        scales: Sequence[float] = (0.7071, 1.0, 1.4142),
        antialias: bool = True,
        relup_s1_always: bool = True,
        gemp_p: float = 4.6,
        rgem_p: float = 2.5,
        rgem_size: int = 5,
        relup_alpha: float = 0.014,
        p: float = 3.0,
        dim: int = 2048,
    ) -> None:
        super().__init__(backbone, pretrained=pretrained, weights=weights, p=p, dim=dim)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be a non-empty sequence of positive factors, got {scales!r}.")
        if rgem_size < 1 or rgem_size % 2 == 0:
            raise ValueError(f"rgem_size must be odd and positive, got {rgem_size}.")
        if gemp_p <= 0 or rgem_p <= 0:
            raise ValueError(f"GeM exponents must be positive, got gemp_p={gemp_p}, rgem_p={rgem_p}.")
        self.gemp, self.rgem, self.sgem, self.relup = gemp, rgem, sgem, relup
        self.scales = tuple(float(s) for s in scales)
        self.antialias = antialias
        self.gemp_p, self.rgem_p, self.rgem_size = gemp_p, rgem_p, rgem_size
        if relup or relup_s1_always:
            apply_relup(self.backbone, relup_alpha, block_outputs=relup, s1_inner=relup or relup_s1_always)
        if gemp:
            self.pool.p.requires_grad_(False)  # frozen on purpose: GeM+ pools with its fixed p, CVNet's p is unused

    def pooled_map(self, features: Tensor) -> Tensor:
        """(B,C,h,w) backbone map -> (B,C,h,w) the map that is pooled (Regional-GeM output if ``rgem``)."""
        return regional_gem(features, self.rgem_p, self.rgem_size) if self.rgem else features

    def pool_features(self, features: Tensor) -> Tensor:
        """(B,C,h,w) backbone map -> (B,D) one scale's FC output (not normalised): R-GeM, GeM+/GeM, L2, FC."""
        fmap = self.pooled_map(features)
        pooled = gem(fmap, self.gemp_p, GEMP_EPS) if self.gemp else self.pool(fmap)
        return self.whiten(F.normalize(pooled, dim=-1))

    def per_scale_outputs(self, x: Tensor) -> Tensor:
        """(B,3,H,W) -> (S,B,D) per-scale FC outputs, in the order of ``scales``."""
        return torch.stack(
            [self.pool_features(self.forward_features(resize_to_scale(x, s, self.antialias))) for s in self.scales]
        )

    def combine_scales(self, per_scale: Tensor) -> Tensor:
        """(S,B,D) -> (B,D) before the final L2: S-GeM (max of L2-normalised) if ``sgem``, else the mean."""
        return F.normalize(per_scale, dim=-1).amax(dim=0) if self.sgem else per_scale.mean(dim=0)

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised RGB images -> (B,D) L2-normalised descriptors."""
        return F.normalize(self.combine_scales(self.per_scale_outputs(x)), dim=-1)

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """CVNet-Global's training pass with this model's pooling: one scale (the input's), R-GeM and GeM+ (or GeM)
        as switched, L2, FC, L2. Scale-GeM is a test-time module; ReLU+ acts wherever it is switched on."""
        return {"descriptor": F.normalize(self.pool_features(self.forward_features(x)), dim=-1)}

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """See the module docstring for the keys and shapes."""
        features = self.forward_features(x)
        fmap = self.pooled_map(features)
        p, eps = (self.gemp_p, GEMP_EPS) if self.gemp else (self.pool.p, self.pool.eps)
        per_scale = self.per_scale_outputs(x)
        return {
            "features": features,
            "descriptor": F.normalize(self.combine_scales(per_scale), dim=-1),
            "rgem_features": fmap,
            "rgem_norm": fmap.norm(dim=1),
            "gem_weights": gem_position_weights(fmap, p, eps),
            "scale_descriptors": F.normalize(per_scale, dim=-1).transpose(0, 1),
        }


@register_converter("superglobal")
def convert_superglobal(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """CVNet or SuperGlobal ``CVNet_Rerank`` state dict -> :class:`SuperGlobal` (or :class:`CVNetGlobal`).

    Drops the reranker's ``conv2ds.*``/``cv_learner.*`` and SuperGlobal's unused ``encoder_q.seb1/seb2/sefc.*``
    (both optional); everything else as the ``"cvnet"`` converter; sets ``bgr_weights``.
    """
    return convert_encoder_q(state_dict, model, CVNET_RERANK_PREFIXES + SUPERGLOBAL_DEAD_PREFIXES)
