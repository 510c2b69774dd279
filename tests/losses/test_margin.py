"""Margin heads: each equals a direct computation on a hand-made 3-class case, ArcFace's variants differ exactly
beyond θ_y = π − m, CurricularFace's t and hard-negative re-weighting, MadaCos's ρ property, sub-centres, and finite
gradients at cos = ±1."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from irlib.losses import ArcFace, CosFace, CurricularFace, MadaCos, MarginHead
from irlib.losses import functional as LF
from tests.losses.conftest import assert_finite_grads

F64 = torch.float64
S, M = 2.0, 0.5
# W = I (3 classes in 3-d), so each cosine is an embedding coordinate. Sample 0: θ_y = acos(0.6) < π/2; sample 1:
# θ_y = acos(-0.5) in (π/2, π − m]; sample 2: θ_y = acos(-0.95) > π − m.
HAND_X = torch.tensor([[0.6, 0.8, 0.0], [0.3, -0.5, math.sqrt(0.66)], [-0.95, 0.0, math.sqrt(0.0975)]], dtype=F64)
HAND_Y = torch.tensor([0, 1, 0])


def _hand_head(cls: type[MarginHead], **kwargs: object) -> MarginHead:
    head = cls(num_classes=3, embedding_dim=3, **kwargs).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    return head


def _cross_entropy_by_hand(logits: list[list[float]], labels: list[int]) -> float:
    return sum(-row[y] + math.log(sum(math.exp(z) for z in row)) for row, y in zip(logits, labels, strict=True)) / len(
        labels
    )


def _check_hand_case(head: MarginHead, targets: list[float]) -> None:
    """Logits are ``S · cos`` with the target entries replaced by ``S · targets``; the loss is their CE."""
    cos = HAND_X.tolist()
    expected = [[S * c for c in row] for row in cos]
    for i, (y, t) in enumerate(zip(HAND_Y.tolist(), targets, strict=True)):
        expected[i][y] = S * t
    torch.testing.assert_close(head.logits(HAND_X, HAND_Y), torch.tensor(expected, dtype=F64))
    assert head(HAND_X, HAND_Y).item() == pytest.approx(_cross_entropy_by_hand(expected, HAND_Y.tolist()))


def test_arcface_by_hand_for_each_fallback() -> None:
    arc = [math.cos(math.acos(c) + M) for c in (0.6, -0.5, -0.95)]
    expected = {
        "none": [arc[0], arc[1], -0.95],
        "cos_minus_msinm": [arc[0], arc[1], -0.95 - M * math.sin(M)],
        "easy_margin": [arc[0], -0.5, -0.95],
    }
    for fallback, targets in expected.items():
        _check_hand_case(_hand_head(ArcFace, s=S, m=M, fallback=fallback), targets)


def test_cosface_by_hand() -> None:
    _check_hand_case(_hand_head(CosFace, s=S, m=M), [0.6 - M, -0.5 - M, -0.95 - M])


def test_arcface_defaults_are_spca_and_match_tokens_code() -> None:
    """SpCa/Token ``ArcFace.forward`` transcribed: θ of every (clamped) cosine, margin where θ_y ≤ π − m."""
    head = ArcFace(num_classes=5, embedding_dim=4).double()
    assert (head.s, head.m, head.fallback) == (32.0, 0.15, "none")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=F64)
    y = torch.randint(0, 5, (6,), generator=g)
    x[0] = -head.weight[y[0]].detach()  # θ_y = π > π − m: no margin
    cos = F.linear(F.normalize(x), F.normalize(head.weight))
    theta = torch.acos(torch.clamp(cos, -1.0 + 1e-6, 1.0 - 1e-6))
    selected = torch.where(theta > math.pi - 0.15, torch.zeros_like(cos), F.one_hot(y, 5).to(F64)).bool()
    token = torch.cos(torch.where(selected, theta + 0.15, theta)) * 32
    torch.testing.assert_close(head.logits(x, y), token)
    assert not selected[0].any()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.floats(0.05, 1.0))
def test_arcface_variants_differ_only_at_targets_beyond_pi_minus_m(seed: int, m: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    y = torch.randint(0, 4, (8,), generator=g)
    heads = {f: ArcFace(4, 3, s=10.0, m=m, fallback=f).double() for f in ("none", "cos_minus_msinm", "easy_margin")}
    for h in heads.values():
        h.load_state_dict(heads["none"].state_dict())
    logits = {f: h.logits(x, y) for f, h in heads.items()}
    cos_y = LF.target_cosine(heads["none"].cosine(x), y).clamp(-1 + LF.COS_EPS, 1 - LF.COS_EPS)
    beyond = torch.acos(cos_y) > math.pi - m
    target = F.one_hot(y, 4).bool()
    differs = (logits["none"] - logits["cos_minus_msinm"]).abs() > 1e-12
    assert torch.equal(differs, target & beyond[:, None])
    easy_differs = (logits["none"] - logits["easy_margin"]).abs() > 1e-12
    assert torch.equal(easy_differs, target & (~beyond & (cos_y <= 0))[:, None])


# ------------------------------------------------------------------------------------------- CurricularFace


def test_curricularface_t_update_and_reweighting_by_hand() -> None:
    head = _hand_head(CurricularFace, s=S, m=M)
    assert float(head.t) == 0.0 and "t" in head.state_dict() and not head.t.requires_grad
    t1 = 0.01 * (0.6 - 0.5 - 0.95) / 3  # t ← 0.01 · mean target cosine + 0.99 · 0, before it is used
    phi = [math.cos(math.acos(c) + M) for c in (0.6, -0.5, -0.95)]
    expected = [[0.6, 0.8, 0.0], [0.3, -0.5, math.sqrt(0.66)], [-0.95, 0.0, math.sqrt(0.0975)]]
    for i, (y, target) in enumerate(zip(HAND_Y.tolist(), [phi[0], phi[1], -0.95 - M * math.sin(M)], strict=True)):
        expected[i] = [c * (t1 + c) if j != y and c > phi[i] else c for j, c in enumerate(expected[i])]
        expected[i][y] = target
    assert phi[0] < 0.8 and phi[1] < 0.3 and phi[2] < 0.0  # the hard negatives that get re-weighted
    logits = head.logits(HAND_X, HAND_Y)
    assert float(head.t) == pytest.approx(t1)
    torch.testing.assert_close(logits, S * torch.tensor(expected, dtype=F64))

    loss = head(HAND_X[:2], HAND_Y[:2])  # second step: EMA of the new batch mean
    assert float(head.t) == pytest.approx(0.99 * t1 + 0.01 * (0.6 - 0.5) / 2)
    assert loss.item() == pytest.approx(
        float(F.cross_entropy(S * LF.curricular_logits(HAND_X[:2], HAND_Y[:2], M, float(head.t)), HAND_Y[:2]))
    )


def test_curricularface_eval_is_plain_scaled_cosine_and_keeps_t() -> None:
    head = _hand_head(CurricularFace, s=S, m=M)
    head(HAND_X, HAND_Y)
    t = float(head.t)
    head.eval()
    torch.testing.assert_close(head.logits(HAND_X, HAND_Y), S * HAND_X)
    assert float(head.t) == t


def test_curricularface_t_gets_no_gradient() -> None:
    head = CurricularFace(4, 3)
    head(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])).backward()
    assert [n for n, _ in head.named_parameters()] == ["weight"] and head.t.grad is None


# ------------------------------------------------------------------------------------------- MadaCos


def _near_class_batch(seed: int, head: MarginHead, batch: int = 16, noise: float = 0.15) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, head.num_classes, (batch,), generator=g)
    w = F.normalize(head.weight.detach(), dim=-1)[y * head.subcenters]
    return w + noise * torch.randn(batch, head.embedding_dim, generator=g, dtype=w.dtype), y


def _median_probability(head: MadaCos, x: torch.Tensor, y: torch.Tensor) -> float:
    probs = torch.softmax(head.logits(x, y), dim=1)
    i_med = int(LF.target_cosine(head.cosine(x), y).median(0).indices)
    return probs[i_med, y[i_med]].item()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_madacos_median_sample_probability_is_rho(dtype: torch.dtype) -> None:
    head = MadaCos(num_classes=50, embedding_dim=16, rho=0.02).to(dtype)
    torch.manual_seed(0)
    for seed in range(5):
        x, y = _near_class_batch(seed, head)
        p = _median_probability(head, x, y)
        assert float(head.last_margin) > 0 and float(head.last_scale) >= 32
        assert p == pytest.approx(0.02, abs=1e-5 if dtype == torch.float32 else 1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), noise=st.floats(0.0, 3.0))
def test_madacos_scale_and_margin_bounds(seed: int, noise: float) -> None:
    head = MadaCos(num_classes=10, embedding_dim=8).double()
    x, y = _near_class_batch(seed, head, batch=9, noise=noise)
    head(x, y)
    assert float(head.last_scale) >= 32 and float(head.last_margin) >= 0
    if float(head.last_margin) == 0:  # clamped: the median sample is already at or below ρ
        assert _median_probability(head, x, y) <= 0.02 + 1e-12


def test_madacos_has_no_gradient_through_scale_and_margin() -> None:
    head = MadaCos(num_classes=20, embedding_dim=8).double()
    x, y = _near_class_batch(1, head, batch=12)
    x.requires_grad_(True)
    head(x, y).backward()
    s, m = head.last_scale, head.last_margin
    assert not s.requires_grad and not m.requires_grad and float(m) > 0
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = head.weight.detach().clone().requires_grad_(True)
    cos = LF.cosine_logits(x_ref, w_ref)
    F.cross_entropy(s * (cos - m * F.one_hot(y, 20)), y).backward()  # s, m plain constants
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(head.weight.grad, w_ref.grad)


def test_madacos_eval_has_zero_margin_but_adaptive_scale() -> None:
    head = MadaCos(num_classes=20, embedding_dim=8).double()
    x, y = _near_class_batch(2, head)
    head.eval()
    logits = head.logits(x, y)
    assert float(head.last_margin) == 0 and float(head.last_scale) >= 32
    torch.testing.assert_close(logits, head.last_scale * head.cosine(x))


def _madacos_rank(rank: int, init_file: str, out_dir: str, state: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        head = MadaCos(num_classes=20, embedding_dim=8).double()
        head.load_state_dict(state)
        half = slice(rank * 6, rank * 6 + 6)
        head(x[half], y[half])
        torch.save((head.last_scale, head.last_margin), f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_madacos_all_gathers_across_ranks(tmp_path) -> None:
    """Two gloo processes with half the batch each get the scale and margin of the whole batch (CFCD all-gathers
    the target cosines and B)."""
    head = MadaCos(num_classes=20, embedding_dim=8).double()
    x, y = _near_class_batch(3, head, batch=12)
    head(x, y)
    torch.multiprocessing.spawn(
        _madacos_rank, args=(str(tmp_path / "init"), str(tmp_path), head.state_dict(), x, y), nprocs=2
    )
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt"), (head.last_scale, head.last_margin))
    assert float(head.last_margin) > 0


def test_madacos_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rho"):
        MadaCos(10, 4, rho=1.5)
    with pytest.raises(ValueError, match="b_reduce"):
        MadaCos(10, 4, b_reduce="max")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- shared behaviour

HEADS: list[tuple[type[MarginHead], dict]] = [
    (ArcFace, {"fallback": "none"}),
    (ArcFace, {"fallback": "cos_minus_msinm"}),
    (ArcFace, {"fallback": "easy_margin"}),
    (CosFace, {}),
    (CurricularFace, {}),
    (MadaCos, {}),
]
HEAD_IDS = ["arcface-none", "arcface-msinm", "arcface-easy", "cosface", "curricularface", "madacos"]


@pytest.mark.parametrize(("cls", "kwargs"), HEADS, ids=HEAD_IDS)
def test_subcentres_take_the_max(cls: type[MarginHead], kwargs: dict) -> None:
    """Real centres in the positive orthant, decoys in the negative one, embeddings positive: the max picks the
    real centre wherever it sits among the K, so the K = 3 head equals the K = 1 head on the real centres."""
    g = torch.Generator().manual_seed(0)
    classes, dim, k = 4, 5, 3
    real = torch.rand(classes, dim, generator=g, dtype=F64) + 0.1
    slot = torch.randint(0, k, (classes,), generator=g)
    single = cls(classes, dim, **kwargs).double()
    multi = cls(classes, dim, subcenters=k, **kwargs).double()
    with torch.no_grad():
        single.weight.copy_(real)
        multi.weight.copy_(-torch.rand(classes * k, dim, generator=g, dtype=F64) - 0.1)
        multi.weight[torch.arange(classes) * k + slot] = real
    x = torch.rand(6, dim, generator=g, dtype=F64)
    y = torch.randint(0, classes, (6,), generator=g)
    assert multi.weight.shape == (classes * k, dim) and multi.config["subcenters"] == k
    torch.testing.assert_close(multi.logits(x, y), single.logits(x, y))


@pytest.mark.parametrize(("cls", "kwargs"), HEADS, ids=HEAD_IDS)
def test_finite_gradients_at_cos_plus_minus_one(cls: type[MarginHead], kwargs: dict) -> None:
    head = cls(3, 4, **kwargs)
    w = head.weight.detach()
    for x, y in (
        (torch.stack([w[0], -w[1], w[2], 2 * w[1]]), torch.tensor([0, 1, 0, 2])),  # cos_y = 1, −1; non-target = 1
        (w.clone(), torch.tensor([0, 1, 2])),  # every target cosine is 1 (MadaCos: 1 − c_med at its floor)
    ):
        x.requires_grad_(True)
        head.zero_grad()
        loss = head(x, y)
        loss.backward()
        assert torch.isfinite(loss)
        assert_finite_grads(x, head.weight)


@pytest.mark.parametrize(("cls", "kwargs"), HEADS, ids=HEAD_IDS)
def test_heads_compute_in_float32_under_autocast(cls: type[MarginHead], kwargs: dict) -> None:
    head = cls(6, 8, **kwargs)
    x, y = torch.randn(5, 8).bfloat16(), torch.tensor([0, 1, 2, 3, 4])
    reference = copy.deepcopy(head).logits(x.float(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head.logits(x, y)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference)


def test_xavier_init_and_validation() -> None:
    head = CosFace(1000, 64)
    bound = math.sqrt(6 / (1000 + 64))
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="num_classes"):
        ArcFace(0, 8)
    with pytest.raises(ValueError, match="fallback"):
        ArcFace(4, 8, fallback="easy")  # type: ignore[arg-type]
