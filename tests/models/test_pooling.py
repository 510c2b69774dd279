"""GeM pooling: limits (avg / max), gradient of a learnable p, and algebraic properties."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from irlib.models import GeM, gem


def _positive_maps(seed: int, shape: tuple[int, ...] = (2, 3, 5, 4)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.01


def test_gem_p1_is_average_pooling() -> None:
    x = _positive_maps(0)
    torch.testing.assert_close(gem(x, p=1.0), F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_gem_large_p_approaches_max_pooling() -> None:
    x = _positive_maps(1)
    max_pool = x.amax(dim=(-2, -1))
    assert (gem(x, p=10.0) - max_pool).abs().max() > (gem(x, p=200.0) - max_pool).abs().max()
    torch.testing.assert_close(gem(x, p=200.0), max_pool, rtol=0.05, atol=0.0)


def test_gem_rejects_non_4d_input() -> None:
    with pytest.raises(ValueError, match="B,C,H,W"):
        gem(torch.rand(2, 3, 4))


def test_gem_module_fixed_p_is_buffer() -> None:
    pool = GeM(p=3.0)
    assert list(pool.parameters()) == []
    assert "p" in dict(pool.named_buffers())
    assert repr(pool) == "GeM(p=3, eps=1e-06, learn_p=False)"
    torch.testing.assert_close(pool(_positive_maps(2)), gem(_positive_maps(2), 3.0))


def test_gem_module_learnable_p_gets_gradient() -> None:
    pool = GeM(p=3.0, learn_p=True)
    assert [name for name, _ in pool.named_parameters()] == ["p"]
    out = pool(_positive_maps(3).float())
    assert out.shape == (2, 3)
    out.sum().backward()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad) and pool.p.grad != 0


def test_gem_module_rejects_non_positive_p() -> None:
    with pytest.raises(ValueError, match="positive"):
        GeM(p=0.0)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), p=st.floats(1.0, 8.0), scale=st.floats(0.1, 10.0))
def test_gem_between_avg_and_max_and_scale_equivariant(seed: int, p: float, scale: float) -> None:
    x = _positive_maps(seed)
    out = gem(x, p=p)
    assert torch.all(out >= x.mean(dim=(-2, -1)) * (1 - 1e-9))
    assert torch.all(out <= x.amax(dim=(-2, -1)) * (1 + 1e-9))
    torch.testing.assert_close(gem(scale * x, p=p), scale * out)
