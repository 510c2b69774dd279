"""CFCD's local triplet loss: matching (reciprocal NN, Lowe ratio, attention top-k), hard negatives, sum, margin."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from irlib.losses import CFCDLocalTripletLoss, CompositeLoss, LossTerm, create_loss
from irlib.losses.cfcd import match_local, nearest_negatives


def _unit(degrees: list[float]) -> Tensor:
    """``(K, 2)`` unit vectors at the given angles."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def _maps(images: list[Tensor], h: int, w: int) -> Tensor:
    """``(K, C)`` descriptors per image -> ``(B, C, h, w)`` maps, position k = row-major ``(k // w, k % w)``."""
    return torch.stack([x.T.reshape(-1, h, w) for x in images])


# A 4-image tuple (anchor, positive, 2 negatives) of 2-D descriptors at 8 positions (2 x 4 maps), by angle:
ANCHOR = [0, 90, 180, 270, 135, 315, 225, 45]
POSITIVE = [5, 93, 158, 20, 268, 320, 228, 47]
POSITIVE_ATTENTION = [9, 1, 8, 7, 6, 2, 1.5, 0.5]  # top 4 (K // 2): positions 0, 2, 3, 4
NEGATIVE_1 = [10, 100, 200, 260, 150, 30, 330, 80]
NEGATIVE_2 = [30, 350, 120, 170, 200, 250, 300, 60]
# Positive 0 <-> anchor 0 and positive 4 <-> anchor 3 match. Rejected: positive 2 (nearest anchors 180 and 135
# degrees away by 22 and 23 degrees: ratio 0.957 > 0.9), positive 3 (its nearest anchor, 0, prefers positive 0: not
# reciprocal), positives 1, 5, 6, 7 (close matches, but outside the attention top 4).


def _hand_tuple(scale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    images = [_unit(a) for a in (ANCHOR, POSITIVE, NEGATIVE_1, NEGATIVE_2)]
    if scale:  # the loss normalises every location: arbitrary positive scales change nothing
        images = [x * torch.rand(len(x), 1, generator=g, dtype=torch.float64).add(0.5) for x in images]
    feats = _maps(images, 2, 4)
    attention = torch.rand(4, 2, 4, generator=g, dtype=torch.float64)
    attention[1] = torch.tensor(POSITIVE_ATTENTION, dtype=torch.float64).reshape(2, 4)
    return feats, attention, torch.tensor([3, 3, 1, 2])


def _sq(deg: float) -> float:
    """Squared distance of two unit vectors ``deg`` degrees apart."""
    return 2 - 2 * math.cos(math.radians(deg))


def _expected(margin: float) -> float:
    # matches (anchor 0 / positive 0, 5 degrees) and (anchor 3 / positive 4, 2 degrees); nearest negatives: for
    # anchor 0 (0 deg) 10 deg in negative 1 and 350 deg in negative 2; for anchor 3 (270 deg) 260 and 250 deg.
    terms = [_sq(5) - _sq(10), _sq(5) - _sq(10), _sq(2) - _sq(10), _sq(2) - _sq(20)]
    return sum(max(0.0, t + margin) for t in terms)


def test_matching_keeps_reciprocal_ratio_tested_attended_pairs_only() -> None:
    feats, attention, _ = _hand_tuple()
    x = F.normalize(feats.flatten(2).transpose(1, 2), dim=-1)
    valid, anchor_index = match_local(x[None, 0], x[None, 1], attention[None, 1].flatten(1))
    assert valid[0].nonzero().flatten().tolist() == [0, 4]
    assert anchor_index[0, [0, 4]].tolist() == [0, 3]
    # without the attention filter the low-attention positions match too; a looser ratio admits positive 2
    everywhere = torch.ones(1, 8, dtype=torch.float64)
    everywhere[0, :4] = 2  # top 4: positions 0-3
    assert match_local(x[None, 0], x[None, 1], everywhere)[0][0].nonzero().flatten().tolist() == [0, 1]
    looser = match_local(x[None, 0], x[None, 1], attention[None, 1].flatten(1), 0.96)[0]
    assert looser[0].nonzero().flatten().tolist() == [0, 2, 4]
    negatives = nearest_negatives(x[None, 0], x[None, 2:])
    assert negatives[0, :, 0].tolist() == [0, 1] and negatives[0, :, 3].tolist() == [3, 5]


@pytest.mark.parametrize("margin", [0.1, 0.0, 0.2])
def test_hand_built_tuple_gives_the_summed_hinge(margin: float) -> None:
    feats, attention, labels = _hand_tuple()
    loss = CFCDLocalTripletLoss(margin=margin, tuple_size=4)
    value = loss(feats, attention, labels)
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(_expected(margin), abs=1e-12)
    if margin == 0.1:  # one of the four hinges is inactive: anchor 3's second negative is 20 degrees away
        assert _sq(2) - _sq(20) + 0.1 < 0 < _expected(0.1)


def test_tuples_are_summed_not_averaged() -> None:
    feats, attention, labels = _hand_tuple()
    loss = CFCDLocalTripletLoss(tuple_size=4)
    two = loss(torch.cat([feats, feats]), torch.cat([attention, attention]), torch.cat([labels, labels]))
    assert float(two) == pytest.approx(2 * _expected(0.1), abs=1e-12)


def test_gradient_reaches_matched_positions_and_the_chosen_negatives_only() -> None:
    feats, attention, labels = _hand_tuple()
    feats.requires_grad_(True)
    CFCDLocalTripletLoss(tuple_size=4)(feats, attention, labels).backward()
    moved = feats.grad.flatten(2).transpose(1, 2).abs().sum(-1) > 0  # (B, K)
    assert moved[0].nonzero().flatten().tolist() == [0, 3]
    assert moved[1].nonzero().flatten().tolist() == [0, 4]
    assert moved[2].nonzero().flatten().tolist() == [0, 3]
    assert moved[3].nonzero().flatten().tolist() == [1]  # anchor 3's hinge on negative 2 (position 5) is inactive


def _reference(feats: Tensor, attention: Tensor, size: int, margin: float, ratio: float) -> float:
    """The loss by plain loops over tuples, positive positions and negatives."""
    total = 0.0
    for t in range(feats.shape[0] // size):
        x = [F.normalize(feats[t * size + k].flatten(1).T, dim=-1) for k in range(size)]
        anchor, positive, k = x[0], x[1], x[0].shape[0]
        att = attention[t * size + 1].flatten().tolist()
        top = set(sorted(range(k), key=lambda j: -att[j])[: k // 2])
        for j in range(k):
            column = [float((anchor[i] - positive[j]).norm()) for i in range(k)]
            i = min(range(k), key=lambda i: column[i])
            if min(range(k), key=lambda q: float((anchor[i] - positive[q]).norm())) != j:
                continue
            if column[i] / min(column[q] for q in range(k) if q != i) > ratio or j not in top:
                continue
            d_pos = float((anchor[i] - positive[j]).pow(2).sum())
            for negative in x[2:]:
                q = min(range(k), key=lambda q: float((anchor[i] - negative[q]).norm()))
                total += max(0.0, d_pos - float((anchor[i] - negative[q]).pow(2).sum()) + margin)
    return total


@pytest.mark.parametrize("seed", range(4))
def test_random_batches_match_a_loop_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tuples, size, c, h, w = 3, 8, 6, 3, 4
    feats = torch.randn(tuples * size, c, h, w, generator=g, dtype=torch.float64)
    # positives: the anchor's map, shuffled and perturbed, so that several positions match
    for t in range(tuples):
        perm = torch.randperm(h * w, generator=g)
        anchor = feats[t * size].flatten(1)
        feats[t * size + 1] = (anchor[:, perm] + 0.3 * torch.randn(c, h * w, generator=g)).reshape(c, h, w)
    attention = torch.rand(tuples * size, h, w, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6] * tuples)
    for margin, ratio in [(0.1, 0.9), (0.5, 0.8)]:
        value = CFCDLocalTripletLoss(margin=margin, lowe_ratio=ratio)(feats, attention, labels)
        expected = _reference(feats, attention, size, margin, ratio)
        assert expected > 0
        assert float(value) == pytest.approx(expected, rel=1e-10)


def test_no_match_gives_a_zero_that_still_backpropagates() -> None:
    feats, attention, labels = _hand_tuple(scale=False)
    feats[1] = _maps([_unit([a + 1 for a in ANCHOR])], 2, 4)[0]  # every anchor 1 degree from a positive
    leaf = feats.requires_grad_(True)
    value = CFCDLocalTripletLoss(tuple_size=4, lowe_ratio=1e-9)(leaf, attention, labels)  # no ratio passes
    assert value.item() == 0.0
    value.backward()
    assert leaf.grad is not None and not leaf.grad.any()


def test_batches_that_are_not_tuples_are_refused() -> None:
    feats, attention, labels = _hand_tuple()
    loss = CFCDLocalTripletLoss(tuple_size=4)
    with pytest.raises(ValueError, match="sampler: tuple"):
        loss(feats, attention, torch.tensor([3, 4, 1, 2]))  # the positive is of another class
    with pytest.raises(ValueError, match="sampler: tuple"):
        loss(feats, attention, torch.tensor([3, 3, 3, 2]))  # a negative of the anchor's class
    with pytest.raises(ValueError, match="whole number of 4-tuples"):
        loss(feats[:3], attention[:3], labels[:3])
    with pytest.raises(ValueError, match="tuple_size"):
        CFCDLocalTripletLoss(tuple_size=2)


def test_registered_with_its_inputs_and_official_defaults() -> None:
    loss = create_loss("cfcd_local_triplet", embedding_dim=512, num_classes=10)
    assert isinstance(loss, CFCDLocalTripletLoss)
    assert loss.config == {"name": "cfcd_local_triplet", "margin": 0.1, "lowe_ratio": 0.9, "tuple_size": 8}
    assert CFCDLocalTripletLoss.inputs == ("local_features", "attention") and not CFCDLocalTripletLoss.owns_classes


def test_a_composite_objective_feeds_it_the_named_outputs_with_its_weight() -> None:
    feats, attention, labels = _hand_tuple()
    objective = CompositeLoss(
        [LossTerm("cfcd_local_triplet", weight=0.05, kwargs={"tuple_size": 4})],
        output_dims={"local_features": 2, "attention": 1},
    )
    total, terms = objective({"local_features": feats, "attention": attention}, labels)
    assert float(terms["cfcd_local_triplet"]) == pytest.approx(_expected(0.1), abs=1e-12)
    assert float(total) == pytest.approx(0.05 * _expected(0.1), abs=1e-12)


def test_half_precision_inputs_are_computed_in_float32() -> None:
    feats, attention, labels = _hand_tuple()
    value = CFCDLocalTripletLoss(tuple_size=4)(feats.to(torch.bfloat16), attention.float(), labels)
    assert value.dtype == torch.float32 and float(value) == pytest.approx(_expected(0.1), abs=2e-2)
