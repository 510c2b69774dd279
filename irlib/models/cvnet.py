"""CVNet-Global (Lee, Seong, Lee, Kim, "Correlation Verification for Image Retrieval", CVPR 2022).

ResNet -> GeM (learnable p, init 3, eps 1e-6) -> Linear C->D with bias (no L2 in between) -> L2
(sungonce/CVNet ``model/resnet.py``, ``model/CVNet_Rerank_model.py``). It is :class:`irlib.models.gem.GeMNet`
with ``learn_p=True`` and ``whitening=D``; the converter ``"cvnet"`` loads the official checkpoints.

``inspect(x)`` keys:
    ``features`` ``(B, C, h, w)``: last backbone feature map.
    ``descriptor`` ``(B, D)``: the L2-normalised descriptor.
    ``gem_weights`` ``(B, h, w)``: each position's share of the GeM pooling, see :func:`gem_position_weights`.

Multi-scale extraction (official ``test/test_utils.py``): the extractor resizes the image, computes one descriptor per
scale, then :func:`irlib.models.pooling.mean_of_scales`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import Tensor, nn

from irlib.models._registry import register_model
from irlib.models.checkpoints import pycls_resnet_key, register_converter
from irlib.models.gem import GeMNet

CVNET_RERANK_PREFIXES = ("conv2ds.", "cv_learner.")
"""Tensors of the CVNet-Rerank 4D-conv reranker in official checkpoints; not part of the global model, dropped."""


def gem_position_weights(x: Tensor, p: float | Tensor, eps: float) -> Tensor:
    """(B,C,h,w) -> (B,h,w): each position's share of GeM's p-th power sums, averaged over channels.

    ``w(i) = mean_c clamp(x_c(i), eps)^p / sum_j clamp(x_c(j), eps)^p``; the weights sum to 1 over positions.
    """
    powered = x.clamp(min=eps).pow(p)
    return (powered / powered.sum(dim=(-2, -1), keepdim=True)).mean(dim=1)


@register_model("cvnet")
class CVNetGlobal(GeMNet):
    """CVNet-Global: (B,3,H,W) images -> (B,D) unit-norm descriptors, ResNet -> GeM(learnable p) -> FC -> L2.

    Args:
        backbone: timm CNN (the official models are ``resnet50`` and ``resnet101``).
        pretrained: ImageNet backbone weights.
        weights: a local irlib state dict (see :meth:`RetrievalModel.load_weights`).
        p: initial GeM exponent (learnable).
        dim: output size D of the FC "whitening" layer (2048 in the paper).

    Input order: the model takes RGB images normalised with ``data_config`` (ImageNet mean/std). The official
    weights were trained on BGR input; the ``"cvnet"`` converter sets ``bgr_weights = True`` and the model then
    flips the channels itself before the backbone.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        p: float = 3.0,
        dim: int = 2048,
    ) -> None:
        super().__init__(backbone, pretrained=pretrained, weights=weights, p=p, learn_p=True, whitening=dim)

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """Adds ``gem_weights`` (B,h,w) to ``features`` (B,C,h,w) and ``descriptor`` (B,D)."""
        out = super().inspect(x)
        out["gem_weights"] = gem_position_weights(out["features"], self.pool.p, self.pool.eps)
        return out


def convert_encoder_q(
    state_dict: Mapping[str, Tensor], model: nn.Module, dropped_prefixes: tuple[str, ...]
) -> dict[str, Tensor]:
    """Official ``CVNet_Rerank`` state dict -> :class:`CVNetGlobal` state dict; sets ``model.bgr_weights``.

    ``encoder_q.`` keys: the pycls backbone goes to ``backbone.*`` (:func:`pycls_resnet_key`), ``head.pool.p``
    (shape [1]) to ``pool.p`` (shape []), ``head.fc.*`` to ``whiten.*``. Keys starting with ``dropped_prefixes``
    are dropped; any other key -> ValueError naming it.
    """
    if not isinstance(model, CVNetGlobal):
        raise TypeError(f"CVNet checkpoints load into CVNetGlobal models, not {type(model).__name__}.")
    out: dict[str, Tensor] = {}
    unmappable: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(dropped_prefixes):
            continue
        name = key.removeprefix("encoder_q.") if key.startswith("encoder_q.") else None
        if name == "head.pool.p":
            out["pool.p"] = value.reshape(model.pool.p.shape) if value.numel() == 1 else value
        elif name in ("head.fc.weight", "head.fc.bias"):
            out["whiten." + name.removeprefix("head.fc.")] = value
        elif name is not None and (backbone_key := pycls_resnet_key(name)) is not None:
            out["backbone." + backbone_key] = value
        else:
            unmappable.append(key)
    if unmappable:
        raise ValueError(f"Cannot map {len(unmappable)} official key(s) onto {type(model).__name__}: {unmappable}")
    model.bgr_weights = True
    return out


@register_converter("cvnet")
def convert_cvnet(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """sungonce/CVNet ``CVNet_Rerank`` checkpoint -> :class:`CVNetGlobal`; drops the reranker's ``conv2ds.*`` and
    ``cv_learner.*`` (CVNet-Rerank, not implemented here); sets ``bgr_weights``."""
    return convert_encoder_q(state_dict, model, CVNET_RERANK_PREFIXES)
