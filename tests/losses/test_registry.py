"""create_loss / list_losses: names, errors, configs, and the kwargs the training recipes pass."""

from __future__ import annotations

import pytest
import torch

from irlib.losses import LOSSES, ArcFace, CurricularFace, MarginHead, create_loss, list_losses

NAMES = [  # the descriptor losses; those on other outputs are tested in test_delg.py and test_classification.py
    "arcface",
    "contrastive",
    "cosface",
    "curricularface",
    "fastap",
    "madacos",
    "quantizedap",
    "roadmap",
    "smoothap",
    "triplet",
]
HEADS = ["arcface", "cosface", "curricularface", "madacos"]


def test_list_losses() -> None:
    assert {"cross_entropy", "delg_attention", "delg_reconstruction"} <= set(list_losses())  # on other outputs
    assert [n for n in list_losses() if LOSSES[n].inputs == ("descriptor",)] == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_builds_records_its_config_and_trains(name: str) -> None:
    loss = create_loss(name, embedding_dim=8, num_classes=5)
    assert type(loss) is LOSSES[name] and loss.config["name"] == name
    assert isinstance(loss, MarginHead) == (name in HEADS)
    x = torch.randn(6, 8, requires_grad=True)
    value = loss(x, torch.tensor([0, 0, 1, 1, 2, 4]))
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_kwargs_reach_the_loss_and_its_config() -> None:
    # the "spca" and "dolg" recipes of irlib.train.config
    arc = create_loss("arcface", embedding_dim=16, num_classes=7, s=32.0, m=0.15, fallback="none")
    assert isinstance(arc, ArcFace) and arc.weight.shape == (7, 16)
    assert arc.config == {
        "name": "arcface",
        "num_classes": 7,
        "embedding_dim": 16,
        "subcenters": 1,
        "s": 32.0,
        "m": 0.15,
        "fallback": "none",
    }
    curricular = create_loss("curricularface", embedding_dim=16, num_classes=7, s=30.0, m=0.15, subcenters=3)
    assert isinstance(curricular, CurricularFace) and curricular.weight.shape == (21, 16)
    assert curricular.config["momentum"] == 0.01 and curricular.config["subcenters"] == 3
    assert create_loss("smoothap", tau=0.05).config == {"name": "smoothap", "tau": 0.05}


def test_unknown_name_lists_the_losses() -> None:
    with pytest.raises(ValueError, match="Unknown loss 'softmax'. Available losses: arcface, .*, triplet."):
        create_loss("softmax")
    with pytest.raises(ValueError, match="Did you mean 'smoothap'"):
        create_loss("smooth_ap")


@pytest.mark.parametrize("name", HEADS)
def test_heads_need_classes_and_dimension(name: str) -> None:
    with pytest.raises(ValueError, match="needs num_classes and embedding_dim"):
        create_loss(name)
    with pytest.raises(ValueError, match="needs embedding_dim"):
        create_loss(name, num_classes=10)


def test_parameter_free_losses_ignore_classes_and_dimension() -> None:
    for name in sorted(set(NAMES) - set(HEADS)):
        assert list(create_loss(name, embedding_dim=8, num_classes=5).parameters()) == []
