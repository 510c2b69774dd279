"""AP losses on batches: the query is excluded from its own ranking, Smooth-AP is the spec's formula, every surrogate
approaches (or provably brackets) the exact AP of the batch ranking as it sharpens, ROADMAP adds its calibration
term, and gradients stay finite on degenerate batches."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from irlib.losses import ROADMAP, FastAP, QuantizedAP, SmoothAP
from irlib.losses import functional as LF
from tests.losses.conftest import assert_finite_grads, batch_ap_inputs, exact_ap, min_gap, random_batch

SEEDS = st.integers(0, 2**31 - 1)


def _mean_exact_ap(x: torch.Tensor, y: torch.Tensor) -> float:
    ap = exact_ap(*batch_ap_inputs(x, y))
    return float(ap[~ap.isnan()].mean())


def test_smooth_ap_is_the_papers_formula_with_the_query_left_out() -> None:
    x, y = random_batch(0, batch=8)
    sim = x @ x.T
    tau, aps = 0.05, []  # |s_j − s_i| / tau ≤ 40: the ±50 clamp never acts
    for q in range(len(y)):
        others = [j for j in range(len(y)) if j != q]
        positives = [j for j in others if y[j] == y[q]]
        if not positives:
            continue
        g = [[1 / (1 + math.exp(-float(sim[q, j] - sim[q, i]) / tau)) for j in range(len(y))] for i in range(len(y))]
        ranks = [
            (1 + sum(g[i][j] for j in positives if j != i)) / (1 + sum(g[i][j] for j in others if j != i))
            for i in positives
        ]
        aps.append(sum(ranks) / len(positives))
    assert SmoothAP(tau=tau)(x, y).item() == pytest.approx(1 - sum(aps) / len(aps), abs=1e-12)


@pytest.mark.parametrize(
    "loss",
    [SmoothAP(), FastAP(), QuantizedAP(), ROADMAP(calibration_weight=0.0)],
    ids=["smoothap", "fastap", "quantizedap", "roadmap"],
)
def test_each_query_ranks_the_other_items(loss: torch.nn.Module) -> None:
    """The batch loss equals the functional AP run query by query on the scores without the query's own column."""
    x, y = random_batch(1, batch=9)
    sim = x @ x.T
    aps = []
    for q in range(len(y)):
        keep = torch.arange(len(y)) != q
        pos = (y[keep] == y[q])[None]
        if pos.any():
            aps.append(loss.query_ap(sim[q, keep][None], pos, torch.ones_like(pos)))
    assert loss(x, y).item() == pytest.approx(1 - float(torch.cat(aps).mean()), abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, batch=st.integers(4, 10), classes=st.integers(2, 4))
def test_smooth_ap_and_supap_reach_the_exact_ap_as_they_sharpen(seed: int, batch: int, classes: int) -> None:
    x, y = random_batch(seed, batch=batch, classes=classes)
    sim, pos, valid = batch_ap_inputs(x, y)
    assume(pos.any())
    gap = min_gap(sim, valid)
    assume(gap > 1e-6)
    exact = _mean_exact_ap(x, y)
    smooth = [1 - SmoothAP(tau)(x, y).item() for tau in (0.1, 0.01, gap / 60)]
    assert smooth[-1] == pytest.approx(exact, abs=1e-12)
    assert abs(smooth[-1] - exact) <= abs(smooth[0] - exact)
    supap_default = 1 - ROADMAP(calibration_weight=0.0)(x, y).item()
    assert supap_default <= exact + 1e-12  # SupAP upper-bounds every negative's rank contribution
    sharp = ROADMAP(tau=gap / 60, delta=0.0, rho=0.0, offset=1.0, calibration_weight=0.0)
    assert 1 - sharp(x, y).item() == pytest.approx(exact, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, batch=st.integers(4, 10), classes=st.integers(2, 4))
def test_histogram_aps_bracket_the_exact_ap_with_fine_bins(seed: int, batch: int, classes: int) -> None:
    """FastAP and APLoss keep a split-bin bias however fine the bins (see test_functional), but with bins finer
    than half the smallest gap: ``AP − mean_q Σ 1/(4 r)/|P| ≤ surrogate ≤ AP``; on the grid they are exact."""
    x, y = random_batch(seed, batch=batch, classes=classes)
    sim, pos, valid = batch_ap_inputs(x, y)
    assume(pos.any())
    gap = min_gap(sim, valid)
    assume(gap > 2e-3)
    exact = _mean_exact_ap(x, y)
    per_query_bound = []
    for s, p, v in zip(sim, pos, valid, strict=True):
        if p.any():
            ranks = [1 + int(((s > s[i]) & v).sum()) for i in range(len(s)) if p[i]]
            per_query_bound.append(sum(1 / (4 * r) for r in ranks if r >= 2) / len(ranks))
    bound = sum(per_query_bound) / len(per_query_bound)
    for loss in (FastAP(bins=math.ceil(4 / gap) + 1), QuantizedAP(bins=math.ceil(4 / gap) + 2, lo=-1.0, hi=1.0)):
        ap = 1 - loss(x, y).item()
        assert exact - bound - 1e-12 <= ap <= exact + 1e-12


def test_roadmap_adds_the_calibration_term() -> None:
    x, y = random_batch(2, batch=10)
    sim, pos, _ = batch_ap_inputs(x, y)
    calib = LF.calibration_loss(sim, pos, ~(pos | torch.eye(10, dtype=torch.bool)), 0.9, 0.6)
    supap = ROADMAP(calibration_weight=0.0)(x, y)
    total = ROADMAP(supap_weight=0.3, calibration_weight=0.7)(x, y)
    assert total.item() == pytest.approx(0.3 * supap.item() + 0.7 * calib.item())
    assert ROADMAP()(x, y).item() == pytest.approx(supap.item() + calib.item())
    official = ROADMAP(linear_from_delta=False, calibration_weight=0.0)(x, y)
    assert official.item() >= supap.item() - 1e-12  # ρ·D + offset ≥ ρ·(D − δ) + offset: ranks can only grow


def test_defaults_follow_the_references() -> None:
    assert SmoothAP().config == {"name": "smoothap", "tau": 0.01}
    assert FastAP().config == {"name": "fastap", "bins": 10}
    assert QuantizedAP().config == {"name": "quantizedap", "bins": 25, "lo": 0.0, "hi": 1.0}
    assert ROADMAP().config == {
        "name": "roadmap",
        "tau": 0.01,
        "rho": 100.0,
        "delta": 0.05,
        "offset": 1.44,
        "linear_from_delta": True,
        "pos_margin": 0.9,
        "neg_margin": 0.6,
        "supap_weight": 1.0,
        "calibration_weight": 1.0,
    }
    with pytest.raises(ValueError, match="bins"):
        QuantizedAP(bins=1)


ALL = [SmoothAP, FastAP, QuantizedAP, ROADMAP]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_degenerate_batches_have_finite_gradients(cls: type) -> None:
    loss_fn = cls()
    base = torch.randn(3, 4, dtype=torch.float64)
    cases = [
        (base[[0, 0, 0, 1]], torch.tensor([0, 0, 1, 1])),  # identical embeddings, ties at cos = 1
        (torch.cat([base[:2], -base[:2]]), torch.tensor([0, 1, 0, 2])),  # cos = −1 pairs; class 2 a singleton
    ]
    for x, y in cases:
        x = x.clone().requires_grad_(True)
        loss = loss_fn(x, y)
        loss.backward()
        assert torch.isfinite(loss)
        assert_finite_grads(x)
    alone = base.clone().requires_grad_(True)
    loss = loss_fn(alone, torch.tensor([0, 1, 2]))  # no query has a positive: nothing to rank, zero loss
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(alone.grad, torch.zeros_like(alone))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_float32_under_autocast(cls: type) -> None:
    x, y = random_batch(3, batch=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cls()(x.float().bfloat16(), y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
