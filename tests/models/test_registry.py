"""create_model / list_models, GeMNet outputs and strict loading of local weight files."""

from pathlib import Path

import pytest
import timm.models._builder
import torch

from irlib.models import GeMNet, create_backbone, create_model, list_models

BACKBONE = "efficientnet_lite0"


def _images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_list_models_has_gem() -> None:
    assert "gem" in list_models()
    assert list_models("ge*") == ["gem"]
    assert list_models("nope*") == []


def test_unknown_method_lists_available_methods() -> None:
    with pytest.raises(ValueError, match=r"Unknown method 'nope'.*gem"):
        create_model("nope")


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5O'.*resnet50.*timm\.list_models"):
        create_backbone("resnet5O")
    with pytest.raises(ValueError, match="Did you mean"):
        create_model("gem", backbone="efficientnet_lit0")


def test_gem_descriptors_are_unit_norm() -> None:
    model = create_model("gem", backbone=BACKBONE).eval()
    assert isinstance(model, GeMNet)
    with torch.no_grad():
        feats = model.forward_features(_images())
        desc = model(_images())
    assert feats.shape == (2, 1280, 2, 2)
    assert desc.shape == (2, 1280) and model.feat_dim == 1280
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))
    assert model.config == {
        "method": "gem",
        "backbone": BACKBONE,
        "pretrained": False,
        "weights": None,
        "p": 3.0,
        "learn_p": False,
        "whitening": None,
        "pooling": "gem",
        "normalize_pooled": False,
    }
    assert model.data_config["channel_order"] == "RGB"
    assert all(len(model.data_config[k]) == 3 for k in ("mean", "std"))


def test_gem_whitening_and_learnable_p() -> None:
    model = create_model("gem", backbone=BACKBONE, whitening=64, learn_p=True, p=2.5).eval()
    desc = model(_images())
    assert desc.shape == (2, 64) and model.feat_dim == 64
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))
    desc.sum().backward()
    assert model.pool.p.grad is not None
    assert model.config["whitening"] == 64 and model.config["learn_p"] is True


def test_timm_backbone_data_config_comes_from_pretrained_cfg() -> None:
    model = create_model("gem", backbone="resnet18")
    assert model.data_config == {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "channel_order": "RGB"}


@pytest.mark.parametrize("layout", ["full", "backbone"])
def test_weights_round_trip(tmp_path: Path, layout: str) -> None:
    source = create_model("gem", backbone=BACKBONE, whitening=32, p=4.0).eval()
    path = tmp_path / f"{layout}.pth"
    state = source.state_dict() if layout == "full" else source.backbone.state_dict()
    torch.save({"state_dict": state}, path)

    loaded = create_model("gem", backbone=BACKBONE, whitening=32, p=4.0, weights=path).eval()
    assert loaded.config["weights"] == str(path)
    with torch.no_grad():
        if layout == "full":
            torch.testing.assert_close(loaded(_images()), source(_images()))
        else:
            torch.testing.assert_close(loaded.forward_features(_images()), source.forward_features(_images()))


def test_backbone_weights_drop_only_the_timm_classifier(tmp_path: Path) -> None:
    backbone, _ = create_backbone(BACKBONE)
    state = dict(backbone.state_dict())
    state["classifier.weight"] = torch.zeros(1000, 1280)
    state["classifier.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "timm.pth")
    create_backbone(BACKBONE, weights=tmp_path / "timm.pth")


@pytest.mark.parametrize("layout", ["full", "backbone"])
def test_bad_weights_raise_value_error_naming_keys(tmp_path: Path, layout: str) -> None:
    source = create_model("gem", backbone=BACKBONE)
    state = dict(source.state_dict() if layout == "full" else source.backbone.state_dict())
    prefix = "backbone." if layout == "full" else ""

    wrong_shape = dict(state, **{f"{prefix}conv_head.weight": torch.zeros(1280, 321, 1, 1)})
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=rf"shape\.pth.*shape mismatches: {prefix}conv_head\.weight"):
        create_model("gem", backbone=BACKBONE, weights=tmp_path / "shape.pth")

    extra = dict(state, **{f"{prefix}bogus.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=rf"extra\.pth.*unexpected keys: {prefix}bogus\.weight"):
        create_model("gem", backbone=BACKBONE, weights=tmp_path / "extra.pth")

    missing = {k: v for k, v in state.items() if k != f"{prefix}bn2.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=rf"missing keys: {prefix}bn2\.bias"):
        create_model("gem", backbone=BACKBONE, weights=tmp_path / "missing.pth")


def test_full_weights_with_other_whitening_are_rejected(tmp_path: Path) -> None:
    torch.save(create_model("gem", backbone=BACKBONE, whitening=32).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"whiten\.weight"):
        create_model("gem", backbone=BACKBONE, whitening=16, weights=tmp_path / "w.pth")


def test_pretrained_and_weights_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either"):
        create_model("gem", backbone=BACKBONE, pretrained=True, weights=tmp_path / "w.pth")


def test_pretrained_offline_asks_for_local_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(RuntimeError, match=r"'resnet18'.*weights=") as info:
        create_model("gem", backbone="resnet18", pretrained=True)
    assert isinstance(info.value.__cause__, ConnectionError)
