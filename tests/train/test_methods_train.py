"""Every registered method trains as its paper defines it: through ``python -m irlib train`` (weight decay 0),
every parameter with ``requires_grad`` receives a gradient at the first step and has changed after three."""

from __future__ import annotations

import pytest
import torch
import yaml

from irlib.cli import main
from irlib.models import create_model, list_models
from irlib.models.backbones import read_state_dict

BACKBONE = "resnet18"
KWARGS = {  # small heads so that a step takes a moment on a CPU
    "batch_transformer": {"base": "gem", "whitening": 32},
    "batchformer": {"base": "gem", "whitening": 32},
    "cfcd": {"dim": 32},
    "compose": {"pooling": "alpha", "batch_attention": "batch_transformer", "whitening": 32},
    "cvnet": {"dim": 32},
    "delg": {"dim": 32, "local_branch": True},
    "dolg": {"reduction_dim": 32},
    "gem": {"whitening": 32, "learn_p": True},
    "senet": {"dim": 32, "mid_dim": 16},
    "spca": {"outputdim": 32, "K": 4, "local_dim": 16, "num_heads": 4},
    "superglobal": {"dim": 32},
    "ultron": {"dim": 32, "embed_dim": 32, "depth": 1, "heads": 4, "cd_depth": 1},
}


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    from irlib.data.synthetic import DemoConfig, make_demo_data

    config = DemoConfig(n_test_landmarks=1, n_train_landmarks=3, n_overlap_landmarks=0)
    return make_demo_data(tmp_path_factory.mktemp("demo"), config, progress=False)


def test_every_registered_method_is_covered():
    assert set(list_models()) == set(KWARGS)


def _train(tmp_path, data, method: str, steps: int) -> dict[str, torch.Tensor]:
    out = tmp_path / f"{method}-{steps}"
    config = {
        "method": method,
        "backbone": BACKBONE,
        "pretrained": False,
        "model_kwargs": KWARGS[method],
        "loss": "cosface",
        "data_dir": str(data),
        "out_dir": str(out),
        "image_size": 96,  # SuperGlobal's 5x5 Regional-GeM needs maps of 3x3 at least
        "global_batch": 4,
        "max_steps": steps,
        "warmup_epochs": 0,
        "weight_decay": 0.0,
        "lr": 0.05,
        "channels_last": False,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 0  # the Trainer refuses an untrained part
    return read_state_dict(out / "model.pth")


@pytest.mark.parametrize("method", sorted(KWARGS))
def test_every_trainable_parameter_changes(tmp_path, train_data, method):
    torch.manual_seed(0)  # the seed the run builds its model under (TrainConfig.seed)
    initial = create_model(method, backbone=BACKBONE, **KWARGS[method])
    trainable = {n: p.detach().clone() for n, p in initial.named_parameters() if p.requires_grad}
    after_one = _train(tmp_path, train_data, method, steps=1)
    after_three = _train(tmp_path, train_data, method, steps=3)
    unchanged = [n for n, p in trainable.items() if torch.equal(after_three[n], p)]
    assert not unchanged, f"{method}: parameters unchanged after 3 steps: {unchanged}"
    # after one step every part outside the backbone has moved, but for parts behind a layer that starts at zero
    # (inside the backbone, timm zero-initialises the last BN scale of each block likewise)
    head = [n for n in trainable if not n.startswith(("backbone.", "model.backbone."))]
    still = {n for n in head if torch.equal(after_one[n], trainable[n])}
    assert head and still == {n for n in head if n.startswith(BEHIND_ZERO_INIT.get(method, ()))}


BEHIND_ZERO_INIT = {
    # SpCa's cross-attention out-projection starts at zero (official init): nothing before it gets a gradient yet
    "spca": (
        "pos_branch.",
        "fuser.cross_attn.q.",
        "fuser.cross_attn.k.",
        "fuser.cross_attn.v.",
        "fuser.ln.",
        "fuser.proj.",
    ),
}
