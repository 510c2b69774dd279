"""CFCD: the global descriptor formula, stage-2 training outputs and loss term, gradients, and both stages run
through the Trainer (stage 2 on tuple batches)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from irlib.losses import CompositeLoss, LossTerm
from irlib.models import create_model, gem, save_checkpoint
from irlib.models.cfcd import CFCD, LOCAL_LOSS_WEIGHT, PAPER_LAMBDA
from irlib.train.config import TrainConfig
from irlib.train.engine import Trainer, params_without_gradient
from tests.models.conftest import unzero_norms

BACKBONE = "resnet18"
TUPLE_LABELS = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 3, 3, 0, 1, 2, 4, 5, 6])  # two 8-tuples


def _images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tuple_images(size: int = 96) -> torch.Tensor:
    """Two 8-tuples whose positive is its anchor slightly perturbed (so that local descriptors match)."""
    x = _images(16, size)
    for t in (0, 8):
        x[t + 1] = x[t] + 0.05 * _images(1, size, seed=t + 1)[0]
    return x


def test_stage1_descriptor_is_l2_of_bn_of_fc_of_gem3() -> None:
    torch.manual_seed(0)
    model = create_model("cfcd", backbone=BACKBONE, dim=32)
    assert isinstance(model, CFCD) and model.feat_dim == 32
    assert model.config == {
        "method": "cfcd",
        "backbone": BACKBONE,
        "pretrained": False,
        "weights": None,
        "dim": 32,
        "local_loss": False,
    }
    assert "pool.p" not in dict(model.named_parameters()) and float(model.pool.p) == 3.0 and model.pool.eps == 1e-6
    assert model.fc.bias is not None and model.bn.affine and model.bn.eps == 1e-5 and model.bn.momentum == 0.1
    # non-trivial BN statistics and affine parameters, so the eval-mode formula is really checked
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2)
    torch.nn.init.normal_(model.bn.weight)
    torch.nn.init.normal_(model.bn.bias)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(_images())
        desc = model(_images())
        bn = (model.fc(gem(features, 3.0)) - model.bn.running_mean) / (model.bn.running_var + 1e-5).sqrt()
        expected = F.normalize(bn * model.bn.weight + model.bn.bias, dim=-1)
        ins = model.inspect(_images())
    assert features.shape == (2, 512, 2, 2) and desc.shape == (2, 32)
    torch.testing.assert_close(desc, expected)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))
    assert set(ins) == {"features", "descriptor", "attention"}
    torch.testing.assert_close(ins["attention"], features.abs().sum(1))
    # stage 1 trains the descriptor only
    assert model.output_dims() == {"descriptor": 32} and model.loss_terms() == []
    assert set(model.train().forward_train(_images())) == {"descriptor"}


def test_stage2_returns_the_local_map_and_its_detached_l1_attention() -> None:
    torch.manual_seed(0)
    model = create_model("cfcd", backbone=BACKBONE, dim=32, local_loss=True).train()
    x = _images(4)
    out = model.forward_train(x)
    assert set(out) == {"descriptor", "local_features", "attention"}
    assert out["descriptor"].shape == (4, 32) and out["local_features"].shape == (4, 512, 2, 2)
    assert out["attention"].shape == (4, 2, 2) and not out["attention"].requires_grad
    assert out["local_features"].requires_grad
    torch.testing.assert_close(out["attention"], out["local_features"].detach().abs().sum(1))
    assert model.output_dims() == {"descriptor": 32, "local_features": 512, "attention": 1}
    # the official effective weight 1 (LAMDA is never applied); the paper's lambda is a named alternative
    assert model.loss_terms() == [LossTerm("cfcd_local_triplet", weight=1.0)]
    assert LOCAL_LOSS_WEIGHT == 1.0 and PAPER_LAMBDA == 0.05


def test_both_stages_share_their_parameters_and_stage2_starts_from_stage1(tmp_path) -> None:
    torch.manual_seed(0)
    stage1 = create_model("cfcd", backbone=BACKBONE, dim=32).eval()
    save_checkpoint(stage1, tmp_path / "model.pth")
    stage2 = create_model("cfcd", backbone=BACKBONE, dim=32, local_loss=True, weights=tmp_path / "model.pth").eval()
    assert stage1.state_dict().keys() == stage2.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(stage2(_images()), stage1(_images()))


def test_stage2_objective_trains_backbone_fc_and_bn() -> None:
    torch.manual_seed(0)
    model = create_model("cfcd", backbone=BACKBONE, dim=32, local_loss=True).train()
    unzero_norms(model)
    # random weights put every negative far from the anchor (squared distance ~0.8): a wide margin keeps hinges on
    triplet = LossTerm("cfcd_local_triplet", kwargs={"margin": 2.0})
    objective = CompositeLoss([LossTerm("madacos"), triplet], output_dims=model.output_dims(), num_classes=7)
    images = _tuple_images()
    # the triplet term alone reaches the backbone, not the FC/BN after the pooling
    _, terms = objective(model.forward_train(images), TUPLE_LABELS)
    assert terms["cfcd_local_triplet"] > 0
    terms["cfcd_local_triplet"].backward()
    backbone = dict(model.backbone.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.values())
    assert model.fc.weight.grad is None and model.bn.weight.grad is None
    # the whole objective reaches every parameter of the model and the head
    model.zero_grad(set_to_none=True)
    total, _ = objective(model.forward_train(images), TUPLE_LABELS)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    assert objective.terms["madacos"].weight.grad is not None


class Prototypes(torch.utils.data.Dataset):
    """64 noisy 64x64 images of 8 classes (8 each), each image a class prototype plus its own pattern and fresh
    noise, so that images of one class share local structure."""

    num_classes = 8

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.prototypes = torch.randn(8, 3, 64, 64, generator=g)
        self.own = 0.3 * torch.randn(64, 3, 64, 64, generator=g)
        self.labels = (torch.arange(64) % 8).numpy()

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        y = int(self.labels[i])
        return self.prototypes[y] + self.own[i] + 0.05 * torch.randn(3, 64, 64), y


def _config(tmp_path, **fields) -> TrainConfig:
    settings = dict(
        method="cfcd",
        backbone=BACKBONE,
        pretrained=False,
        losses=[{"name": "madacos"}],
        sampler="tuple",
        global_batch=16,
        max_steps=2,
        warmup_epochs=0,
        lr=0.005,
        no_decay_1d=False,
        log_every=1,
        out_dir=str(tmp_path),
        channels_last=False,
    )
    return TrainConfig(**(settings | fields))


def test_stage2_trains_through_the_trainer_on_tuples_and_every_parameter_gets_a_gradient(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("cfcd", backbone=BACKBONE, dim=32, local_loss=True)
    unzero_norms(model)
    data = Prototypes()
    # the model's term, named to widen its margin: random weights put negatives far from the anchors
    losses = [{"name": "madacos"}, {"name": "cfcd_local_triplet", "kwargs": {"margin": 2.0}}]
    t = Trainer(_config(tmp_path, losses=losses, model_kwargs={"dim": 32, "local_loss": True}), data, model=model)
    seen: list[torch.Tensor] = []
    forward = t.loss.forward
    t.loss.forward = lambda outputs, labels: (seen.append(labels.clone()), forward(outputs, labels))[1]
    t.fit()
    assert t.step == 2 and list(t.loss.terms) == ["madacos", "cfcd_local_triplet"]
    assert not params_without_gradient({"model": t.model, "loss": t.loss})
    for labels in seen:  # batches of [anchor, positive, 6 negatives] tuples
        tuples = labels.reshape(-1, 8)
        assert (tuples[:, 0] == tuples[:, 1]).all() and (tuples[:, 2:] != tuples[:, :1]).all()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r["losses"]) == {"madacos", "cfcd_local_triplet"} for r in records)
    assert any(r["losses"]["cfcd_local_triplet"] > 0 for r in records)
    for r in records:  # weight 1: the official objective CE + triplet
        assert r["loss"] == pytest.approx(r["losses"]["madacos"] + r["losses"]["cfcd_local_triplet"], rel=1e-6)


def test_stage1_then_stage2_from_its_model_and_head_with_the_papers_lambda_as_a_term_weight(tmp_path) -> None:
    torch.manual_seed(0)
    t = Trainer(_config(tmp_path / "s1", sampler="shuffled", model_kwargs={"dim": 32}), Prototypes())
    t.fit()
    assert list(t.loss.terms) == ["madacos"] and not params_without_gradient({"model": t.model, "loss": t.loss})
    # stage 2 starts from the stage-1 model and, as CFCD's checkpoint loading does, from its MadaCos head
    losses = [{"name": "madacos"}, {"name": "cfcd_local_triplet", "weight": PAPER_LAMBDA}]
    cfg = _config(
        tmp_path / "s2", losses=losses, model_kwargs={"dim": 32, "local_loss": True}, init_from=str(tmp_path / "s1")
    )
    s2 = Trainer(cfg, Prototypes())
    assert s2.loss.weights == {"madacos": 1.0, "cfcd_local_triplet": 0.05}
    started = {}
    step = s2._optimiser_step

    def first_step(group):
        started.setdefault("model", {k: v.clone() for k, v in s2.model.state_dict().items()})
        started.setdefault("head", s2.loss.terms["madacos"].weight.detach().clone())
        return step(group)

    s2._optimiser_step = first_step
    s2.fit()
    assert s2.step == 2
    for k, v in t.model.state_dict().items():
        assert torch.equal(started["model"][k], v), k
    torch.testing.assert_close(started["head"], t.loss.terms["madacos"].weight)


def test_the_trainer_refuses_tuple_losses_without_tuple_batches(tmp_path) -> None:
    kwargs = {"dim": 32, "local_loss": True}
    with pytest.raises(ValueError, match=r"\['cfcd_local_triplet'\] read batches of .* sampler: tuple"):
        Trainer(_config(tmp_path, sampler="shuffled", model_kwargs=kwargs), Prototypes())
    with pytest.raises(ValueError, match=r"micro-batch \(12\) must be a multiple of the tuple size \(8\)"):
        Trainer(_config(tmp_path, global_batch=12, model_kwargs=kwargs), Prototypes())
    losses = [{"name": "madacos"}, {"name": "cfcd_local_triplet", "kwargs": {"tuple_size": 4}}]
    t = Trainer(_config(tmp_path, global_batch=12, losses=losses, model_kwargs=kwargs), Prototypes())
    assert t.sampler.tuple_size == 4
