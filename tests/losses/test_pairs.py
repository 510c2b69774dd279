"""Contrastive and triplet losses against direct loops over the mined pairs/triplets, for every miner, plus edge
cases (identical embeddings, singleton classes, batches without triplets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from irlib.losses import ContrastiveLoss, TripletLoss
from irlib.losses import functional as LF
from tests.losses.conftest import assert_finite_grads, loop_triplets

F64 = torch.float64
MINERS = ("all", "hard", "semihard")


def _batch(seed: int, batch: int = 9, dim: int = 4, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g, dtype=F64), torch.randint(0, classes, (batch,), generator=g)


def _distances(x: torch.Tensor) -> list[list[float]]:
    x = F.normalize(x, dim=-1)
    return [[float((x[i] - x[j]).norm()) for j in range(len(x))] for i in range(len(x))]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), margin=st.floats(0.1, 1.5), miner=st.sampled_from(MINERS))
def test_contrastive_matches_a_loop_over_mined_pairs(seed: int, margin: float, miner: str) -> None:
    x, y = _batch(seed)
    d = _distances(x)
    triplets = loop_triplets(torch.tensor(d), y, miner, margin)
    pos_pairs = {(a, p) for a, p, _ in triplets}
    neg_pairs = {(a, n) for a, _, n in triplets}
    terms = [0.5 * d[a][p] ** 2 for a, p in pos_pairs] + [0.5 * max(0.0, margin - d[a][n]) ** 2 for a, n in neg_pairs]
    loss = ContrastiveLoss(margin=margin, miner=miner)(x, y)
    assert loss.item() == pytest.approx(_mean(terms), abs=1e-12)
    summed = ContrastiveLoss(margin=margin, miner=miner, reduction="sum")(x, y)
    assert summed.item() == pytest.approx(sum(terms), abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    margin=st.floats(0.1, 1.5),
    miner=st.sampled_from(MINERS),
    squared=st.booleans(),
)
def test_triplet_matches_a_loop_over_mined_triplets(seed: int, margin: float, miner: str, squared: bool) -> None:
    x, y = _batch(seed)
    d = [[v**2 if squared else v for v in row] for row in _distances(x)]
    triplets = loop_triplets(torch.tensor(d), y, miner, margin)
    terms = [max(0.0, d[a][p] - d[a][n] + margin) for a, p, n in triplets]
    loss = TripletLoss(margin=margin, miner=miner, squared=squared)(x, y)
    assert loss.item() == pytest.approx(_mean(terms), abs=1e-12)


def test_callable_miner_and_unnormalised_distances() -> None:
    def first_anchor(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
        mask = LF.all_triplets(dist, labels)
        mask[1:] = False
        return mask

    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, -1.0]], dtype=F64)
    y = torch.tensor([0, 0, 1, 1])
    loss = TripletLoss(margin=0.5, miner=first_anchor, squared=False, normalize=False)
    # anchor 0 (origin): positive at distance 1, negatives at 3 and 1 -> relu(1 − 3 + .5) = 0, relu(1 − 1 + .5) = .5
    assert loss(x, y).item() == pytest.approx(0.25)
    assert loss.config == {
        "name": "triplet",
        "margin": 0.5,
        "miner": "first_anchor",
        "reduction": "mean",
        "normalize": False,
        "squared": False,
    }


@pytest.mark.parametrize("miner", MINERS)
@pytest.mark.parametrize("cls", [ContrastiveLoss, TripletLoss])
def test_edge_cases_have_finite_gradients(cls: type, miner: str) -> None:
    loss_fn = cls(miner=miner)
    same = torch.ones(4, 3, dtype=F64, requires_grad=True)  # identical embeddings: every distance is 0
    loss_fn(same, torch.tensor([0, 0, 1, 2])).backward()  # classes 1 and 2 are singletons
    assert_finite_grads(same)
    alone = torch.randn(3, 3, dtype=F64, requires_grad=True)
    loss = loss_fn(alone, torch.tensor([0, 1, 2]))  # no positive pair: no triplet, zero loss, still a graph
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(alone.grad, torch.zeros_like(alone))


def test_defaults_are_cirtorchs() -> None:
    assert ContrastiveLoss().config["margin"] == 0.7
    assert TripletLoss().config["margin"] == 0.5 and TripletLoss().squared
    with pytest.raises(ValueError, match="reduction"):
        ContrastiveLoss(reduction="max")  # type: ignore[arg-type]
