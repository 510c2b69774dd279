"""Cross-entropy on a model's own class logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from irlib.losses import CrossEntropy, create_loss


def test_cross_entropy_reads_logits_and_owns_no_weights() -> None:
    loss = create_loss("cross_entropy", embedding_dim=5, num_classes=5)
    assert isinstance(loss, CrossEntropy) and loss.inputs == ("logits",) and list(loss.parameters()) == []
    logits, labels = torch.randn(4, 5), torch.tensor([0, 4, 2, 2])
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels))
    smoothed = create_loss("cross_entropy", label_smoothing=0.1)
    torch.testing.assert_close(smoothed(logits, labels), F.cross_entropy(logits, labels, label_smoothing=0.1))
