"""DELG's local-branch losses (Cao, Araujo, Sim, ECCV 2020): the attention classifier and the autoencoder's
reconstruction, the auxiliary terms a DELG model with a local branch adds to the run's objective."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from irlib.losses import functional as LF
from irlib.losses.base import ConfiguredLoss


class DELGAttentionLoss(ConfiguredLoss):
    """Softmax cross-entropy of a linear classifier (with bias) on the attention-pooled local features
    ``(B, C3) -> ()``: DELF's attention training (Noh et al., ICCV 2017), kept by DELG."""

    name = "delg_attention"
    inputs = ("attention_pooled",)
    owns_classes = True

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__(num_classes=num_classes, embedding_dim=embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, pooled: Tensor, labels: Tensor) -> Tensor:
        """``(B, C3), (B,) -> ()`` mean cross-entropy, in float32 under autocast."""
        with LF.fp32(pooled):
            return F.cross_entropy(self.classifier(pooled.float()), labels)


class DELGReconstructionLoss(ConfiguredLoss):
    """DELG's autoencoder loss: mean squared error between the reconstruction and the (stop-gradient) stride-16
    features it encodes, ``(B, C3, h, w)`` x2 -> ``()``; the labels are not used."""

    name = "delg_reconstruction"
    inputs = ("reconstruction", "reconstruction_target")

    def __init__(self) -> None:
        super().__init__()

    def forward(self, reconstruction: Tensor, target: Tensor, labels: Tensor | None = None) -> Tensor:
        with LF.fp32(reconstruction):
            return F.mse_loss(reconstruction.float(), target.float())
