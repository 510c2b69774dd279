"""The base of training-time wrappers around any irlib method (BatchFormer, the Batch Transformer): the wrapped
model gives the descriptor, evaluation sees exactly it, and the wrapper adds modules that act only in training."""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor

from irlib.losses.composite import LossTerm
from irlib.models._registry import create_model
from irlib.models.backbones import load_state_dict_strict, read_checkpoint
from irlib.models.base import RetrievalModel


class WrappedModel(RetrievalModel):
    """A retrieval model ``self.model`` plus training-only modules; ``forward`` is the wrapped model's, unchanged.

    Args:
        model: an already-built irlib model to wrap; when ``None`` one is built with
            ``create_model(base, backbone=backbone, pretrained=pretrained, **base_kwargs)``.
        backbone, pretrained, base, base_kwargs: for building the wrapped model.

    A subclass's ``weights`` argument (loaded once it is built, :meth:`load_weights`) is a state dict of the whole
    wrapper (keys ``model.*`` and the wrapper's own) or of the wrapped model alone (then loaded by its own rules).
    ``config`` holds the wrapper's own arguments, the wrapped model's backbone and method (``base``) and its whole
    configuration (``base_config``).
    """

    def __init__(
        self,
        model: RetrievalModel | None,
        backbone: str,
        pretrained: bool,
        base: str,
        base_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        if model is None:
            model = create_model(base, backbone=backbone, pretrained=pretrained, **base_kwargs)
        elif base_kwargs or pretrained:
            given = sorted(base_kwargs) + (["pretrained"] if pretrained else [])
            raise ValueError(f"arguments {given} only apply when the model is built here")
        self.model = model
        self.feat_dim: int = int(model.feat_dim)
        self.data_config: dict[str, Any] = dict(model.data_config)

    def record_config(self, arguments: dict[str, Any]) -> dict[str, Any]:
        inner = self.model.config
        own = {k: v for k, v in arguments.items() if k != "base_kwargs"}  # they are in base_config
        return super().record_config(own) | {
            "backbone": inner.get("backbone", own.get("backbone")),
            "pretrained": inner.get("pretrained", own.get("pretrained")),
            "base": inner.get("method", own.get("base")),
            "base_config": dict(inner),
        }

    def load_weights(self, path: str | os.PathLike) -> None:
        """The whole wrapper's state dict (keys ``model.*``), strictly, or the wrapped model's own file."""
        state_dict, _ = read_checkpoint(path)
        if any(k.startswith("model.") for k in state_dict):
            load_state_dict_strict(self, state_dict, os.fspath(path))
        else:
            self.model.load_weights(path)

    @property
    def bgr_weights(self) -> bool:
        """The wrapped model's flag (it flips its own input)."""
        return self.model.bgr_weights

    @bgr_weights.setter
    def bgr_weights(self, value: bool) -> None:
        self.model.bgr_weights = value

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) -> the wrapped model's feature map (B,C,h,w)."""
        return self.model.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) -> (B,D): the wrapped model's descriptor, unchanged (the wrapper's modules are training-only)."""
        return self.model(x)

    def output_dims(self) -> dict[str, int]:
        return self.model.output_dims()

    def no_weight_decay(self) -> set[str]:
        """The wrapped model's names excluded from weight decay (e.g. SpCa's mixture priors), under ``model.``."""
        return {f"model.{name}" for name in getattr(self.model, "no_weight_decay", set)()}

    def loss_terms(self) -> list[LossTerm]:
        return self.model.loss_terms()
