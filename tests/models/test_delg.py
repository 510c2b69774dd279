"""DELG: global descriptor formula, local branch outputs, and the stop-gradient into the backbone."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from irlib.losses import CompositeLoss
from irlib.models import create_model, gem
from irlib.models.delg import DELG
from tests.models.conftest import unzero_norms

BACKBONE = "resnet18"


def _images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def local_model() -> DELG:
    torch.manual_seed(0)
    model = create_model("delg", backbone=BACKBONE, local_branch=True, dim=256)
    unzero_norms(model)
    return model


def test_global_descriptor_is_fc_whitened_gem3() -> None:
    model = create_model("delg", backbone=BACKBONE).eval()
    assert isinstance(model, DELG) and model.feat_dim == 2048 and not hasattr(model, "attention")
    assert model.config == {
        "method": "delg",
        "backbone": BACKBONE,
        "pretrained": False,
        "weights": None,
        "dim": 2048,
        "local_branch": False,
        "local_dim": 128,
        "attention_hidden": 512,
    }
    assert "pool.p" not in dict(model.named_parameters()) and float(model.pool.p) == 3.0
    with torch.no_grad():
        ins = model.inspect(_images())
        desc = model(_images())
        expected = F.normalize(model.whiten(gem(ins["features"], 3.0)), dim=-1)
    assert set(ins) == {"features", "descriptor"}
    assert ins["features"].shape == (2, 512, 2, 2) and desc.shape == (2, 2048)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(desc, expected)
    torch.testing.assert_close(ins["descriptor"], desc)


def test_local_branch_outputs_and_formulas(local_model: DELG) -> None:
    model = local_model.eval()
    with torch.no_grad():
        out = model.forward_train(_images())
        ins = model.inspect(_images())
        desc = model(_images())
    assert out["descriptor"].shape == (2, 256)
    torch.testing.assert_close(out["descriptor"], desc)
    assert out["reconstruction_target"].shape == (2, 256, 4, 4)  # resnet18 layer3, stride 16
    assert out["attention"].shape == (2, 4, 4) and bool((out["attention"] > 0).all())
    assert out["local_features"].shape == (2, 128, 4, 4)
    assert out["reconstruction"].shape == (2, 256, 4, 4) and bool((out["reconstruction"] >= 0).all())
    att = model.attention
    score = att.conv2(F.relu(att.bn(att.conv1(out["reconstruction_target"])))).squeeze(1)
    torch.testing.assert_close(out["attention"], F.softplus(score))
    torch.testing.assert_close(out["local_features"], model.autoencoder.reduce(out["reconstruction_target"]))
    pooled = (F.normalize(out["reconstruction"], dim=1) * out["attention"][:, None]).mean(dim=(2, 3))
    torch.testing.assert_close(out["attention_pooled"], pooled)
    assert {k: tuple(v.shape) for k, v in ins.items()} == {
        "features": (2, 512, 2, 2),
        "descriptor": (2, 256),
        "attention": (2, 4, 4),
        "local_features": (2, 128, 4, 4),
    }
    torch.testing.assert_close(ins["attention"], out["attention"])


def test_the_local_branch_declares_delgs_loss_terms_with_the_papers_weights(local_model: DELG) -> None:
    terms = {t.name: t.weight for t in local_model.loss_terms()}
    assert terms == {"delg_attention": 1.0, "delg_reconstruction": 10.0}  # TF train.py flag defaults
    assert local_model.output_dims() == {
        "descriptor": 256,
        "attention_pooled": 256,
        "reconstruction": 256,
        "reconstruction_target": 256,
    }
    assert create_model("delg", backbone=BACKBONE, dim=32).loss_terms() == []


def test_stop_gradient_local_losses_do_not_reach_backbone(local_model: DELG) -> None:
    model = local_model.train()
    backbone = dict(model.backbone.named_parameters())
    local = {
        n: p for n, p in model.named_parameters() if n.startswith(("attention.", "autoencoder.")) and p.requires_grad
    }
    assert not model.attention.conv1.bias.requires_grad  # frozen on purpose: the BN after conv1 cancels it
    reached: set[str] = set()

    local_losses = CompositeLoss(model.loss_terms(), output_dims=model.output_dims(), num_classes=3)
    model.zero_grad(set_to_none=True)
    local_losses(model.forward_train(_images()), torch.tensor([0, 2]))[0].backward()
    assert all(p.grad is None for p in backbone.values()), "local-branch loss reached the backbone"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in local.values())
    assert model.whiten.weight.grad is None
    reached |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}

    model.zero_grad(set_to_none=True)
    out = model.forward_train(_images())
    out["descriptor"].pow(3).sum().backward()
    no_grad = [n for n, p in backbone.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"global loss did not reach {no_grad}"
    assert all(p.grad is None for p in local.values())
    reached |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}

    # the two losses together train every parameter
    assert reached == {n for n, p in model.named_parameters() if p.requires_grad}


def test_local_outputs_require_local_branch() -> None:
    model = create_model("delg", backbone=BACKBONE, dim=32)
    with pytest.raises(RuntimeError, match="local_branch"):
        model.local_outputs(torch.randn(1, 256, 4, 4))
    assert set(model.forward_train(_images())) == {"descriptor"}


def test_weights_round_trip(tmp_path: Path, local_model: DELG) -> None:
    path = tmp_path / "delg.pth"
    torch.save(local_model.state_dict(), path)
    loaded = create_model("delg", backbone=BACKBONE, local_branch=True, dim=256, weights=path)
    assert all(torch.equal(v, local_model.state_dict()[k]) for k, v in loaded.state_dict().items())
    bad = {k: v for k, v in local_model.state_dict().items() if not k.startswith("autoencoder.")}
    torch.save(bad, path)
    with pytest.raises(ValueError, match="missing keys: autoencoder"):
        create_model("delg", backbone=BACKBONE, local_branch=True, dim=256, weights=path)
