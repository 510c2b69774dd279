"""Training configs: YAML round trip, named recipes with their documented values, clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from irlib.train.config import RECIPES, TrainConfig, recipe


def test_yaml_round_trip(tmp_path):
    cfg = recipe("spca", data_dir="/data/gldv2", epochs=1)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_spca_recipe_is_tokens_experiment():
    c = RECIPES["spca"]
    assert (c.image_size, c.global_batch, c.epochs, c.warmup_epochs, c.warmup_lr, c.lr, c.min_lr) == (
        512,
        128,
        30,
        5,
        1e-4,
        0.01,
        0.0,
    )
    assert (c.momentum, c.nesterov, c.weight_decay, c.no_decay_1d) == (0.9, True, 1e-4, True)
    assert c.loss == "arcface" and c.loss_kwargs == {"s": 32.0, "m": 0.15, "fallback": "none"}


def test_yaml_may_start_from_a_recipe_and_unknown_fields_are_named(tmp_path):
    (tmp_path / "r.yaml").write_text("recipe: dolg\nepochs: 2\ndata_dir: /x\n")
    cfg = TrainConfig.from_yaml(tmp_path / "r.yaml")
    assert (cfg.method, cfg.loss, cfg.epochs) == ("dolg", "curricularface", 2)
    (tmp_path / "bad.yaml").write_text("epochz: 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown training config field\(s\) \['epochz'\]"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="unknown recipe 'spcaa'"):
        recipe("spcaa")
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")


def test_a_composite_objective_is_a_list_of_terms_and_either_form_replaces_the_other(tmp_path):
    terms = [{"name": "arcface", "kwargs": {"s": 30.0}}, {"name": "smoothap", "weight": 0.5, "on": "descriptor"}]
    cfg = TrainConfig(losses=terms)
    assert [(t.name, t.weight, t.on) for t in cfg.loss_terms()] == [
        ("arcface", 1.0, None),
        ("smoothap", 0.5, ("descriptor",)),
    ]
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert [t.name for t in TrainConfig(loss="cosface").loss_terms()] == ["cosface"]  # the one-term shorthand
    with pytest.raises(ValueError, match="either as loss/loss_kwargs .* or as losses"):
        TrainConfig(loss="cosface", losses=terms)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['s'\]"):
        TrainConfig(losses=[{"name": "arcface", "s": 30}])
    # overriding either form replaces the recipe's objective
    assert recipe("spca", losses=terms).loss_terms()[1].name == "smoothap"
    assert [t.name for t in recipe("spca", losses=terms).replace(loss="cosface").loss_terms()] == ["cosface"]
    (tmp_path / "r.yaml").write_text("recipe: dolg\nlosses: [{name: madacos}, {name: delg_attention, weight: 2}]\n")
    assert [t.name for t in TrainConfig.from_yaml(tmp_path / "r.yaml").loss_terms()] == ["madacos", "delg_attention"]


def test_every_recipe_builds_its_model_and_objective():
    from irlib.models import create_model
    from irlib.train.engine import build_objective

    assert set(RECIPES) >= {
        "spca",
        "dolg",
        "cvnet",
        "delg",
        "superglobal",
        "senet",
        "ultron",
        "batchformer",
        "batch_transformer",
        "compose_rank",
    }
    for name, cfg in RECIPES.items():
        small = {"ultron": {"embed_dim": 32, "depth": 1, "heads": 4}}.get(name, {})
        backbone = "test_vit" if cfg.model_kwargs.get("pooling") == "cls" else "resnet18"
        model = create_model(cfg.method, backbone=backbone, **(cfg.model_kwargs | small))
        objective = build_objective(cfg, model, num_classes=5, label_domains=np.array([0, 0, 0, 1, 1]))
        assert [t.name for t in cfg.loss_terms()] == [k.split("@")[0] for k in objective.terms][: len(cfg.loss_terms())]


def test_the_compose_rank_recipe_is_the_method_with_a_ranking_equivalent_objective():
    cfg = RECIPES["compose_rank"]
    assert (cfg.method, cfg.model_kwargs["pooling"], cfg.model_kwargs["batch_attention"]) == (
        "compose",
        "spca",
        "batch_transformer",
    )
    assert [(t.name, t.weight) for t in cfg.loss_terms()] == [("cosface", 1.0), ("roadmap", 1.0)]
    assert cfg.sampler == "class_balanced" and cfg.classes_per_batch * cfg.samples_per_class == cfg.global_batch


def test_the_delg_recipe_trains_the_local_branch_with_the_papers_weights():
    cfg = RECIPES["delg"]
    assert cfg.model_kwargs == {"local_branch": True}
    assert {t.name: t.weight for t in cfg.loss_terms()} == {
        "arcface": 1.0,
        "delg_attention": 1.0,
        "delg_reconstruction": 10.0,
    }
    assert cfg.loss_terms()[0].kwargs == {"s": 45.25, "m": 0.1, "fallback": "none"}
    assert (cfg.nesterov, cfg.grad_clip, cfg.lr) == (False, 10.0, 0.01)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_steps": "ten"}, "field max_steps: expected int or null, got 'ten'"),
        ({"log_every": 0}, "field log_every: must be >= 1, got 0"),
        ({"warmup_epochs": -1}, "field warmup_epochs: must be >= 0, got -1"),
        ({"lr": "fast"}, "field lr: expected float, got 'fast'"),
        ({"lr": 0}, "field lr: must be > 0"),
        ({"momentum": 1.0}, "field momentum: must be < 1"),
        ({"pretrained": "yes"}, "field pretrained: expected bool, got 'yes'"),
        ({"epochs": True}, "field epochs: expected int, got True"),
        ({"model_kwargs": [1]}, "field model_kwargs: expected dict"),
    ],
)
def test_every_field_is_type_and_range_checked(tmp_path, fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**fields)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(fields))
    with pytest.raises(ValueError, match=re.escape(f"c.yaml: {message}")):
        TrainConfig.from_yaml(tmp_path / "c.yaml")


def test_numbers_written_with_an_exponent_are_numbers(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-2\nwarmup_lr: 5e-4\nloss_kwargs: {s: 3e1, fallback: none}\n")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["lr"] == "1e-2"  # what PyYAML gives
    cfg = TrainConfig.from_yaml(tmp_path / "c.yaml")
    assert (cfg.lr, cfg.warmup_lr, cfg.loss_kwargs) == (0.01, 0.0005, {"s": 30.0, "fallback": "none"})
    assert isinstance(TrainConfig(epochs=3).warmup_epochs, float)
    assert TrainConfig(losses=[{"name": "arcface", "weight": "5e-1"}]).loss_terms()[0].weight == 0.5
