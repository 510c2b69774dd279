"""Cross-entropy on logits a model computes itself (the Batch Transformer's class-logit outputs)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from irlib.losses import functional as LF
from irlib.losses.base import ConfiguredLoss


class CrossEntropy(ConfiguredLoss):
    """Mean softmax cross-entropy of class logits ``(B, C), (B,) -> ()`` (in float32 under autocast); the logits
    come from the model, so the loss owns no weights."""

    name = "cross_entropy"
    inputs = ("logits",)

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__(label_smoothing=label_smoothing)
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        with LF.fp32(logits):
            return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
