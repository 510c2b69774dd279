"""The per-domain classifier (UnED's "separate" classifier): each image's loss on its own domain's head, checked
against the cosine softmax written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irlib.losses.composite import CompositeLoss, LossTerm
from irlib.losses.domains import PerDomainHead, split_heads_by_domain

LABEL_DOMAINS = [0, 0, 0, 1, 1]  # joint labels 0-2 are domain 0's classes 0-2, labels 3-4 domain 1's classes 0-1


def _normface(embeddings: torch.Tensor, weight: torch.Tensor, local: torch.Tensor, s: float = 16.0) -> torch.Tensor:
    """UnED's loss by hand: cross-entropy of s x cosine to each class column (``loss_utils.py`` "normface")."""
    logits = s * F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).T
    return F.cross_entropy(logits, local)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g, dtype=torch.float64), torch.tensor([0, 4, 2, 3, 0, 1])


def test_the_loss_is_the_batch_mean_of_each_images_loss_on_its_own_domains_classes() -> None:
    head = PerDomainHead("cosface", LABEL_DOMAINS, 4, s=16.0, m=0.0).double()
    x, y = _batch()
    w0, w1 = head.heads[0].weight, head.heads[1].weight
    assert w0.shape == (3, 4) and w1.shape == (2, 4)
    in0, in1 = torch.tensor([0, 2, 4, 5]), torch.tensor([1, 3])  # images of domain 0 / domain 1
    by_hand = (
        4 * _normface(x[in0], w0, torch.tensor([0, 2, 0, 1])) + 2 * _normface(x[in1], w1, torch.tensor([1, 0]))
    ) / 6
    torch.testing.assert_close(head(x, y), by_hand)
    # a batch of one domain (the official batches): that domain's head's own mean loss
    torch.testing.assert_close(head(x[in1], y[in1]), _normface(x[in1], w1, torch.tensor([1, 0])))


def test_a_head_whose_domain_is_absent_gets_a_zero_gradient() -> None:
    head = PerDomainHead("cosface", LABEL_DOMAINS, 4, s=16.0, m=0.0).double()
    x, y = _batch()
    head(x[[0, 2]], y[[0, 2]]).backward()  # domain 0 only
    assert head.heads[0].weight.grad.abs().sum() > 0
    assert torch.equal(head.heads[1].weight.grad, torch.zeros_like(head.heads[1].weight))


def test_top1_counts_the_arg_max_among_the_images_own_domain() -> None:
    head = PerDomainHead("cosface", LABEL_DOMAINS, 2, s=16.0, m=0.0)
    with torch.no_grad():
        head.heads[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        head.heads[1].weight.copy_(torch.tensor([[0.0, -1.0], [1.0, 0.1]]))
    x = torch.tensor([[1.0, 0.05], [1.0, 0.0], [0.0, -1.0]])
    # image 0 -> class 0 (right); image 1 is domain 1's class 1 (label 4): its nearest joint class is domain 0's
    # class 0, but among domain 1's classes it is class 1 (right); image 2 labelled 3 = domain 1's class 0 (right)
    assert head.top1_hits(x, torch.tensor([0, 4, 3])) == 3
    assert head.top1_hits(x, torch.tensor([1, 3, 4])) == 0
    cos = head.cosine(x)
    assert cos.shape == (3, 5)
    torch.testing.assert_close(cos[:, 3:], head.heads[1].cosine(x))


def test_split_replaces_the_class_heads_of_an_objective() -> None:
    loss = CompositeLoss(
        [LossTerm("arcface", kwargs={"s": 20.0, "m": 0.1})], output_dims={"descriptor": 4}, num_classes=5
    )
    assert split_heads_by_domain(loss, LABEL_DOMAINS) == ["arcface"]
    head = loss.terms["arcface"]
    assert isinstance(head, PerDomainHead) and [h.num_classes for h in head.heads] == [3, 2]
    assert head.heads[0].s == 20.0 and head.heads[1].m == 0.1
    assert loss.descriptor_head() is head
    no_classes = CompositeLoss([LossTerm("triplet")], output_dims={"descriptor": 4})
    with pytest.raises(ValueError, match="class-weight loss term"):
        split_heads_by_domain(no_classes, LABEL_DOMAINS)


@pytest.mark.parametrize(
    ("head", "domains", "message"),
    [("triplet", [0, 1], "owns no class weights"), ("cosface", [0, 2], r"domains \[1\] have no class")],
)
def test_bad_arguments_are_named(head: str, domains: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PerDomainHead(head, domains, 4)
