"""irlib.losses.functional: margin transforms against hand computations, MadaCos's ρ property, distances and
miners against loops, and the AP surrogates against the exact AP of a ranking (hypothesis properties)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from irlib.losses import functional as LF
from tests.losses.conftest import assert_finite_grads, exact_ap, loop_triplets, min_gap

F64 = torch.float64
SEEDS = st.integers(0, 2**31 - 1)


def _rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------------------------------- cosines and margins


def test_cosine_logits_takes_the_max_over_class_major_subcentres() -> None:
    x, w = _rand(0, 4, 5) - 0.5, _rand(1, 3 * 2, 5) - 0.5
    cos = LF.cosine_logits(x, w, subcenters=2)
    xn, wn = F.normalize(x, dim=-1), F.normalize(w, dim=-1)
    for i in range(4):
        for c in range(3):
            assert float(cos[i, c]) == pytest.approx(max(float(xn[i] @ wn[2 * c]), float(xn[i] @ wn[2 * c + 1])))


M = 0.5
HAND_COS = [0.8, -0.5, -0.95]  # θ < π/2;  π/2 < θ ≤ π − m;  θ > π − m (π − 0.5 ≈ 2.64, acos(-0.95) ≈ 2.82)


def test_arcface_target_by_hand() -> None:
    cos_y = torch.tensor(HAND_COS, dtype=F64)
    phi = [math.cos(math.acos(c) + M) for c in HAND_COS]
    expected = {
        "none": [phi[0], phi[1], -0.95],
        "cos_minus_msinm": [phi[0], phi[1], -0.95 - M * math.sin(M)],
        "easy_margin": [phi[0], -0.5, -0.95],
    }
    for fallback, values in expected.items():
        torch.testing.assert_close(LF.arcface_target(cos_y, M, fallback), torch.tensor(values, dtype=F64))
    with pytest.raises(ValueError, match="fallback"):
        LF.arcface_target(cos_y, M, "bogus")  # type: ignore[arg-type]


@given(c=st.floats(-1.0, 1.0), m=st.floats(0.01, 1.5))
def test_arcface_variants_differ_exactly_beyond_pi_minus_m(c: float, m: float) -> None:
    cos_y = torch.tensor([c], dtype=F64)
    clamped = min(max(c, -1 + LF.COS_EPS), 1 - LF.COS_EPS)
    theta = math.acos(clamped)
    none, msinm, easy = (float(LF.arcface_target(cos_y, m, f)) for f in ("none", "cos_minus_msinm", "easy_margin"))
    if theta > math.pi - m:
        assert none == clamped and easy == clamped
        assert msinm == pytest.approx(clamped - m * math.sin(m), abs=1e-15)
    else:
        assert none == msinm == pytest.approx(math.cos(theta + m), abs=1e-15)
        assert easy == (none if clamped > 0 else clamped)


def test_curricular_logits_by_hand() -> None:
    m, t = 0.5, 0.2
    cos = torch.tensor([[0.6, 0.7, 0.1], [0.2, -0.95, 0.5]], dtype=F64)
    labels = torch.tensor([0, 1])
    phi0 = math.cos(math.acos(0.6) + m)
    phi1 = math.cos(math.acos(-0.95) + m)
    assert 0.1 < phi0 < 0.7 and phi1 < 0.2  # row 0: only 0.7 is a hard negative; row 1: both are
    assert math.acos(-0.95) > math.pi - m  # row 1's target takes the cos − m·sin m fallback
    expected = torch.tensor(
        [[phi0, 0.7 * (t + 0.7), 0.1], [0.2 * (t + 0.2), -0.95 - m * math.sin(m), 0.5 * (t + 0.5)]], dtype=F64
    )
    torch.testing.assert_close(LF.curricular_logits(cos, labels, m, t), expected)


def test_additive_margin_and_replace_target() -> None:
    cos = _rand(2, 3, 4)
    labels = torch.tensor([3, 0, 0])
    out = LF.additive_margin(cos, labels, 0.25)
    expected = cos.clone()
    expected[torch.arange(3), labels] -= 0.25
    torch.testing.assert_close(out, expected)
    replaced = LF.replace_target(cos, labels, torch.tensor([7.0, 8.0, 9.0], dtype=F64))
    expected = cos.clone()
    expected[torch.arange(3), labels] = torch.tensor([7.0, 8.0, 9.0], dtype=F64)
    torch.testing.assert_close(replaced, expected)


# ------------------------------------------------------------------------------------------- MadaCos


def _madacos_batch(seed: int, batch: int = 7, classes: int = 6, boost: float = 0.6) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(batch, classes, generator=g, dtype=F64) * 0.6 - 0.3
    labels = torch.randint(0, classes, (batch,), generator=g)
    cos[torch.arange(batch), labels] += boost * torch.rand(batch, generator=g, dtype=F64)
    return cos.clamp_(max=0.999), labels  # cosines; a boosted target above 1 would be no cosine


def _median_target_probability(cos: torch.Tensor, labels: torch.Tensor, s: torch.Tensor, m: torch.Tensor) -> float:
    cos_y = LF.target_cosine(cos, labels)
    i_med = int(cos_y.median(0).indices)
    probs = torch.softmax(s * LF.additive_margin(cos, labels, m), dim=1)
    return float(probs[i_med, labels[i_med]])


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, rho=st.sampled_from([0.02, 0.04, 0.1]), boost=st.floats(0.0, 1.2))
def test_madacos_median_sample_gets_probability_rho(seed: int, rho: float, boost: float) -> None:
    cos, labels = _madacos_batch(seed, boost=boost)
    s, m = LF.madacos_scale_margin(cos, labels, rho)
    c_med = cos[torch.arange(len(labels)), labels].sort().values[(len(labels) - 1) // 2]
    assert float(s) == pytest.approx(max(32.0, math.log(9_999_999 * (1 - rho) / rho) / (1 - float(c_med))))
    assert float(m) >= 0
    p = _median_target_probability(cos, labels, s, m)
    if float(m) > 0:
        assert p == pytest.approx(rho, abs=1e-12)
    else:  # the margin that would give ρ is negative and was clamped: the median sample is below ρ already
        assert p <= rho


def test_madacos_margin_matches_the_direct_exp_formula_and_modes() -> None:
    cos, labels = _madacos_batch(3, boost=1.0)
    rho = 0.02
    s, m = LF.madacos_scale_margin(cos, labels, rho)
    target = F.one_hot(labels, cos.shape[1]).bool()
    b = torch.where(target, 0.0, torch.exp(s * cos)).sum(1)  # CFCD's B, fine in float64 at these scales
    i_med = int(LF.target_cosine(cos, labels).median(0).indices)
    c_med = LF.target_cosine(cos, labels)[i_med]
    for mode, b_avg in (("default", b[i_med]), ("median", b.median()), ("mean", b.mean())):
        _, m_mode = LF.madacos_scale_margin(cos, labels, rho, b_reduce=mode)
        torch.testing.assert_close(m_mode, (c_med - torch.log(b_avg * rho / (1 - rho)) / s).clamp_min(0))
    assert float(m) > 0
    s_eval, m_eval = LF.madacos_scale_margin(cos, labels, rho, training=False)
    assert s_eval == s and m_eval == 0


def test_madacos_scale_floor_and_margin_clamp() -> None:
    cos = torch.full((3, 6), 0.3, dtype=F64)
    labels = torch.tensor([0, 1, 2])
    cos[torch.arange(3), labels] = 0.0  # raw s = ln(4.9e8) ≈ 20 < 32; raw m = −(ln(5 e^9.6) + ln(0.02/0.98))/32 < 0
    s, m = LF.madacos_scale_margin(cos, labels, 0.02)
    assert float(s) == 32.0 and float(m) == 0.0


def test_madacos_no_overflow_at_large_scale() -> None:
    cos = torch.full((4, 5), 0.95)
    labels = torch.tensor([0, 1, 2, 3])
    cos[torch.arange(4), labels] = 0.999  # s = ln(4.9e8) / 0.001 ≈ 20,000: exp(s cos) overflows in CFCD's code
    s, m = LF.madacos_scale_margin(cos, labels, 0.02)
    assert torch.isfinite(s) and torch.isfinite(m) and float(s) > 1e4


def test_madacos_uses_gathered_statistics() -> None:
    """A fake two-rank gather on half a batch gives the full batch's s and m (the all-gather of CFCD)."""
    cos, labels = _madacos_batch(5, batch=8, boost=1.0)
    s_full, m_full = LF.madacos_scale_margin(cos, labels, 0.02)
    other_cos, other_labels = cos[4:], labels[4:]
    other_stats = [
        LF.target_cosine(other_cos, other_labels),
        torch.logsumexp((s_full * other_cos).masked_fill(F.one_hot(other_labels, 6).bool(), -math.inf), 1),
    ]

    def gather(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, other_stats.pop(0)])

    s_half, m_half = LF.madacos_scale_margin(cos[:4], labels[:4], 0.02, gather=gather)
    torch.testing.assert_close((s_half, m_half), (s_full, m_full))


# ------------------------------------------------------------------------------------------- distances and miners


def test_pairwise_distances_match_cdist_and_have_finite_gradients_at_zero() -> None:
    x = _rand(6, 5, 4)
    torch.testing.assert_close(LF.pairwise_distances(x), torch.cdist(x, x), atol=1e-7, rtol=0)
    torch.testing.assert_close(LF.pairwise_distances(x, squared=True), torch.cdist(x, x) ** 2)
    same = torch.ones(3, 4, dtype=F64, requires_grad=True)  # identical rows: distance exactly 0
    d = LF.pairwise_distances(same)
    assert (d == 0).all()
    d.sum().backward()
    assert_finite_grads(same)


def _triplet_set(mask: torch.Tensor) -> set[tuple[int, int, int]]:
    return {tuple(map(int, t)) for t in mask.nonzero()}


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, margin=st.floats(0.05, 1.0))
def test_miners_match_loops(seed: int, margin: float) -> None:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (7,), generator=g)
    dist = LF.pairwise_distances(torch.randn(7, 3, generator=g, dtype=F64))
    for name in ("all", "hard", "semihard"):
        assert _triplet_set(LF.get_miner(name)(dist, labels, margin)) == loop_triplets(dist, labels, name, margin)
    with pytest.raises(ValueError, match="unknown miner"):
        LF.get_miner("hardest")


# ------------------------------------------------------------------------------------------- AP surrogates


def _scores(seed: int, queries: int = 4, items: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(scores in (-1, 1), pos, valid)`` with every query having a positive and a negative."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(queries, items, generator=g, dtype=F64) * 2 - 1
    valid = torch.rand(queries, items, generator=g) < 0.9
    valid[:, :2] = True
    pos = (torch.rand(queries, items, generator=g) < 0.4) & valid
    pos[:, 0], pos[:, 1] = True, False
    return scores, pos, valid


def test_tau_sigmoid_clamps_the_exponent() -> None:
    x = torch.tensor([-1.0, -0.01, 0.0, 0.02, 1.0], dtype=F64)
    torch.testing.assert_close(LF.tau_sigmoid(x, 0.01)[1:4], torch.sigmoid(x[1:4] / 0.01))
    assert float(LF.tau_sigmoid(x, 0.01)[0]) == pytest.approx(1 / (1 + math.exp(50)), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS)
def test_rank_ap_with_the_step_function_is_exact_ap(seed: int) -> None:
    scores, pos, valid = _scores(seed)
    diff = scores[:, None, :] - scores[:, :, None]
    torch.testing.assert_close(LF.rank_ap((diff > 0).to(F64), pos, valid), exact_ap(scores, pos, valid))


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS)
def test_smooth_ap_approaches_exact_ap_as_tau_sharpens(seed: int) -> None:
    scores, pos, valid = _scores(seed)
    gap = min_gap(scores, valid)
    assume(gap > 1e-6)
    exact = exact_ap(scores, pos, valid)
    errors = [float((LF.smooth_ap(scores, pos, valid, tau) - exact).abs().max()) for tau in (0.1, gap / 60)]
    assert errors[1] < 1e-12  # every sigmoid saturated: exactly the step function up to e^-50
    assert errors[1] <= errors[0]


def test_supap_negative_rank_pieces() -> None:
    d = torch.tensor([-0.02, 0.03, 0.1], dtype=F64)
    sig = torch.sigmoid(d / 0.01)
    torch.testing.assert_close(LF.supap_negative_rank(d), torch.stack([sig[0], 0.5 + sig[1], d.new_tensor(6.44)]))
    official = LF.supap_negative_rank(d, linear_from_delta=False)
    assert float(official[2]) == pytest.approx(100 * 0.1 + 1.44)
    assert (LF.supap_negative_rank(torch.linspace(1e-6, 1, 50, dtype=F64)) >= 1).all()  # upper-bounds the step


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS)
def test_supap_lower_bounds_ap_and_approaches_it_when_sharpened(seed: int) -> None:
    scores, pos, valid = _scores(seed)
    gap = min_gap(scores, valid)
    assume(gap > 1e-6)
    exact = exact_ap(scores, pos, valid)
    assert (LF.sup_ap(scores, pos, valid) <= exact + 1e-12).all()
    sharp = LF.sup_ap(scores, pos, valid, tau=gap / 60, delta=0.0, rho=0.0, offset=1.0)
    torch.testing.assert_close(sharp, exact, atol=1e-12, rtol=0)


def test_soft_histogram_is_revauds_two_line_quantiser() -> None:
    """APLoss's fixed 1x1 conv: 2·nq lines ``min(-a x + b1, a x + b2)`` with horizontal end bins."""
    for lo, hi, nq in ((0.0, 1.0, 25), (-1.0, 1.0, 7)):
        a = (nq - 1) / (hi - lo)
        w1, b1 = np.full(nq, -a), a * lo + np.arange(nq, 0, -1)
        w2, b2 = np.full(nq, a), np.arange(2 - nq, 2, 1) - a * lo
        w1[0], b1[0], w2[-1], b2[-1] = 0, 1, 0, 1
        x = np.linspace(lo - 0.3, hi + 0.3, 301)
        official = np.minimum(w1 * x[:, None] + b1, w2 * x[:, None] + b2).clip(min=0)
        ours = LF.soft_histogram(torch.tensor(x), lo, hi, nq).flip(-1)
        np.testing.assert_allclose(ours.numpy(), official, atol=1e-12)
        np.testing.assert_allclose(ours.sum(-1).numpy(), 1.0)


def _fastap_official(dist2: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, bins: int) -> torch.Tensor:
    """kunhe/FastAP-metric-learning's forward, transcribed: bin loop, NaN terms zeroed, divided by N⁺."""
    i_pos, i_neg = pos.to(F64), (valid & ~pos).to(F64)
    delta, centres = 4.0 / bins, torch.linspace(0.0, 4.0, bins + 1, dtype=F64)
    pulses = [torch.clamp_min(1 - (dist2 - z).abs() / delta, 0) for z in centres]
    h_pos = torch.stack([(p * i_pos).sum(1) for p in pulses], 1)
    h_neg = torch.stack([(p * i_neg).sum(1) for p in pulses], 1)
    terms = h_pos * h_pos.cumsum(1) / (h_pos + h_neg).cumsum(1)
    terms[terms.isnan() | terms.isinf()] = 0
    return terms.sum(1) / i_pos.sum(1)


def test_fast_ap_matches_the_official_formula() -> None:
    scores, pos, valid = _scores(11)
    dist2 = 2 - 2 * scores
    for bins in (10, 37):
        torch.testing.assert_close(LF.fast_ap(dist2, pos, valid, bins), _fastap_official(dist2, pos, valid, bins))


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, bins=st.integers(12, 60))
def test_histogram_aps_are_exact_on_bin_centres(seed: int, bins: int) -> None:
    """Scores on distinct bin centres: each item fills one bin alone, so FastAP and APLoss are the exact AP."""
    g = torch.Generator().manual_seed(seed)
    _, pos, valid = _scores(seed)
    k = torch.stack([torch.randperm(bins, generator=g)[: pos.shape[1]] for _ in range(pos.shape[0])]).to(F64)
    exact = exact_ap(-k, pos, valid)  # lower index = better in both parametrisations below
    torch.testing.assert_close(LF.fast_ap(4.0 * k / bins, pos, valid, bins), exact, atol=1e-12, rtol=0)
    scores = 1.0 - 2.0 * k / (bins - 1)  # centres of linspace(-1, 1, bins), best first
    torch.testing.assert_close(LF.quantized_ap(scores, pos, valid, bins, -1.0, 1.0), exact, atol=1e-12, rtol=0)


def _split_bin_bound(scores: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(1/|P|) Σ_{i ∈ P, rank r_i ≥ 2} 1/(4 r_i)``: the most a histogram AP can lose to an item split between two
    otherwise empty bins (the loss of positive i is ``w(1 − w)(N − P)/((N + w)(N + 1)) ≤ 1/(4 r_i)``)."""
    out = []
    for s, p, v in zip(scores, pos, valid, strict=True):
        ranks = [1 + int(((s > s[i]) & v).sum()) for i in range(len(s)) if p[i]]
        out.append(sum(1 / (4 * r) for r in ranks if r >= 2) / len(ranks))
    return torch.tensor(out, dtype=F64)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS)
def test_histogram_aps_with_fine_bins_lie_within_the_split_bin_bound(seed: int) -> None:
    """Bins finer than half the smallest score gap do not make FastAP/APLoss exact (an item between two centres
    splits its mass), but they bound it: ``AP − Σ 1/(4 r)/|P| ≤ surrogate ≤ AP``."""
    scores, pos, valid = _scores(seed)
    gap = min_gap(scores, valid)
    assume(gap > 2e-3)
    exact, bound = exact_ap(scores, pos, valid), _split_bin_bound(scores, pos, valid)
    fast = LF.fast_ap(2 - 2 * scores, pos, valid, bins=math.ceil(4 / gap) + 1)  # width 4/bins < gap in d = 2 gap
    quant = LF.quantized_ap(scores, pos, valid, bins=math.ceil(4 / gap) + 2, lo=-1.0, hi=1.0)
    for approx in (fast, quant):
        assert (approx <= exact + 1e-12).all()
        assert (approx >= exact - bound - 1e-12).all()


def test_queries_without_positives_give_nan() -> None:
    scores, pos, valid = _scores(12)
    pos[1] = False
    for ap in (
        LF.smooth_ap(scores, pos, valid),
        LF.sup_ap(scores, pos, valid),
        LF.fast_ap(2 - 2 * scores, pos, valid),
        LF.quantized_ap(scores, pos, valid),
    ):
        assert ap[1].isnan() and not ap[[0, 2, 3]].isnan().any()


def test_calibration_loss_averages_nonzero_terms() -> None:
    sim = torch.tensor([[1.0, 0.95, 0.5, 0.7], [0.95, 1.0, 0.2, 0.65], [0.5, 0.2, 1.0, 0.3], [0.7, 0.65, 0.3, 1.0]])
    pos, neg = LF.label_masks(torch.tensor([0, 0, 1, 1]))
    # positives: (0,1),(1,0) at 0.95 -> 0; (2,3),(3,2) at 0.3 -> 0.6 each. negatives above 0.6: (0,3),(3,0) at 0.7
    # -> 0.1 each, (1,3),(3,1) at 0.65 -> 0.05 each; the others are 0 and not averaged.
    expected = 0.6 + (0.1 + 0.1 + 0.05 + 0.05) / 4
    assert float(LF.calibration_loss(sim, pos, neg)) == pytest.approx(expected)
