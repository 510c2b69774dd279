"""SENet (Structural Embedding Network): self-correlation formula, SSM layout, descriptor, gradients."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from irlib.models import create_model, gem
from irlib.models.senet import SelfSimilarityModule, SENet, self_correlation
from tests.models.conftest import unzero_norms

BACKBONE = "resnet18"


def _images(batch: int = 2, size: int = 96) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model() -> SENet:
    torch.manual_seed(0)
    model = create_model("senet", backbone=BACKBONE, dim=128, mid_dim=32)
    unzero_norms(model)
    return model


@pytest.mark.parametrize("k", [3, 7])
def test_self_correlation_matches_a_loop(k: int) -> None:
    q = F.normalize(torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    sim = self_correlation(q, k)
    assert sim.shape == (2, k * k, 5, 6)
    expected = torch.zeros_like(sim)
    r = k // 2
    for i in range(5):
        for j in range(6):
            for u in range(k):
                for v in range(k):
                    y, x = i + u - r, j + v - r
                    if 0 <= y < 5 and 0 <= x < 6:
                        expected[:, u * k + v, i, j] = (q[:, :, i, j] * q[:, :, y, x]).sum(1).clamp(min=0)
    torch.testing.assert_close(sim, expected)
    torch.testing.assert_close(sim[:, k * k // 2], torch.ones(2, 5, 6))  # each position with itself


def test_ssm_layout_and_output_formula() -> None:
    torch.manual_seed(0)
    ssm = SelfSimilarityModule(64, mid_dim=16).eval()
    convs = [m for m in ssm.encoder if isinstance(m, torch.nn.Conv3d)]
    assert [tuple(c.weight.shape) for c in convs] == [(16, 1, 1, 3, 3), (16, 16, 1, 3, 3), (16, 16, 1, 3, 3)]
    assert tuple(ssm.query.weight.shape) == (16, 64, 1, 1) and tuple(ssm.embed[0].weight.shape) == (64, 16, 1, 1)
    x = torch.randn(2, 64, 4, 5)
    with torch.no_grad():
        sim, structure = ssm.similarity_and_structure(x)
        out = ssm(x)
    assert sim.shape == (2, 49, 4, 5) and structure.shape == (2, 64, 4, 5)
    torch.testing.assert_close(sim, self_correlation(F.normalize(ssm.query(x), dim=1), 7))
    torch.testing.assert_close(out, ssm.ffn(x + structure))
    with pytest.raises(ValueError, match="odd"):
        SelfSimilarityModule(8, unfold_size=6)


def test_forward_shapes_descriptor_formula_and_inspect(model: SENet) -> None:
    model.eval()
    assert model.feat_dim == 128 and model.config["method"] == "senet" and model.config["mid_dim"] == 32
    assert isinstance(model.pool.p, torch.nn.Parameter) and model.pool.p.item() == 3.0
    with torch.no_grad():
        ins = model.inspect(_images())
        desc = model(_images())
    assert {k: tuple(v.shape) for k, v in ins.items()} == {
        "features": (2, 512, 3, 3),
        "descriptor": (2, 128),
        "self_similarity": (2, 49, 3, 3),
        "structure": (2, 512, 3, 3),
        "structure_norm": (2, 3, 3),
    }
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(ins["descriptor"], desc)
    with torch.no_grad():
        torch.testing.assert_close(desc, F.normalize(model.whiten(gem(ins["features"], model.pool.p)), dim=-1))
    torch.testing.assert_close(ins["structure_norm"], ins["structure"].norm(dim=1))


def test_gradients_reach_every_parameter(model: SENet) -> None:
    model.train().zero_grad(set_to_none=True)
    model(_images()).pow(3).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


def test_weights_round_trip(tmp_path: Path, model: SENet) -> None:
    path = tmp_path / "senet.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = create_model("senet", backbone=BACKBONE, dim=128, mid_dim=32, weights=path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    torch.save(model.backbone.state_dict(), path)
    backbone_only = create_model("senet", backbone=BACKBONE, dim=128, mid_dim=32, weights=path)
    assert torch.equal(backbone_only.backbone.conv1.weight, model.backbone.conv1.weight)
