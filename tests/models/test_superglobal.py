"""SuperGlobal: the official outputs under every recorded option set, the pooling pieces, the converter."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from irlib.models import create_model
from irlib.models.checkpoints import load_checkpoint
from irlib.models.pooling import gem
from irlib.models.superglobal import (
    GEMP_EPS,
    ReLUPlus,
    SuperGlobal,
    regional_gem,
    resize_to_scale,
)
from tests.conftest import oracle_model_case, shared_path

SCALES = {1: (1.0,), 3: (0.7071, 1.0, 1.4142), 5: (0.5, 0.7071, 1.0, 1.4142, 2.0)}
CONFIGS = {  # oracle key -> SuperGlobal kwargs (README table of superglobal_r50.pt)
    "default": {},
    "no_gemp": {"gemp": False},
    "no_rgem": {"rgem": False},
    "no_sgem": {"sgem": False},
    "no_relup": {"relup": False},
    "all_off": {"gemp": False, "rgem": False, "sgem": False, "relup": False},
    "default_scale1": {"scales": SCALES[1]},
    "default_scale5": {"scales": SCALES[5]},
}
DEAD = {f"encoder_q.{m}.{t}" for m in ("seb1", "seb2", "sefc") for t in ("weight", "bias")}


def _manifest(name: str) -> dict:
    return json.loads(shared_path("reference", "manifests", name).read_text())


def _fake_state_dict(entries: list[dict]) -> dict[str, torch.Tensor]:
    """Zero tensors of the manifest's shapes and dtypes, as stride-0 views (no memory for the 100M dead weights)."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {e["key"]: torch.zeros((), dtype=dtypes[e["dtype"]]).expand(e["shape"]) for e in entries}


def _assert_unnormalised_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def _assert_stats_close(t: torch.Tensor, expected: torch.Tensor) -> None:
    t = t.double()
    stats = torch.stack([t.mean(), t.std(), t.min(), t.max()])
    torch.testing.assert_close(stats, expected, rtol=1e-4, atol=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def case():
    return oracle_model_case("superglobal_r50.pt")


@pytest.fixture(scope="module")
def backbone_maps(case):
    """(relup, antialias, scale) -> the s4 map of the oracle input, captured while ``forward`` runs end to end on
    ``default_scale5`` (relup on) and ``no_relup`` (relup off) with both antialias settings; those four descriptors
    are checked here against the oracle (the model is fed RGB: the oracle's BGR input flipped)."""
    rec, state_dict, x = case
    maps: dict[tuple[bool, bool, float], torch.Tensor] = {}
    for name in ("default_scale5", "no_relup"):
        for antialias in (True, False):
            model = _load(state_dict, antialias=antialias, **CONFIGS[name])
            captured: list[torch.Tensor] = []
            model.backbone.register_forward_hook(lambda module, inputs, output, out=captured: out.append(output))
            with torch.inference_mode():
                desc = model(x.flip(1))
            key = name + ("" if antialias else ".antialias_false")
            torch.testing.assert_close(desc, rec["outputs"][key], rtol=0, atol=1e-6)
            maps.update({(model.relup, antialias, s): fmap for s, fmap in zip(model.scales, captured, strict=True)})
    return maps


def _load(state_dict, **kwargs) -> SuperGlobal:
    return load_checkpoint(create_model("superglobal", **kwargs), state_dict, source="superglobal").eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_reproduces_official_outputs(case, backbone_maps, name):
    """Every ``outputs`` key (and its ``.antialias_false`` twin): each config's per-scale pooling, scale combination
    and L2 applied to the backbone maps of its ReLU+ setting and resize (``forward`` is checked in the fixture)."""
    rec, state_dict, _ = case
    model = _load(state_dict, **CONFIGS[name])
    for antialias in (True, False) if name != "default_scale1" else (True,):
        key = name + ("" if antialias else ".antialias_false")
        with torch.inference_mode():
            maps = [backbone_maps[(model.relup, antialias, s)] for s in model.scales]
            model_out = model.combine_scales(torch.stack([model.pool_features(m) for m in maps]))
        _assert_unnormalised_close(model_out, rec["outputs"][f"{key}.model_out"])
        torch.testing.assert_close(F.normalize(model_out, dim=-1), rec["outputs"][key], rtol=0, atol=1e-6)


def test_inspect_reproduces_the_single_scale_descriptor(case):
    rec, state_dict, x = case
    model = _load(state_dict, **CONFIGS["default_scale1"])
    with torch.inference_mode():
        out = model.inspect(x.flip(1))
    torch.testing.assert_close(out["descriptor"], rec["outputs"]["default_scale1"], rtol=0, atol=1e-6)
    b = x.shape[0]
    assert out["features"].shape == out["rgem_features"].shape == (b, 2048, 7, 7)
    assert out["rgem_norm"].shape == out["gem_weights"].shape == (b, 7, 7)
    torch.testing.assert_close(out["rgem_norm"], regional_gem(out["features"]).norm(dim=1))
    torch.testing.assert_close(out["gem_weights"].sum(dim=(-2, -1)), torch.ones(b))
    assert out["scale_descriptors"].shape == (b, 1, 2048)
    torch.testing.assert_close(out["scale_descriptors"][:, 0], out["descriptor"])


def test_reproduces_official_intermediates(case, backbone_maps):
    rec, state_dict, x = case
    inter = rec["intermediates"]
    model = _load(state_dict)
    hw = [resize_to_scale(x, s, True).shape[-2:] for s in SCALES[3]]
    assert torch.tensor(hw).equal(inter["default.per_scale_input_hw"])
    with torch.inference_mode():
        maps = [backbone_maps[(True, True, s)] for s in SCALES[3]]
        _assert_unnormalised_close(
            torch.stack([model.pool_features(m) for m in maps]), inter["default.per_scale_fc_out"]
        )
        for s, fmap in zip(SCALES[3], maps, strict=True):
            rgem_out = regional_gem(fmap)
            _assert_stats_close(fmap, inter[f"default.scale{s}.s4_out_stats"])
            _assert_stats_close(rgem_out, inter[f"default.scale{s}.rgem_out_stats"])
            _assert_unnormalised_close(gem(rgem_out, 4.6, GEMP_EPS), inter[f"default.scale{s}.gemp_pooled"])
        _assert_unnormalised_close(model.pool(backbone_maps[(False, True, 1.0)]), inter["all_off.scale1.0.head_pool"])


def test_relup_placement_and_official_s1_quirk():
    def floors(model: SuperGlobal) -> dict[str, float]:
        return {n: m.alpha for n, m in model.backbone.named_modules() if isinstance(m, ReLUPlus)}

    on = floors(SuperGlobal())
    blocks = [f"layer{i}.{b}" for i, n in zip((1, 2, 3), (3, 4, 6), strict=True) for b in range(n)]
    inner = [f"layer1.{b}.{a}" for b in range(3) for a in ("act1", "act2")]
    assert on == dict.fromkeys([f"{b}.act3" for b in blocks] + inner, 0.014)
    assert floors(SuperGlobal(relup=False)) == dict.fromkeys(inner, 0.014)  # the quirk
    assert floors(SuperGlobal(relup=False, relup_s1_always=False)) == {}
    assert set(floors(SuperGlobal("resnet18", relup_alpha=0.1))) == {
        f"layer{i}.{b}.act2" for i in (1, 2, 3) for b in (0, 1)
    }
    with pytest.raises(ValueError, match="ReLU\\+ needs a timm ResNet"):
        SuperGlobal("efficientnet_lite0", relup=False)
    assert SuperGlobal("efficientnet_lite0", relup=False, relup_s1_always=False).feat_dim == 2048


def test_regional_gem_is_a_local_gem_mixed_with_the_identity():
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64)
    x[0, 0] = 0.0  # all-zero windows: output 0, gradient finite
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    local = padded.pow(2.5).unfold(2, 5, 1).unfold(3, 5, 1).mean(dim=(-2, -1)).pow(1 / 2.5)
    torch.testing.assert_close(regional_gem(x), 0.5 * x + 0.5 * local)
    xg = x.clone().requires_grad_()
    regional_gem(xg).sum().backward()
    assert torch.isfinite(xg.grad).all()
    with pytest.raises(ValueError, match="needs maps larger"):
        regional_gem(torch.rand(1, 3, 2, 5))


def test_resize_to_scale_truncates_sizes_and_keeps_the_input_size():
    x = torch.randn(1, 3, 224, 150)
    assert resize_to_scale(x, 1.0, True) is x
    assert resize_to_scale(x, 0.7071, False).shape[-2:] == (158, 106)
    assert resize_to_scale(x, 1.4142, True).shape[-2:] == (316, 212)


def test_shapes_unit_norm_gradients_and_config():
    torch.manual_seed(0)
    model = SuperGlobal("resnet18", gemp=False, dim=64).train()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)  # timm zero-initialises each block's last BN scale
    x = torch.randn(2, 3, 96, 96)
    desc = model(x)
    assert desc.shape == (2, 64) and model.feat_dim == 64
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(2))
    desc.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert model.config["method"] == "superglobal" and model.config["scales"] == [0.7071, 1.0, 1.4142]
    assert not model.bgr_weights


@pytest.mark.parametrize("variant", ["R50", "R101"])
def test_converter_against_manifest(variant):
    """SuperGlobal state dicts: the reranker and the dead seb1/seb2/sefc are dropped, everything else is loaded."""
    entries = _manifest("superglobal_cvnet_state_dict_manifest.json")[variant]
    model = SuperGlobal("resnet50" if variant == "R50" else "resnet101")
    n_params = sum(p.numel() for p in model.parameters())
    dead = sum(torch.Size(e["shape"]).numel() for e in entries["state_dict"] if e["key"] in DEAD)
    assert n_params == entries["n_params_global_encoder_q"] - dead
    assert n_params == _manifest("cvnet_state_dict_manifest.json")[variant]["n_params_global_encoder_q"]
    official = _fake_state_dict(entries["state_dict"])
    assert DEAD <= official.keys()
    load_checkpoint(model, official, source="superglobal")
    assert model.bgr_weights
    assert len(model.state_dict()) == entries["n_tensors_global_encoder_q"] - len(DEAD)
    for drop in ["encoder_q.s4.b3.f.c_bn.running_var", "encoder_q.head.pool.p"]:
        with pytest.raises(ValueError, match="missing keys"):
            load_checkpoint(model, {k: v for k, v in official.items() if k != drop}, source="superglobal")
    renamed = dict(official)
    renamed["encoder_q.seb3.weight"] = renamed.pop("encoder_q.head.fc.weight")
    with pytest.raises(ValueError, match="encoder_q.seb3.weight"):
        load_checkpoint(model, renamed, source="superglobal")
    with pytest.raises(ValueError, match="encoder_q.seb1.weight"):  # not CVNet's own keys
        load_checkpoint(model, official, source="cvnet")
