"""DOLG: shapes, orthogonal fusion, gradients, the official-checkpoint converter and the official outputs."""

from __future__ import annotations

import inspect
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from irlib.models import create_model, list_models
from irlib.models.checkpoints import list_checkpoint_sources, load_checkpoint
from irlib.models.dolg import (
    CODE_DILATIONS,
    DOLG,
    OFFICIAL_SCALES,
    PAPER_DILATIONS,
    TRAINING_ONLY_KEYS,
    convert_official_dolg,
    rescale,
)
from irlib.models.pooling import mean_of_scales
from tests.conftest import oracle_model_case, shared_path

# Official test-time normalisation, per B, G, R channel (evaler/process.py:12-13).
BGR_MEAN = torch.tensor([0.406, 0.456, 0.485]).view(1, 3, 1, 1)
BGR_STD = torch.tensor([0.225, 0.224, 0.229]).view(1, 3, 1, 1)


def _manifest() -> dict:
    return json.loads(shared_path("reference", "manifests", "dolg_state_dict_manifest.json").read_text())


def _fake_official(variant: str) -> dict[str, torch.Tensor]:
    """An official state dict of the manifest's keys, shapes and dtypes, on the meta device (no memory)."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    entries = _manifest()[variant]["state_dict"]
    return {e["key"]: torch.empty(e["shape"], dtype=dtypes[e["dtype"]], device="meta") for e in entries}


def _meta_model(**kwargs) -> DOLG:
    """A DOLG on the meta device: names, shapes and parameter counts without memory or initialisation."""
    with torch.device("meta"):
        return create_model("dolg", **kwargs)


def test_registered_as_model_and_checkpoint_source() -> None:
    assert "dolg" in list_models()
    assert "dolg" in list_checkpoint_sources()


@pytest.mark.parametrize("multi_atrous", [False, True])
def test_shapes_unit_norm_and_orthogonal_local_part(multi_atrous: bool) -> None:
    torch.manual_seed(0)
    model = create_model("dolg", backbone="resnet18", multi_atrous=multi_atrous).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model.inspect(x)
        desc = model(x)
    c3, c4 = 256, 512
    expected = {
        "features": (2, c4, 2, 3),
        "descriptor": (2, 512),
        "stage3": (2, c3, 4, 6),
        "attention": (2, 4, 6),
        "local": (2, c3, 4, 6),
        "orthogonal": (2, c3, 4, 6),
        "global_pooled": (2, c4),
        "global": (2, c3),
        "fused_local": (2, c3),
        "global_feature": (2, 512),
    }
    if multi_atrous:
        expected["multi_atrous"] = (2, c3, 4, 6)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert model.feat_dim == 512
    torch.testing.assert_close(desc, out["descriptor"])
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(model.forward_features(x), out["features"])
    assert (out["attention"] > 0).all()
    # fl is unit-norm features times the attention; its orthogonal part has (almost) zero dot product with fg.
    torch.testing.assert_close(out["local"].norm(dim=1), out["attention"])
    fg = out["global"]
    cos = torch.einsum("bchw,bc->bhw", out["orthogonal"], fg) / (
        out["orthogonal"].norm(dim=1) * fg.norm(dim=1)[:, None, None]
    )
    assert cos.abs().max() < 1e-5
    torch.testing.assert_close(out["fused_local"], out["orthogonal"].mean(dim=(-2, -1)))


def test_gradients_reach_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    model = create_model("dolg", backbone="resnet18", multi_atrous=True).train()
    with torch.no_grad():  # timm zero-initialises each block's last BN weight, which blocks gradients upstream
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    (model(torch.randn(2, 3, 64, 64)) * torch.randn(2, 512)).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad
    assert model.pool.p.requires_grad


def test_options_config_and_rejected_backbones() -> None:
    model = create_model("dolg", backbone="resnet18", multi_atrous=True)
    assert [c.dilation[0] for c in model.local.aspp.branches[1:]] == list(CODE_DILATIONS) == [6, 12, 18]
    assert [c.padding[0] for c in model.local.aspp.branches[1:]] == [6, 12, 18]
    assert model.config == {
        "method": "dolg",
        "backbone": "resnet18",
        "pretrained": False,
        "weights": None,
        "multi_atrous": True,
        "dilations": [6, 12, 18],
        "p": 3.0,
        "reduction_dim": 512,
    }
    paper = create_model("dolg", backbone="resnet18", multi_atrous=True, dilations=PAPER_DILATIONS, reduction_dim=128)
    assert [c.dilation[0] for c in paper.local.aspp.branches[1:]] == [3, 6, 9]
    assert paper.feat_dim == 128
    assert create_model("dolg", backbone="resnet18").local.aspp is None
    assert inspect.signature(DOLG).parameters["multi_atrous"].default is False
    with pytest.raises(ValueError, match="timm ResNet"):
        create_model("dolg", backbone="efficientnet_lite0")


def test_irlib_weights_round_trip(tmp_path) -> None:
    a = create_model("dolg", backbone="resnet18").eval()
    torch.save(a.state_dict(), tmp_path / "dolg.pth")
    b = create_model("dolg", backbone="resnet18", weights=tmp_path / "dolg.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize(
    "variant", ["R50_WITH_MA_False", "R50_WITH_MA_True", "R101_WITH_MA_False", "R101_WITH_MA_True"]
)
def test_converter_loads_manifest_and_parameter_counts_match(variant: str) -> None:
    block = _manifest()[variant]
    cfg = block["config"]
    model = _meta_model(backbone=f"resnet{cfg['MODEL.DEPTH']}", multi_atrous=cfg["MODEL.WITH_MA"])
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == block["n_params_excluding_desc_cls"]
    assert n_params + 81313 * 512 == block["n_params_total"]
    assert not model.bgr_weights
    official = _fake_official(variant)
    assert [k for k in official if k.startswith("desc_cls.")] == list(TRAINING_ONLY_KEYS)
    converted = convert_official_dolg(official, model)
    assert converted.keys() == model.state_dict().keys()
    assert len(converted) == len(official) - len(TRAINING_ONLY_KEYS) == block["n_tensors_total"] - 2
    assert converted["backbone.layer3.1.bn2.running_var"] is official["globalmodel.s3.b2.f.b_bn.running_var"]
    assert model.bgr_weights
    model.bgr_weights = False
    load_checkpoint(model, official, source="dolg")  # strict: every key and shape
    assert model.bgr_weights


def test_converter_is_strict() -> None:
    official = _fake_official("R50_WITH_MA_False")
    model = _meta_model()

    load_checkpoint(model, {k: v for k, v in official.items() if k not in TRAINING_ONLY_KEYS}, source="dolg")
    dropped = {
        "globalmodel.s3.b2.f.b_bn.running_var": "backbone.layer3.1.bn2.running_var",
        "localmodel.conv2.bias": "local.conv2.bias",
        "fc_t.weight": "fc_t.weight",
    }
    for key, irlib_key in dropped.items():
        with pytest.raises(ValueError, match=f"missing keys: {irlib_key}$"):
            load_checkpoint(model, {k: v for k, v in official.items() if k != key}, source="dolg")
    renamed = {k.replace("localmodel.bn.", "localmodel.norm."): v for k, v in official.items()}
    with pytest.raises(ValueError, match="no irlib counterpart: localmodel.norm.bias"):
        load_checkpoint(model, renamed, source="dolg")
    with pytest.raises(ValueError, match="pool_l.p"):
        load_checkpoint(model, {**official, "pool_l.p": torch.ones(1)}, source="dolg")
    with pytest.raises(ValueError, match="shape mismatches: fc.weight"):
        load_checkpoint(model, {**official, "fc.weight": torch.empty(256, 2048, device="meta")}, source="dolg")
    with pytest.raises(ValueError, match="build it with multi_atrous=True"):
        load_checkpoint(model, _fake_official("R50_WITH_MA_True"), source="dolg")
    with pytest.raises(ValueError, match="build it with multi_atrous=False"):
        load_checkpoint(_meta_model(multi_atrous=True), official, source="dolg")
    with pytest.raises(ValueError, match="missing keys: backbone.layer3.10.bn1.bias"):
        load_checkpoint(_meta_model(backbone="resnet101"), _fake_official("R50_WITH_MA_False"), source="dolg")


def test_converter_gem_exponent_with_and_without_pool_g_p() -> None:
    official = _fake_official("R50_WITH_MA_False")
    model = _meta_model()
    p = convert_official_dolg({**official, "pool_g.p": torch.tensor([2.5])}, model)["pool.p"]
    assert p.shape == model.pool.p.shape == () and p.item() == 2.5
    fixed_p = {k: v for k, v in official.items() if k != "pool_g.p"}
    with pytest.warns(UserWarning, match="p = 3"):
        assert convert_official_dolg(fixed_p, model)["pool.p"].item() == 3.0


ORACLE_FILES = {"dolg_r50.pt": False, "dolg_r50_multiatrous.pt": True}


@pytest.fixture(scope="module", params=list(ORACLE_FILES))
def oracle_run(request) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(record, inspect outputs on x, per-scale descriptors of the ms images, the normalised RGB ms images)."""
    rec, state_dict, x = oracle_model_case(request.param)
    model = create_model("dolg", multi_atrous=ORACLE_FILES[request.param])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(model, state_dict, source="dolg")
    model.eval()
    images = rec["inputs"]["ms_image_u8"].float().div(255).permute(0, 3, 1, 2)
    images = ((images - BGR_MEAN) / BGR_STD).flip(1)
    with torch.no_grad():
        out = model.inspect(x.flip(1))  # x is BGR; irlib models take RGB
        per_scale = model.per_scale_descriptors(images)
    return rec, out, per_scale, images


def _close_unnormalised(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_oracle_single_scale_outputs_and_intermediates(oracle_run) -> None:
    rec, out, *_ = oracle_run
    outputs, inter = rec["outputs"], rec["intermediates"]
    torch.testing.assert_close(out["descriptor"], outputs["global_desc"], rtol=0, atol=1e-6)
    _close_unnormalised(out["global_feature"], outputs["global_feature"])
    _close_unnormalised(out["global_pooled"], inter["fg_o_gem"])
    _close_unnormalised(out["global"], inter["fg"])
    _close_unnormalised(out["fused_local"], inter["fo"])
    _close_unnormalised(out["attention"], inter["att_score"].squeeze(1))
    stats = {"f3_stats": "stage3", "f4_stats": "features", "fl_stats": "local", "aspp_out_stats": "multi_atrous"}
    assert ("aspp_out_stats" in inter) == ("multi_atrous" in out)
    for key, name in stats.items():
        if key in inter:
            t = out[name].double()
            actual = torch.stack([t.mean(), t.std(), t.min(), t.max()])
            torch.testing.assert_close(actual, inter[key], rtol=1e-4, atol=0)


def test_oracle_multiscale_outputs(oracle_run) -> None:
    rec, _, per_scale, images = oracle_run
    assert rec["settings"]["ms_scales"] == list(OFFICIAL_SCALES)
    sizes = [list(rescale(images, s).shape[-2:]) for s in OFFICIAL_SCALES]
    assert sizes == rec["intermediates"]["ms_input_hw"].tolist()
    torch.testing.assert_close(per_scale, rec["outputs"]["ms_per_scale_desc"], rtol=0, atol=1e-6)
    torch.testing.assert_close(mean_of_scales(per_scale), rec["outputs"]["ms_global_desc"], rtol=0, atol=1e-6)


def test_forward_multiscale_is_the_mean_of_official_rescales() -> None:
    x = torch.randn(2, 3, 64, 48)
    sizes = [tuple(rescale(x, s).shape[-2:]) for s in OFFICIAL_SCALES]
    assert sizes == [(23, 17), (32, 24), (45, 34), (64, 48), (91, 68)]  # round(), as evaler/process.py:26-27
    assert rescale(x, 1.0) is x
    model = create_model("dolg", backbone="resnet18").eval()
    with torch.no_grad():
        per_scale = model.per_scale_descriptors(x, scales=(0.5, 1.0))
        torch.testing.assert_close(per_scale[0], model(F.interpolate(x, size=(32, 24), mode="bilinear")))
        torch.testing.assert_close(per_scale[1], model(x))
        torch.testing.assert_close(model.forward_multiscale(x, scales=(0.5, 1.0)), mean_of_scales(per_scale))
    torch.testing.assert_close(mean_of_scales(per_scale), F.normalize(per_scale.sum(0), dim=-1))
