"""The API every irlib retrieval model shares, so extraction, training and figures treat methods alike."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from irlib.models.backbones import (
    backbone_data_config,
    create_backbone,
    load_backbone_weights,
    load_state_dict_strict,
    read_checkpoint,
)


def to_channels_last(module: nn.Module) -> bool:
    """Put a module's 4-D weights in channels_last (NHWC) layout; False when a 5-D weight (e.g. SENet's Conv3d)
    prevents it, the module then staying contiguous."""
    try:
        module.to(memory_format=torch.channels_last)
        return True
    except RuntimeError:
        module.to(memory_format=torch.contiguous_format)
        return False


class RetrievalModel(nn.Module):
    """Base of all methods: ``(B, 3, H, W)`` RGB images -> ``(B, feat_dim)`` L2-normalised descriptors.

    Attributes set by subclasses:
        feat_dim: descriptor size D.
        data_config: input normalisation ``{"mean", "std"}`` (RGB order, on [0, 1] pixels) and ``channel_order``
            ("RGB"), what the extractor applies before calling the model.
        config: the constructor arguments, recorded with every run.
        bgr_weights: the backbone was trained on BGR input (pycls family: CVNet, SuperGlobal, DOLG); the model
            then flips its RGB input itself (:meth:`to_backbone_order`). Set by checkpoint converters.

    Methods to override: :meth:`forward_features` (the feature map before pooling) and :meth:`forward`;
    :meth:`inspect` adds method-specific maps (attention, assignments, ...) for figures.
    """

    feat_dim: int
    data_config: dict[str, Any]
    config: dict[str, Any]
    bgr_weights: bool = False

    def build_backbone(self, name: str, pretrained: bool, weights: str | os.PathLike | None) -> int:
        """Create ``self.backbone`` (a timm feature extractor, see ``create_backbone``) and ``self.data_config``;
        returns the feature-map channels. ``pretrained`` and ``weights`` (loaded later by :meth:`load_weights`)
        exclude each other."""
        if pretrained and weights is not None:
            raise ValueError("Pass either pretrained=True or weights=PATH, not both.")
        self.backbone, channels = create_backbone(name, pretrained=pretrained)
        self.data_config = backbone_data_config(name, self.backbone)
        return channels

    def load_weights(self, path: str | os.PathLike) -> None:
        """Strictly load a local file (optionally under ``model_state``/``state_dict``/``model``).

        Keys ``backbone.*`` make it the whole model's state dict; otherwise it is the bare backbone's (timm and
        torchvision layout, its ImageNet classifier dropped, or a pycls-layout ResNet, which marks the weights
        BGR). A file from :func:`irlib.models.checkpoints.save_checkpoint` also restores ``bgr_weights``.
        Missing/unexpected keys or shape mismatches -> ValueError naming the file and the keys.
        """
        state_dict, meta = read_checkpoint(path)
        source = os.fspath(path)
        if any(k.startswith("backbone.") for k in state_dict):
            load_state_dict_strict(self, state_dict, source)
            self.bgr_weights = bool(meta.get("bgr_weights", False))
        else:
            self.bgr_weights = load_backbone_weights(self.backbone, state_dict, source)

    def to_backbone_order(self, x: Tensor) -> Tensor:
        """RGB input -> the channel order of the backbone weights (ImageNet RGB statistics flip with it)."""
        return x.flip(1) if self.bgr_weights else x

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, h, w)``: the feature map the method pools."""
        raise NotImplementedError

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """Tensors for figures, keyed by name; always ``"features"`` ``(B, C, h, w)`` and ``"descriptor"``
        ``(B, D)``; methods add their own maps (documented in each module), spatial maps as ``(B, h, w)`` or
        ``(B, K, h, w)``."""
        return {"features": self.forward_features(x), "descriptor": self(x)}
