"""ULTRON: alpha-pooling formula, channel-wise dilated conv, masked window attention, whole-model outputs."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from irlib.models import create_backbone, create_model
from irlib.models.ultron import (
    ULTRON,
    AlphaAttentionPool,
    ChannelDilatedConv,
    LocalTransformerBlock,
    alpha_mean,
    eca_kernel_size,
)
from tests.models.conftest import unzero_norms

BACKBONE = "resnet18"
SMALL = {"dim": 48, "embed_dim": 32, "depth": 2, "heads": 4, "cd_depth": 1}


def _images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model() -> ULTRON:
    torch.manual_seed(0)
    model = create_model("ultron", backbone=BACKBONE, **SMALL)
    unzero_norms(model)
    return model


def test_alpha_mean_family() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 5, 3, generator=g) + 0.1
    w = torch.rand(2, 5, generator=g).softmax(dim=1)
    wv = w[..., None]
    torch.testing.assert_close(alpha_mean(v, w, -1.0), (wv * v).sum(1))  # arithmetic
    torch.testing.assert_close(alpha_mean(v, w, 1.0), (wv * v.log()).sum(1).exp())  # geometric
    torch.testing.assert_close(alpha_mean(v, w, -3.0), (wv * v**2).sum(1).sqrt())
    torch.testing.assert_close(alpha_mean(v, w, 3.0), 1 / (wv / v).sum(1))  # harmonic
    uniform = torch.full((2, 5), 0.2)
    torch.testing.assert_close(alpha_mean(v, uniform, -5.0), v.pow(3).mean(1).pow(1 / 3))  # GeM p = 3


def test_alpha_attention_pool_formula() -> None:
    torch.manual_seed(0)
    pool = AlphaAttentionPool(8, alpha=-3.0, gamma=2.0)
    x = torch.randn(2, 8, 3, 4)
    pooled, weights = pool(x)
    assert pooled.shape == (2, 8) and weights.shape == (2, 3, 4)
    tokens = x.flatten(2).transpose(1, 2)
    query = pool.to_q(x.clamp(min=1e-6).pow(2).mean((2, 3)).sqrt())
    a = (pool.to_k(tokens) @ query[..., None]).squeeze(-1).div(math.sqrt(8)).softmax(1)
    values = tokens - tokens.amin(dim=(1, 2), keepdim=True) + 1e-6
    torch.testing.assert_close(weights.flatten(1), a)
    torch.testing.assert_close(pooled, (a[..., None] * values**2).sum(1).sqrt())
    torch.testing.assert_close(weights.sum((1, 2)), torch.ones(2))


def test_eca_kernel_size() -> None:
    assert [eca_kernel_size(c) for c in (64, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 7]


def test_channel_dilated_conv_picks_dilation_per_channel() -> None:
    torch.manual_seed(0)
    conv = ChannelDilatedConv(16)
    assert conv.dilation_choice(torch.tensor([[0.9, 0.75, 0.6, 0.5, 0.2]])).tolist() == [[0, 1, 1, 2, 2]]
    conv.eca.weight.data.normal_(0, 3)  # spread the attention over all three dilation bands
    x = torch.randn(4, 16, 9, 9)
    out, dilation = conv(x)
    a = conv.channel_attention(x)
    assert out.shape == x.shape and dilation.shape == (4, 16)
    assert set(dilation.unique().tolist()) == {1, 3, 6}
    for b in range(4):
        for c in range(16):
            d = int(dilation[b, c])
            ref = F.conv2d(x[b : b + 1, c : c + 1], conv.weight[c : c + 1], padding=d, dilation=d)
            torch.testing.assert_close(out[b, c], ref[0, 0] * a[b, c] + conv.bias[c])
    assert dilation[a > 0.75].eq(1).all() and dilation[a <= 0.5].eq(6).all()


def _naive_window_attention(block: LocalTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """Per-query loop: keys are the map positions in the query's window (windows tile from the top-left)."""
    b, h, w, c = x.shape
    ws, heads = block.window_size, block.heads
    wh, ww = min(ws, h), min(ws, w)
    q, k, v = block.qkv(x).chunk(3, dim=-1)
    k = block.mck(k.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    out = torch.zeros_like(x)
    d = c // heads
    for i in range(h):
        for j in range(w):
            keys = [(y, z) for y in range(h) for z in range(w) if y // wh == i // wh and z // ww == j // ww]
            for head in range(heads):
                sl = slice(head * d, (head + 1) * d)
                logits = torch.stack(
                    [
                        (q[:, i, j, sl] * k[:, y, z, sl]).sum(-1) / math.sqrt(d)
                        + block.relative_bias[
                            (i % wh - y % wh + ws - 1) * (2 * ws - 1) + (j % ww - z % ww + ws - 1), head
                        ]
                        for y, z in keys
                    ],
                    dim=-1,
                ).softmax(-1)
                values = torch.stack([v[:, y, z, sl] for y, z in keys], dim=1)
                out[:, i, j, sl] = (logits[..., None] * values).sum(1)
    return block.proj(out)


@pytest.mark.parametrize(("window", "size"), [(2, (3, 3)), (3, (3, 5)), (7, (2, 3))])
def test_window_attention_matches_naive(window: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    block = LocalTransformerBlock(8, 2, window_size=window)
    block.relative_bias.data.normal_()
    x = torch.randn(2, *size, 8)
    with torch.no_grad():
        out, weights = block.attention(x)
        expected = _naive_window_attention(block, x)
    torch.testing.assert_close(out, expected)
    wh, ww = min(window, size[0]), min(window, size[1])
    n_windows = math.ceil(size[0] / wh) * math.ceil(size[1] / ww)
    assert weights.shape == (2, n_windows, 2, wh * ww, wh * ww)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    if (window, size) == ((2, (3, 3))):  # the last window holds only position (2, 2): its other keys are padding
        assert torch.equal(weights[:, -1, :, :, 1:], torch.zeros(2, 2, 4, 3))


def test_forward_shapes_inspect_and_pruned_backbone(model: ULTRON) -> None:
    model.eval()
    assert model.feat_dim == 48 and model.config["method"] == "ultron" and model.config["window_size"] == 7
    assert not any(k.startswith("backbone.layer4") for k in model.state_dict())
    with torch.no_grad():
        ins = model.inspect(_images(size=96))
        desc = model(_images(size=96))
        pooled, attention = model.pool(ins["features"])
    assert {k: tuple(v.shape) for k, v in ins.items()} == {
        "features": (2, 32, 3, 3),  # stride 32: resnet18 layer3 (stride 16) + 2x2 patch merging
        "descriptor": (2, 48),
        "attention": (2, 3, 3),
        "window_attention": (2, 1, 4, 9, 9),
        "dilation": (2, 256),
    }
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(ins["descriptor"], desc)
    torch.testing.assert_close(desc, F.normalize(model.head(pooled), dim=-1))
    torch.testing.assert_close(ins["attention"], attention)
    torch.testing.assert_close(attention.sum((1, 2)), torch.ones(2))
    assert set(ins["dilation"].unique().tolist()) <= {1, 3, 6}


def test_gradients_reach_every_parameter(model: ULTRON) -> None:
    model.train().zero_grad(set_to_none=True)
    model(_images()).pow(3).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


def test_weights_full_and_timm_backbone(tmp_path: Path, model: ULTRON) -> None:
    path = tmp_path / "ultron.pth"
    torch.save(model.state_dict(), path)
    loaded = create_model("ultron", backbone=BACKBONE, weights=path, **SMALL)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    timm_model, _ = create_backbone(BACKBONE)
    torch.save(timm_model.state_dict(), path)  # a full timm ResNet: layer4 is dropped after loading
    from_timm = create_model("ultron", backbone=BACKBONE, weights=path, **SMALL)
    assert torch.equal(from_timm.backbone.layer3[0].conv1.weight, timm_model.layer3[0].conv1.weight)
