"""Training configs: YAML round trip, named recipes with their documented values, clear errors."""

from __future__ import annotations

import pytest

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
    assert set(RECIPES) == {"spca", "dolg", "cvnet", "delg"}


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
