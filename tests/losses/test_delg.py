"""DELG's local-branch losses: the attention classifier (linear + softmax cross-entropy) and the reconstruction MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from irlib.losses import DELGAttentionLoss, DELGReconstructionLoss, create_loss


def test_attention_loss_is_softmax_cross_entropy_of_a_linear_classifier_with_bias() -> None:
    torch.manual_seed(0)
    loss = create_loss("delg_attention", embedding_dim=6, num_classes=4)
    assert isinstance(loss, DELGAttentionLoss) and loss.inputs == ("attention_pooled",)
    assert loss.classifier.bias is not None and loss.classifier.weight.shape == (4, 6)
    pooled, labels = torch.randn(5, 6), torch.tensor([0, 3, 1, 1, 2])
    logits = pooled @ loss.classifier.weight.T + loss.classifier.bias
    expected = -(logits.log_softmax(dim=1)[torch.arange(5), labels]).mean()
    torch.testing.assert_close(loss(pooled, labels), expected)


def test_reconstruction_loss_is_the_mean_squared_error_and_ignores_labels() -> None:
    loss = create_loss("delg_reconstruction", embedding_dim=8, num_classes=3)
    assert isinstance(loss, DELGReconstructionLoss) and list(loss.parameters()) == []
    assert loss.inputs == ("reconstruction", "reconstruction_target")
    a, b = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(loss(a, b, torch.tensor([0, 1])), ((a - b) ** 2).mean())
    torch.testing.assert_close(loss(a, b, None), F.mse_loss(a, b))
