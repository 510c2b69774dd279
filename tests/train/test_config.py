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


def test_uned_training_runs_from_its_info_files(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from irlib.io import sha256_file
    from irlib.results import load_runs
    from irlib.train.run import train

    for domain in ("cars", "sop"):
        (tmp_path / "uned" / "info_files" / domain).mkdir(parents=True)
        entries = []
        for i in range(4):
            rel = f"{domain}/img_{i}.jpg"
            (tmp_path / "uned" / "images" / domain).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(tmp_path / "uned" / "images" / rel)
            entries.append({"path": rel, "class_id": i % 2 if domain == "cars" else [i % 2, 7]})
        (tmp_path / "uned" / "info_files" / domain / "train.json").write_text(json.dumps(entries))
    cfg = TrainConfig(
        dataset="uned",
        domains=["cars", "sop"],
        data_dir=str(tmp_path / "uned"),
        method="gem",
        backbone="efficientnet_lite0",
        pretrained=False,
        loss="cosface",
        image_size=32,
        global_batch=4,
        max_steps=2,
        warmup_epochs=0,
        out_dir=str(tmp_path / "run"),
        channels_last=False,
    )
    assert train(cfg)["step"] == 2
    assert json.loads((tmp_path / "run" / "labels.json").read_text())["num_classes"] == 4  # 2 classes x 2 domains
    record = load_runs(tmp_path / "run", kind="train").iloc[0]  # the run record of a training
    assert record["weights_sha256"] == sha256_file(tmp_path / "run" / "model.pth") and record["step"] == 2
    info_files = [tmp_path / "uned" / "info_files" / d / "train.json" for d in ("cars", "sop")]
    split = json.loads((tmp_path / "run" / "run.json").read_text())["dataset"]["train_split_files"]
    assert split == {str(p): sha256_file(p) for p in info_files}  # the split definition the run read
