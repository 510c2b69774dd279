"""timm ViT backbones with every irlib method: token maps on the input's patch grid, dynamic input size, CLS/mean
pooling, intermediate maps, timm's state-dict keys, extraction and Grad-CAM; random weights, small inputs."""

from __future__ import annotations

import copy
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn

from irlib.eval.extract import ExtractConfig, extract_descriptors
from irlib.models import create_backbone, create_model, list_models
from irlib.models.backbones import (
    feature_maps,
    has_class_token,
    is_vit_backbone,
    local_stage_index,
    patch_grid,
)
from irlib.viz.attention import activation_map, default_layer, grad_cam, plot_attention, preprocess
from tests.models.conftest import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = "vit_tiny_patch16_224"
SMALL = {
    "gem": {},
    "cvnet": {"dim": 32},
    "superglobal": {"dim": 32, "relup": False, "relup_s1_always": False},
    "delg": {"dim": 32, "local_branch": True, "local_dim": 8, "attention_hidden": 16},
    "dolg": {"reduction_dim": 32},
    "spca": {"outputdim": 32, "K": 4, "local_dim": 16, "multi": 2},
    "senet": {"dim": 32, "mid_dim": 8},
    "ultron": {"dim": 32, "embed_dim": 32, "depth": 1, "heads": 2, "cd_depth": 1},
    "cfcd": {"dim": 32},
    "batchformer": {"whitening": 32},
    "batch_transformer": {"whitening": 32},
}
"""Small head sizes per method; a method not listed is built with its defaults."""

RAISES = {"superglobal": "SuperGlobal's ReLU\\+ needs a timm ResNet"}
"""Methods whose defaults do not fit a ViT: the documented ValueError (the working options are in SMALL)."""


def _images(b: int = 2, h: int = 80, w: int = 64, seed: int = 0) -> Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _backbone(model: nn.Module) -> nn.Module:
    return next(m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "backbone")


@pytest.mark.parametrize("method", list_models())
def test_every_method_builds_on_a_vit_or_raises_the_documented_error(method: str) -> None:
    torch.manual_seed(0)
    if method in RAISES:
        with pytest.raises(ValueError, match=RAISES[method]):
            create_model(method, backbone=VIT)
    model = create_model(method, backbone=VIT, **SMALL.get(method, {}))
    backbone = _backbone(model)
    assert is_vit_backbone(backbone)
    x = _images()  # 80 x 64: a non-square 5 x 4 patch grid
    with torch.no_grad():
        desc = model.eval()(x)
    assert desc.shape == (2, model.feat_dim)
    assert torch.isfinite(desc).all()
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(2))

    out = model.train().forward_train(x)
    assert out["descriptor"].shape == (2, model.feat_dim) and torch.isfinite(out["descriptor"]).all()
    torch.testing.assert_close(out["descriptor"].norm(dim=-1), torch.ones(2))
    loss = sum((t * torch.randn_like(t)).sum() for t in out.values() if t.requires_grad)
    loss.backward()
    grad = backbone.patch_embed.proj.weight.grad  # the first layer: the gradient went through the whole backbone
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    cam = grad_cam(model, x[:1])
    assert cam.shape == (80, 64) and np.isfinite(cam).all() and 0.0 <= cam.min() and cam.max() <= 1.0


@pytest.mark.parametrize(
    ("name", "prefix", "patch"),
    [
        ("deit_tiny_distilled_patch16_224", 2, 16),  # class + distillation token
        ("vit_small_patch14_reg4_dinov2", 5, 14),  # DINOv2 with 4 registers
        ("vit_xsmall_patch16_clip_224", 1, 16),  # CLIP (pre-norm, no patch bias)
        ("vit_pwee_patch16_reg1_gap_256", 1, 16),  # a register, no class token, fc_norm after pooling
        ("eva02_tiny_patch14_224", 1, 14),  # EVA-02 (RoPE)
    ],
)
def test_vit_family_variants_give_maps_on_the_patch_grid(name: str, prefix: int, patch: int) -> None:
    model = create_model("gem", backbone=name).eval()
    assert model.backbone.num_prefix_tokens == prefix
    x = _images(1, 70, 90)  # not a multiple of the patch: zero-padded to whole patches
    with torch.no_grad():
        features, desc = model.forward_features(x), model(x)
    assert features.shape == (1, model.feat_dim, math.ceil(70 / patch), math.ceil(90 / patch))
    assert torch.isfinite(desc).all()
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(1))


def test_the_map_is_timms_token_output_and_state_dict_keys_are_timms(tmp_path) -> None:
    reference = timm.create_model(VIT, num_classes=1000).eval()  # static image size, with its classifier
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    model = create_model("gem", backbone=VIT, weights=tmp_path / "vit.pth").eval()
    assert set(model.backbone.state_dict()) == set(reference.state_dict()) - {"head.weight", "head.bias"}
    x = _images(1, 224, 224)
    with torch.no_grad():
        tokens = reference.forward_features(x)  # (1, 1 + 196, C) at the native size: no interpolation
        expected = tokens[:, 1:].transpose(1, 2).reshape(1, -1, 14, 14)
        torch.testing.assert_close(model.forward_features(x), expected, rtol=0, atol=0)
    resnet, _ = create_backbone("resnet18")  # CNNs untouched: timm's forward_features, no token maps
    assert not is_vit_backbone(resnet) and resnet.forward == resnet.forward_features


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 112)])
def test_dynamic_input_size_interpolates_position_embeddings(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_model("gem", backbone=VIT).eval()
    x = _images(2, *size)
    with torch.no_grad():
        features, desc = model.forward_features(x), model(x)
        tokens = model.backbone.forward_features(x)
    h, w = size[0] // 16, size[1] // 16
    assert patch_grid(model.backbone, x) == (h, w)
    assert features.shape == (2, 192, h, w) and tokens.shape == (2, 1 + h * w, 192)
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), tokens[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(2))


def test_cls_and_mean_pooling_match_a_direct_computation_from_forward_features() -> None:
    name = "deit_tiny_distilled_patch16_224"  # two prefix tokens: the mean must leave both out
    gem = create_model("gem", backbone=name).eval()
    cls = create_model("gem", backbone=name, pooling="cls", whitening=16).eval()
    mean = create_model("gem", backbone=name, pooling="mean").eval()
    for other in (cls, mean):
        other.backbone.load_state_dict(gem.backbone.state_dict())
    assert (gem.config["pooling"], cls.config["pooling"], mean.config["pooling"]) == ("gem", "cls", "mean")
    x = _images(2, 64, 96)
    with torch.no_grad():
        tokens = gem.backbone.forward_features(x)
        torch.testing.assert_close(cls(x), F.normalize(cls.whiten(tokens[:, 0]), dim=-1))
        torch.testing.assert_close(mean(x), F.normalize(tokens[:, 2:].mean(dim=1), dim=-1))
        torch.testing.assert_close(gem(x), F.normalize(tokens[:, 2:].clamp(min=1e-6).pow(3).mean(1).pow(1 / 3), dim=-1))
        assert cls(x).shape == (2, 16) and not torch.allclose(mean(x), gem(x))
        uned = create_model("gem", backbone=name, pooling="cls", whitening=16, normalize_pooled=True).eval()
        uned.load_state_dict(cls.state_dict())  # the UnED baselines: class token, L2, projection, L2
        torch.testing.assert_close(uned(x), F.normalize(uned.whiten(F.normalize(tokens[:, 0], dim=-1)), dim=-1))
        assert uned.config["normalize_pooled"] and not torch.allclose(uned(x), cls(x))


def test_cls_pooling_needs_a_class_token_and_pooling_is_checked() -> None:
    assert not has_class_token(create_backbone("vit_pwee_patch16_reg1_gap_256")[0])
    with pytest.raises(ValueError, match="pooling='cls' needs a ViT backbone with a class token"):
        create_model("gem", backbone="vit_pwee_patch16_reg1_gap_256", pooling="cls")
    with pytest.raises(ValueError, match="pooling='cls' needs a ViT backbone with a class token"):
        create_model("gem", backbone="resnet18", pooling="cls")
    with pytest.raises(ValueError, match="pooling must be one of"):
        create_model("gem", backbone=VIT, pooling="max")
    with pytest.raises(ValueError, match="learn_p applies to pooling='gem' only"):
        create_model("gem", backbone=VIT, pooling="mean", learn_p=True)
    mean = create_model("gem", backbone="vit_pwee_patch16_reg1_gap_256", pooling="mean").eval()
    x = _images(1, 64, 64)
    with torch.no_grad():  # a model that normalises after pooling: its fc_norm is applied to each token
        tokens = mean.backbone.fc_norm(mean.backbone.forward_features(x))
        torch.testing.assert_close(mean(x), F.normalize(tokens[:, 1:].mean(dim=1), dim=-1))


def test_intermediate_maps_for_vits_and_cnns() -> None:
    vit, _ = create_backbone(VIT)
    vit.eval()
    assert local_stage_index(vit) == 7  # block ceil(2 * 12 / 3) - 1
    x = _images(1, 80, 64)
    with torch.no_grad():
        final, (local,) = feature_maps(vit, x, [7])
        (only,) = feature_maps(vit, x, [7], intermediates_only=True)
        (timm_local,) = vit.forward_intermediates(x, indices=[7], output_fmt="NCHW", intermediates_only=True)
        torch.testing.assert_close(final, vit(x), rtol=0, atol=0)
    torch.testing.assert_close(local, timm_local, rtol=0, atol=0)  # raw block output, prefix token dropped
    torch.testing.assert_close(only, timm_local, rtol=0, atol=0)
    resnet, _ = create_backbone("resnet18")
    resnet.eval()
    assert local_stage_index(resnet) == 3  # layer3
    with torch.no_grad():
        final, (layer3,) = feature_maps(resnet, x, [3])
        torch.testing.assert_close(
            layer3,
            resnet.layer3(resnet.layer2(resnet.layer1(resnet.maxpool(resnet.act1(resnet.bn1(resnet.conv1(x))))))),
            rtol=0,
            atol=0,
        )
        torch.testing.assert_close(final, resnet(x), rtol=0, atol=0)


def test_delg_local_branch_and_dolg_on_a_patch14_eva() -> None:
    name = "eva02_tiny_patch14_224"  # no stride-16 stage: the local map is block 7 of 12, on the patch grid
    x = _images(2, 70, 56)
    delg = create_model("delg", backbone=name, dim=16, local_branch=True, local_dim=8, attention_hidden=8)
    out = delg.train().forward_train(x)
    assert out["attention"].shape == (2, 5, 4) and out["local_features"].shape == (2, 8, 5, 4)
    dolg = create_model("dolg", backbone=name, reduction_dim=16).eval()
    with torch.no_grad():
        maps = dolg.inspect(x)
    assert maps["stage3"].shape == maps["features"].shape == (2, 192, 5, 4)
    assert not torch.allclose(maps["stage3"], maps["features"])


def test_copies_of_a_vit_model_use_their_own_backbone() -> None:
    model = create_model("gem", backbone=VIT).eval()
    twin = copy.deepcopy(model)
    assert twin.backbone.forward.args[0] is twin.backbone
    with torch.no_grad():
        twin.backbone.blocks[0].mlp.fc2.weight.mul_(2.0)
        assert not torch.allclose(twin(_images()), model(_images()))


def test_extraction_of_generated_images(tmp_path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(90, 70), (64, 96), (90, 70)]):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    paths[2] = paths[0]
    model = create_model("gem", backbone=VIT, pooling="cls")
    cfg = ExtractConfig(image_size=80, scales=(1.0, 1 / math.sqrt(2)), device="cpu")
    out = extract_descriptors(model, paths, cfg=cfg, progress=False)
    assert out.shape == (3, 192) and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[0], out[2])
    assert not np.allclose(out[0], out[1])


def test_grad_cam_and_attention_figures_on_a_vit_gem() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    gem = create_model("gem", backbone=VIT)
    cls = create_model("gem", backbone=VIT, pooling="cls")
    x = preprocess(gem, image, size=96)
    assert default_layer(gem, x) is gem.backbone  # its output is the final patch-token map
    assert default_layer(cls, x) is cls.backbone.blocks[-1].norm1  # the final patch tokens do not feed CLS
    for model in (gem, cls):
        cam = grad_cam(model, x)
        assert cam.shape == (80, 96) and cam.max() == 1.0 and cam.min() == 0.0
        assert activation_map(model, x).shape == (80, 96)
        assert model.training and all(p.requires_grad for p in model.parameters())  # both restored
    fig = plot_attention({"gem": gem, "cls": cls}, [image], size=96)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
