"""Training on UnED like its baselines: one classifier per domain, one domain per step, AdamW with a slower, at first
frozen, backbone; every parameter trains, a preempted run resumes bit for bit, and the recipes load."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irlib.data.transforms import train_transform
from irlib.data.uned import uned_split
from irlib.losses.domains import PerDomainHead
from irlib.models import create_model
from irlib.train.config import RECIPES, TrainConfig, recipe
from irlib.train.engine import Trainer
from irlib.train.run import train

BACKBONE = "test_vit"  # timm's tiny random-weight ViT with a class token stands in for ViT-B/16
MODEL_KWARGS = {"pooling": "cls", "whitening": 16}
CLASSES = {"cars": 3, "sop": 2}  # 2 images per class: 6 + 4 images


@pytest.fixture(scope="module")
def uned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UnED-format folder: ``info_files/<domain>/train.json`` and the images they list."""
    root = tmp_path_factory.mktemp("uned")
    for d, (domain, n_classes) in enumerate(CLASSES.items()):
        entries = [{"path": f"{domain}/{c}_{k}.jpg", "class_id": c} for c in range(n_classes) for k in range(2)]
        info = root / "info_files" / domain / "train.json"
        info.parent.mkdir(parents=True)
        info.write_text(json.dumps(entries))
        for i, e in enumerate(entries):
            path = root / "images" / e["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 36), (40 * e["class_id"], 100 * d, 20 * i)).save(path, format="JPEG")
    return root


def _config(uned: Path, out: Path, **overrides) -> TrainConfig:
    """The UnED recipe's training choices on the tiny set: batches of 2 (5 steps per epoch), 32 px."""
    return recipe(
        "uned_vit_in21k",
        backbone=BACKBONE,
        pretrained=False,
        model_kwargs=MODEL_KWARGS,
        data_dir=str(uned),
        domains=list(CLASSES),
        out_dir=str(out),
        image_size=32,
        global_batch=2,
        weight_decay=0.0,
        model_lr_scale=1.0,
        frozen_epochs=0,
        log_every=1,
        checkpoint_every=2,
    ).replace(**overrides)


def _trainer(cfg: TrainConfig) -> Trainer:
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.method, backbone=cfg.backbone, pretrained=False, **cfg.model_kwargs)
    transform = train_transform(cfg.transform, cfg.image_size, data_config=model.data_config)
    return Trainer(cfg, uned_split(cfg.data_dir, cfg.domains, transform=transform), model=model)


def _weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {
        **{f"model.{k}": v.detach().clone() for k, v in t.model.named_parameters() if v.requires_grad},
        **{f"loss.{k}": v.detach().clone() for k, v in t.loss.named_parameters()},
    }


def test_per_domain_heads_and_every_parameter_train_on_one_domain_per_step(uned: Path, tmp_path: Path) -> None:
    trainer = _trainer(_config(uned, tmp_path, max_steps=3))
    head = trainer.loss.terms["cosface"]
    assert isinstance(head, PerDomainHead) and [h.num_classes for h in head.heads] == [3, 2]
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    before = _weights(trainer)
    step_domains: list[set[int]] = []
    step = trainer._optimiser_step

    def record(group):
        step_domains.append({int(d) for _, y in group for d in head.domain_of[y]})
        return step(group)

    trainer._optimiser_step = record
    trainer.fit()
    assert step_domains == [{0}, {1}, {0}]  # round robin: cars, sop, cars
    after = _weights(trainer)
    assert any(k.startswith("loss.terms.cosface.heads.1.") for k in after)
    unchanged = [k for k, v in before.items() if torch.equal(v, after[k])]
    assert not unchanged, f"parameters unchanged after 3 steps: {unchanged}"


def test_frozen_epochs_train_the_heads_only_then_the_model_at_its_lr_scale(uned: Path, tmp_path: Path) -> None:
    trainer = _trainer(_config(uned, tmp_path, max_steps=3, frozen_epochs=0.5, model_lr_scale=0.01))
    assert trainer.steps_per_epoch == 5 and trainer.frozen_steps == 2
    before = _weights(trainer)
    lrs: list[list[float]] = []
    step = trainer._optimiser_step

    def record(group):
        out = step(group)
        lrs.append([g["lr"] for g in trainer.optimizer.param_groups])
        return out

    trainer._optimiser_step = record
    trainer.total_steps = 2
    trainer.fit()
    frozen = _weights(trainer)
    assert all(torch.equal(before[k], v) for k, v in frozen.items() if k.startswith("model."))
    assert not any(torch.equal(before[k], v) for k, v in frozen.items() if k.startswith("loss."))
    # model groups (decay, no decay) then loss groups: lr 0 while frozen, then 1e-3 x 0.01; the heads 1e-3 throughout
    assert lrs == [[0.0, 0.0, 1e-3, 1e-3]] * 2
    trainer.total_steps = 3
    trainer.fit(resume=True)
    assert lrs[-1] == pytest.approx([1e-5, 1e-5, 1e-3, 1e-3])


def test_a_preempted_run_resumes_bit_identical_through_train(uned: Path, tmp_path: Path) -> None:
    straight = train(_config(uned, tmp_path / "a", max_steps=6, domain_sampling="dataset_size"))
    assert straight["step"] == 6 and not straight["preempted"]

    cfg = _config(uned, tmp_path / "b", max_steps=6, domain_sampling="dataset_size")
    interrupted = _trainer(cfg)
    step = interrupted._optimiser_step

    def preempt_at_step_3(group):
        out = step(group)
        if interrupted.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    interrupted._optimiser_step = preempt_at_step_3
    assert interrupted.fit()["preempted"] and interrupted.step == 3
    resumed = train(cfg, resume=True)
    assert resumed["step"] == 6
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for part in ("model", "loss"):
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["params"]["classifier"] == "per_domain"


@pytest.mark.parametrize("name", ["uned_vit_in21k", "uned_vit_clip"])
def test_the_uned_recipes_are_the_official_baselines(name: str, tmp_path: Path) -> None:
    cfg = recipe(name, domains=["cars", "sop"])
    expected = {
        "backbone": {
            "uned_vit_in21k": "vit_base_patch16_224.augreg_in21k_ft_in1k",
            "uned_vit_clip": "vit_base_patch16_clip_224.openai",
        }[name],
        "method": "gem",
        "model_kwargs": {"pooling": "cls", "whitening": 64, "normalize_pooled": True},
        "loss": "cosface",
        "loss_kwargs": {"s": 16.0, "m": 0.0},
        "dataset": "uned",
        "classifier": "per_domain",
        "sampler": "domain",
        "domain_sampling": "round_robin",
        "image_size": 224,
        "global_batch": 128,
        "epochs": 7,
        "optimizer": "adamw",
        "lr": 1e-3,
        "min_lr": 1e-3,
        "warmup_epochs": 0.0,
        "weight_decay": 1e-6,
        "no_decay_1d": False,
        "model_lr_scale": 0.01,
        "frozen_epochs": 2.0,
        "amp": "none",
    }
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.domains == ["cars", "sop"]
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    (tmp_path / "r.yaml").write_text(f"recipe: {name}\nclassifier: joint\ndomain_sampling: dataset_size\n")
    joint = TrainConfig.from_yaml(tmp_path / "r.yaml")  # the iccv_configs' other variants
    assert (joint.classifier, joint.domain_sampling, joint.backbone) == ("joint", "dataset_size", cfg.backbone)
    assert set(RECIPES) >= {"uned_vit_in21k", "uned_vit_clip"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"classifier": "separate"}, "classifier must be joint or per_domain"),
        ({"domain_sampling": "uniform"}, "domain_sampling must be one of"),
        ({"optimizer": "adam"}, "optimizer must be sgd or adamw"),
        ({"classifier": "per_domain"}, "need dataset: uned"),
        ({"sampler": "domain"}, "need dataset: uned"),
        ({"model_lr_scale": -1.0}, "model_lr_scale: must be >= 0"),
        ({"frozen_epochs": "two"}, "frozen_epochs: expected float"),
    ],
)
def test_the_new_fields_are_checked(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_a_per_domain_classifier_needs_a_uned_set(tmp_path: Path) -> None:
    from irlib.data.train_set import TrainSet

    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    plain = TrainSet(np.array([b"a.jpg"] * 4), [0, 1, 0, 1], root=tmp_path)
    cfg = TrainConfig(dataset="uned", classifier="per_domain", global_batch=2, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="not a UnED split"):
        Trainer(cfg, plain, model=create_model("gem", backbone="resnet18", pretrained=False))
