"""BatchFormer (Hou, Yu, Tao, CVPR 2022, ``zhihou7/BatchFormer``) around any irlib retrieval model.

A ``TransformerEncoderLayer(d_model=D, nhead=4, dim_feedforward=D, dropout=0.5)`` (the README's settings) attends
across the samples of a batch: the ``(B, D)`` descriptors are one length-B sequence. In training the shared
classifier sees both streams, ``head(cat([descriptors, batch_attended]))`` with the labels repeated twice
(:meth:`BatchFormer.forward_train`); at test time the encoder is skipped, so ``forward`` is exactly the wrapped
model's descriptor (no batch dependence, no cost).

Our choices: the encoder reads the wrapped model's L2-normalised descriptors (the only output every method shares)
and its output is L2-normalised too, so both streams live on the same sphere for a cosine-margin head; ``forward``
returns the per-image descriptor in training mode as well (so ``(B, D)`` batches stay ``(B, D)``): training code
calls :meth:`forward_train`.

``inspect`` keys: the wrapped model's (``"features"``, ``"descriptor"``, its maps) plus ``"batch_attention"``
``(B, B)``: the encoder's head-averaged attention between the images of the batch.
"""

from __future__ import annotations

import os
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from irlib.models._registry import create_model, register_model
from irlib.models.backbones import load_state_dict_strict, read_state_dict
from irlib.models.base import RetrievalModel


@register_model("batchformer")
class BatchFormer(RetrievalModel):
    """A retrieval model plus a training-only transformer over the batch.

    Args:
        model: an already-built irlib model to wrap; when ``None`` one is built with
            ``create_model(base, backbone=backbone, pretrained=pretrained, **base_kwargs)``.
        backbone, pretrained, base_kwargs: for building the wrapped model (``base_kwargs`` are the remaining
            keyword arguments, e.g. ``whitening=512`` for ``base="gem"``).
        weights: a local state dict of the whole wrapper (keys ``model.*`` and ``batchformer.*``, loaded strictly),
            or of the wrapped model alone (then loaded by the wrapped model's own rules).
        base: the wrapped method's name (ignored when ``model`` is given).
        nhead, dim_feedforward, dropout: of the encoder layer; ``dim_feedforward=None`` means D.
    """

    def __init__(
        self,
        model: RetrievalModel | None = None,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        base: str = "gem",
        nhead: int = 4,
        dim_feedforward: int | None = None,
        dropout: float = 0.5,
        **base_kwargs: Any,
    ) -> None:
        super().__init__()
        if pretrained and weights is not None:
            raise ValueError("Pass either pretrained=True or weights=PATH, not both.")
        state_dict = read_state_dict(weights) if weights is not None else None
        wrapper_weights = state_dict is not None and any(k.startswith("batchformer.") for k in state_dict)
        if model is None:
            inner_weights = weights if state_dict is not None and not wrapper_weights else None
            model = create_model(base, backbone=backbone, pretrained=pretrained, weights=inner_weights, **base_kwargs)
        elif base_kwargs or pretrained:
            given = sorted(base_kwargs) + (["pretrained"] if pretrained else [])
            raise ValueError(f"arguments {given} only apply when the model is built here")
        elif state_dict is not None and not wrapper_weights:
            raise ValueError("with an already-built model, weights must be a whole-BatchFormer state dict")
        self.model = model
        dim = int(model.feat_dim)
        if dim % nhead:
            raise ValueError(f"descriptor size {dim} is not divisible by nhead={nhead}")
        self.batchformer = nn.TransformerEncoderLayer(dim, nhead, dim_feedforward or dim, dropout)
        self.feat_dim: int = dim
        self.data_config: dict[str, Any] = dict(model.data_config)
        self.config: dict[str, Any] = {
            "method": "batchformer",
            "backbone": model.config.get("backbone", backbone),
            "pretrained": model.config.get("pretrained", pretrained),
            "weights": os.fspath(weights) if weights is not None else None,
            "base": model.config.get("method", base),
            "base_config": dict(model.config),
            "nhead": nhead,
            "dim_feedforward": dim_feedforward,
            "dropout": dropout,
        }
        if wrapper_weights:
            load_state_dict_strict(self, state_dict, os.fspath(weights))

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
        """(B,3,H,W) -> (B,D): the wrapped model's descriptor, unchanged (the encoder is training-only)."""
        return self.model(x)

    def attend(self, descriptors: Tensor) -> Tensor:
        """(B,D) descriptors -> (B,D) L2-normalised outputs of the encoder run over the batch as a sequence."""
        return F.normalize(self.batchformer(descriptors.unsqueeze(1)).squeeze(1), dim=-1)

    def forward_train(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B,3,H,W) -> (descriptors (B,D), batch-attended descriptors (B,D)); apply the shared head to
        ``torch.cat`` of both with labels ``labels.repeat(2)``."""
        descriptors = self.model(x)
        return descriptors, self.attend(descriptors)

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """The wrapped model's maps plus ``"batch_attention"`` (B,B)."""
        out = self.model.inspect(x)
        tokens = out["descriptor"].unsqueeze(1)
        _, weights = self.batchformer.self_attn(tokens, tokens, tokens, need_weights=True)
        out["batch_attention"] = weights[0]
        return out
