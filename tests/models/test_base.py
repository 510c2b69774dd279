"""What the base records for every method: its configuration from the constructor's arguments, weights loaded once."""

from __future__ import annotations

import inspect

import pytest
import torch

from irlib.models import create_model, list_models
from irlib.models._registry import MODELS


@pytest.mark.parametrize("method", ["gem", "cvnet", "superglobal", "dolg", "cfcd", "batchformer"])
def test_config_is_the_registered_name_and_every_constructor_argument(method: str) -> None:
    model = create_model(method, backbone="resnet18")
    cls = MODELS.get(method)
    names = [n for n, p in inspect.signature(cls).parameters.items() if p.kind is not p.VAR_KEYWORD and n != "model"]
    assert model.config["method"] == method == cls.method
    assert set(names) <= set(model.config)  # defaults included
    if method == "superglobal":
        assert model.config["scales"] == [0.7071, 1.0, 1.4142]  # tuples recorded as lists (YAML/JSON friendly)


def test_every_registered_method_records_its_config() -> None:
    for method in list_models():
        builder = MODELS.get(method)
        if isinstance(builder, type):
            assert builder.method == method
    assert create_model("compose", backbone="resnet18").config["method"] == "compose"  # a function builder


def test_weights_are_loaded_once_by_the_outermost_constructor_and_recorded_as_a_string(tmp_path) -> None:
    torch.manual_seed(0)
    source = create_model("superglobal", backbone="resnet18", dim=16)  # SuperGlobal -> CVNetGlobal -> GeMNet
    torch.save(source.state_dict(), tmp_path / "sg.pth")
    loads = []
    cls = MODELS.get("superglobal")
    original = cls.load_weights
    cls.load_weights = lambda self, path: (loads.append(path), original(self, path))[1]
    try:
        loaded = create_model("superglobal", backbone="resnet18", dim=16, weights=tmp_path / "sg.pth")
    finally:
        cls.load_weights = original
    assert loads == [tmp_path / "sg.pth"] and loaded.config["weights"] == str(tmp_path / "sg.pth")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_pretrained_and_weights_are_refused_before_anything_is_built(tmp_path) -> None:
    with pytest.raises(ValueError, match="either pretrained=True or weights=PATH"):
        create_model("dolg", backbone="resnet18", pretrained=True, weights=tmp_path / "none.pth")
