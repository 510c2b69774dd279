"""SpCa: official-oracle reproduction, the bug-fix options, the checkpoint converter and parameter counts."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from irlib.models import create_model
from irlib.models.backbones import load_state_dict_strict
from irlib.models.checkpoints import list_checkpoint_sources, load_checkpoint
from irlib.models.spca import OFFICIAL_OPTIONS, SpatialContext, SpCa, convert_spca_checkpoint, diffusion_matrices
from tests.conftest import oracle_model_case, shared_path

K, D, MULTI = 16, 128, 3
SMALL = "resnet18"
META_WARNING = "ignore:.*meta parameter:UserWarning"


def _images(size: int, batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _manifest() -> dict:
    return json.loads(shared_path("reference", "manifests", "spca_state_dict_manifest.json").read_text())


def _fake_official(manifest: dict) -> dict[str, Tensor]:
    """Manifest-shaped official state dict without memory (positive values, so ``pi``/``cov`` take a log)."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {e["key"]: torch.ones((), dtype=dtypes[e["dtype"]]).expand(e["shape"]) for e in manifest["state_dict"]}


def _meta_model(backbone: str = "resnet101", **kwargs) -> SpCa:
    with torch.device("meta"):
        return create_model("spca", backbone=backbone, **kwargs)


def _stats(t: Tensor) -> Tensor:
    t = t.double()
    return torch.stack([t.mean(), t.std(), t.min(), t.max()])


def _assert_unnormalised(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def _official_pos_branch_state(model: SpCa) -> dict[str, Tensor]:
    return {k.removeprefix("pos_branch."): v for k, v in model.state_dict().items() if k.startswith("pos_branch.")}


@contextmanager
def _pos_branch(model: SpCa, layer: SpatialContext) -> Iterator[SpCa]:
    original = model.pos_branch
    model.pos_branch = layer
    try:
        yield model
    finally:
        model.pos_branch = original


# ----------------------------------------------------------------------------------------------- official oracle


@pytest.fixture(scope="module")
def oracle() -> dict:
    """The official R101 record, irlib's official-options model with its weights, and what that model computes."""
    rec, state_dict, x = oracle_model_case("spca_r101.pt")
    model = _meta_model(**OFFICIAL_OPTIONS).to_empty(device="cpu").eval()  # no random init: all is loaded
    load_checkpoint(model, state_dict, source="spca")
    scales = [1.0, 2**0.5, 0.5**0.5]
    with torch.no_grad():
        out = model.inspect(x)
        inputs = [
            x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) for s in scales
        ]
        per_scale = [out["descriptor"]] + [model(xs) for xs in inputs[1:]]
    return {
        "rec": rec,
        "state_dict": state_dict,
        "model": model,
        "out": out,
        "per_scale": torch.stack(per_scale),
        "input_hw": torch.tensor([list(xs.shape[-2:]) for xs in inputs]),
    }


def test_oracle_outputs_are_reproduced(oracle) -> None:
    rec, out, per_scale = oracle["rec"], oracle["out"], oracle["per_scale"]
    exact = {"rtol": 0, "atol": 1e-6}
    torch.testing.assert_close(out["descriptor"], rec["outputs"]["global_desc"], **exact)
    torch.testing.assert_close(per_scale, rec["outputs"]["ms_per_scale_desc"], **exact)
    torch.testing.assert_close(F.normalize(per_scale.sum(0) / 3, dim=-1), rec["outputs"]["ms_global_desc"], **exact)
    assert torch.equal(oracle["input_hw"], rec["intermediates"]["ms_input_hw"])


def test_oracle_intermediates_are_reproduced(oracle) -> None:
    rec, out, model = oracle["rec"], oracle["out"], oracle["model"]
    inter = rec["intermediates"]
    assert out["token_assignments"].shape == (2, K, 7, 7) and out["context_map"].shape == (2, K * MULTI, 7, 7)
    _assert_unnormalised(out["token_assignments"], inter["token_attn"])
    _assert_unnormalised(out["context_map"], inter["context_map"])
    pooled = out["features"].clamp(min=1e-6).pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    _assert_unnormalised(pooled, inter["gem_pooled"])
    with torch.no_grad():
        _assert_unnormalised(model.whiten(pooled[:, :, None, None]).flatten(1), inter["whiten_out"])
    c5 = out["backbone_features"]
    for name, value in [("backbone_c5", c5), ("fused", out["features"]), ("fused_minus_c5", out["features"] - c5)]:
        torch.testing.assert_close(_stats(value), inter[f"{name}_stats"], rtol=1e-4, atol=0)
    mean_max = out["token_assignments"].amax(dim=1).mean().double()
    torch.testing.assert_close(mean_max, inter["token_attn_mean_max_prob"], rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------------------------- bug-fix options


def test_fix_bug11_diffusion_powers_start_at_a1(oracle) -> None:
    """Official: A^2..A^4; fixed: A^1..A^3 (the fixed channels K:3K are the official 0:2K); 7.8e-4 on the output."""
    model, c5 = oracle["model"], oracle["out"]["backbone_features"]
    fixed = SpatialContext(2048, K, D, MULTI, **{**OFFICIAL_OPTIONS, "diffusion_from_a1": True})
    fixed.load_state_dict(_official_pos_branch_state(model))
    assert model.pos_branch.powers == (2, 3, 4) and fixed.powers == (1, 2, 3)
    with torch.no_grad():
        assignments = model.pos_branch.assign(c5)
        raw_official, raw_fixed = model.pos_branch.encode(assignments, 7, 7), fixed.encode(assignments, 7, 7)
        with _pos_branch(model, fixed):
            descriptor = model.head(c5)["descriptor"]
    torch.testing.assert_close(raw_fixed[:, K:], raw_official[:, : 2 * K])
    cells = torch.cartesian_prod(torch.arange(7.0), torch.arange(7.0))
    a = torch.exp(-torch.cdist(cells, cells))
    spread = (assignments + 1e-8) / (assignments + 1e-8).sum(1, keepdim=True)
    torch.testing.assert_close(raw_fixed[:, :K], spread.transpose(1, 2) @ (a / a.sum(0)))
    change = (descriptor - oracle["rec"]["outputs"]["global_desc"]).abs().max().item()
    assert change == pytest.approx(7.8e-4, abs=0.05e-4)


def test_fix_bug10_gaussian_normaliser_uses_local_dim(oracle) -> None:
    """Official logit: log(pi / sqrt(cov)) - d2 / (2 cov); fixed: log pi - (D/2) log cov - d2 / (2 cov)."""
    model, c5 = oracle["model"], oracle["out"]["backbone_features"]
    official = model.pos_branch
    fixed = SpatialContext(2048, K, D, MULTI, **{**OFFICIAL_OPTIONS, "gmm_full_log_det": True})
    fixed.load_state_dict(_official_pos_branch_state(model))
    with torch.no_grad():
        tokens = official.proj_kv(c5).flatten(2).transpose(1, 2).double()
        d2 = torch.cdist(tokens, official.norm_templates(official.clusters).double()).square()
        pi, cov = official.pi.double(), official.cov.double()
        expected_official = torch.softmax(pi.log() - 0.5 * cov.log() - d2 / (2 * cov), dim=-1)
        expected_fixed = torch.softmax(pi.log() - D / 2 * cov.log() - d2 / (2 * cov), dim=-1)
        for layer, expected in [(official, expected_official), (fixed, expected_fixed)]:
            torch.testing.assert_close(layer.assign(c5).double(), expected, rtol=0, atol=1e-5)
        with _pos_branch(model, fixed):
            change = (model.head(c5)["descriptor"] - oracle["out"]["descriptor"]).abs().max().item()
        assert change > 1e-3
        fixed.cov.fill_(1.0)
        official_unit = SpatialContext(2048, K, D, MULTI, **OFFICIAL_OPTIONS)
        official_unit.load_state_dict(fixed.state_dict())
        torch.testing.assert_close(fixed.assign(c5), official_unit.assign(c5))


def test_fix_bug10_log_parametrised_mixture_matches_official_and_stays_finite(oracle) -> None:
    """The converter takes log(pi), log(cov); the log layer reproduces the official one, and cannot go NaN."""
    model, c5, rec = oracle["model"], oracle["out"]["backbone_features"], oracle["rec"]
    meta = _meta_model(**{**OFFICIAL_OPTIONS, "log_gmm_params": True})
    converted = convert_spca_checkpoint(oracle["state_dict"], meta)
    assert "pos_branch.pi" not in converted and "pos_branch.log_pi" in converted
    layer = SpatialContext(2048, K, D, MULTI, **{**OFFICIAL_OPTIONS, "log_gmm_params": True})
    layer.load_state_dict({k.removeprefix("pos_branch."): v for k, v in converted.items() if "pos_branch." in k})
    with torch.no_grad():
        with _pos_branch(model, layer):
            out = model.head(c5)
        _assert_unnormalised(out["token_assignments"], rec["intermediates"]["token_attn"])
        _assert_unnormalised(out["context_map"], rec["intermediates"]["context_map"])
        torch.testing.assert_close(out["descriptor"], rec["outputs"]["global_desc"], rtol=0, atol=1e-6)
        layer.log_pi[0, 0], layer.log_cov[0, 1] = -50.0, -5.0
        assert torch.isfinite(layer(c5)[0]).all()
        broken = SpatialContext(2048, K, D, MULTI, **OFFICIAL_OPTIONS)
        broken.load_state_dict(_official_pos_branch_state(model))
        broken.pi[0, 0] = -0.1
        assert torch.isnan(broken(c5)[0]).all()
    bad = dict(oracle["state_dict"], **{"pos_branch.pi": -oracle["state_dict"]["pos_branch.pi"]})
    with pytest.raises(ValueError, match="pos_branch.pi has non-positive values"):
        convert_spca_checkpoint(bad, meta)
    assert meta.no_weight_decay() == {"pos_branch.log_pi", "pos_branch.log_cov"}
    assert model.no_weight_decay() == set()


def test_bug16_prenorm_zero_init_mlp_makes_the_fuser_the_identity_at_init() -> None:
    """Official init: the MLP residual perturbs C5 while the context path is zero; the ablation starts at C5."""
    c5 = torch.randn(2, 512, 3, 3, generator=torch.Generator().manual_seed(1))
    context = torch.randn(2, K * MULTI, 3, 3, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    official, ablation = create_model("spca", backbone=SMALL), create_model("spca", backbone=SMALL, fuser_mlp_norm=True)
    with torch.no_grad():
        assert not torch.allclose(official.fuser(c5, context), c5)
        torch.testing.assert_close(ablation.fuser(c5, context), c5, rtol=0, atol=0)
    extra = sum(p.numel() for p in ablation.parameters()) - sum(p.numel() for p in official.parameters())
    assert extra == 2 * 512 and "fuser.mlp_ln.weight" in ablation.state_dict()


def test_diffusion_matrices_are_column_stochastic_powers_on_a_row_major_grid() -> None:
    cells = torch.cartesian_prod(torch.arange(3.0), torch.arange(5.0))
    a = torch.exp(-torch.cdist(cells, cells))
    a = a / a.sum(0)
    mats = diffusion_matrices(3, 5, (1, 2, 4), torch.device("cpu"))
    torch.testing.assert_close(mats, torch.stack([a, a @ a, a @ a @ a @ a]))
    torch.testing.assert_close(mats.sum(1), torch.ones(3, 15))
    assert diffusion_matrices(3, 5, (1, 2, 4), torch.device("cpu")) is mats  # cached, not rebuilt per forward


# ----------------------------------------------------------------------------------------------- converter, counts


@pytest.mark.filterwarnings(META_WARNING)
@pytest.mark.parametrize("options", [{}, OFFICIAL_OPTIONS], ids=["fixed", "official"])
def test_converter_maps_the_manifest_and_drops_only_the_classifier(options: dict, tmp_path) -> None:
    manifest = _manifest()
    official = _fake_official(manifest)
    model = _meta_model(**options)
    converted = convert_spca_checkpoint(official, model)
    assert len(converted) == len(official) - 1 == manifest["num_tensors"] - 1
    without_classifier = {k: v for k, v in official.items() if k != "classifier.weight"}
    assert convert_spca_checkpoint(without_classifier, model).keys() == converted.keys()
    head = {h["key"] for h in manifest["head_keys"]} - {"classifier.weight"}
    if model.pos_branch.log_gmm_params:
        head = {k.replace(".pi", ".log_pi").replace(".cov", ".log_cov") for k in head}
    assert {k for k in converted if not k.startswith("backbone.")} == head
    load_state_dict_strict(model, converted, "manifest")
    assert {k for k in official if not k.startswith("backbone.")} == {h["key"] for h in manifest["head_keys"]}
    container = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in official.items()}, "optim": {"state": {}}}
    load_checkpoint(model, container, source="spca")
    torch.save(container, tmp_path / "epoch3.pth")
    load_checkpoint(model, tmp_path / "epoch3.pth", source="spca")
    assert "spca" in list_checkpoint_sources()


@pytest.mark.filterwarnings(META_WARNING)
def test_converter_rejects_missing_renamed_and_unknown_keys() -> None:
    official = _fake_official(_manifest())
    model = _meta_model(**OFFICIAL_OPTIONS)
    missing = {k: v for k, v in official.items() if k != "fuser.ln.bias"}
    with pytest.raises(ValueError, match=r"missing keys: fuser\.ln\.bias"):
        load_checkpoint(model, missing, source="spca")
    renamed = dict(missing, **{"fuser.lnx.bias": official["fuser.ln.bias"]})
    with pytest.raises(ValueError, match=r"no irlib counterpart: fuser\.lnx\.bias"):
        load_checkpoint(model, renamed, source="spca")
    for extra in ("classifier.bias", "backbone.block6.0.conv1.weight", "head.fc.weight"):
        with pytest.raises(ValueError, match=rf"no irlib counterpart: {extra}"):
            load_checkpoint(model, dict(official, **{extra: torch.zeros(1)}), source="spca")
    with pytest.raises(ValueError, match="shape mismatches"):
        load_checkpoint(_meta_model(**OFFICIAL_OPTIONS, multi=1), official, source="spca")


@pytest.mark.parametrize("variant", ["resnet101_multi3", "resnet101_multi1", "resnet50_multi3", "resnet50_multi1"])
@pytest.mark.parametrize("options", [{}, OFFICIAL_OPTIONS], ids=["fixed", "official"])
def test_parameter_counts_match_the_manifest(variant: str, options: dict) -> None:
    expected = _manifest()["param_counts"][variant]
    backbone, multi = variant.split("_multi")
    model = _meta_model(backbone, multi=int(multi), **options)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    by_module = {name: count(getattr(model, name)) for name in ("backbone", "pos_branch", "fuser", "whiten")}
    assert by_module == {k: v for k, v in expected["by_module"].items() if k in by_module}
    assert count(model) == expected["total_wo_classifier"] == expected["total"] - expected["by_module"]["classifier"]


# ----------------------------------------------------------------------------------------------- shapes, gradients


FUSED = {"cro": 512, "dec": 512, "cat": 1024, "had": 128 * K * MULTI, "orth": 512}
CASES = [("cro", {}), ("cro", OFFICIAL_OPTIONS), ("cro", {"fuser_mlp_norm": True})] + [
    (c, {}) for c in ("cat", "had", "orth", "dec")
]


@pytest.mark.parametrize(
    ("combine", "options"), CASES, ids=["cro", "cro-official", "cro-mlp-norm", "cat", "had", "orth", "dec"]
)
def test_inspect_shapes_unit_norm_and_gradients_reach_every_parameter(combine: str, options: dict) -> None:
    """One training forward at 64 px (2x2 C5) on resnet18. timm zero-initialises each block's last BN scale and
    SpCa its attention out-projections, which blocks gradient upstream at step 0: all-zero tensors are randomised."""
    torch.manual_seed(0)
    model = create_model("spca", backbone=SMALL, combine=combine, outputdim=64, **options).train()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    out = model.inspect(_images(64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "features": (2, FUSED[combine], 2, 2),
        "descriptor": (2, 64),
        "backbone_features": (2, 512, 2, 2),
        "token_assignments": (2, K, 2, 2),
        "context_map": (2, K * MULTI, 2, 2),
    }
    assert model.feat_dim == 64
    torch.testing.assert_close(out["descriptor"].norm(dim=1), torch.ones(2))
    torch.testing.assert_close(out["token_assignments"].sum(1), torch.ones(2, 2, 2))
    (out["descriptor"] * torch.randn(2, 64, generator=torch.Generator().manual_seed(3))).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert no_grad == []


def test_silent_head_parameters_at_official_init_are_the_ones_the_spec_lists() -> None:
    """spca-training.md §3.3: pos_branch.* and fuser.{cross_attn.q/k/v, ln, proj} get exactly zero gradient."""
    torch.manual_seed(0)
    model = create_model("spca", backbone=SMALL, outputdim=64).train()
    (model(_images(64)) * torch.randn(2, 64, generator=torch.Generator().manual_seed(3))).sum().backward()
    head = {n: p for n, p in model.named_parameters() if not n.startswith("backbone.")}
    silent = {n for n, p in head.items() if not p.grad.abs().sum()}
    prefixes = ("pos_branch.", "fuser.cross_attn.q.", "fuser.cross_attn.k.", "fuser.cross_attn.v.", "fuser.ln.")
    assert silent == {n for n in head if n.startswith((*prefixes, "fuser.proj."))}


# ----------------------------------------------------------------------------------------------- API details


def test_config_data_config_and_invalid_options() -> None:
    model = create_model("spca", backbone=SMALL)
    assert model.config == {
        "method": "spca",
        "backbone": SMALL,
        "pretrained": False,
        "weights": None,
        "outputdim": 2048,
        "K": 16,
        "local_dim": 128,
        "multi": 3,
        "combine": "cro",
        "num_heads": 8,
        "log_gmm_params": True,
        "gmm_full_log_det": True,
        "diffusion_from_a1": True,
        "fuser_mlp_norm": False,
    }
    assert model.data_config == {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "channel_order": "RGB"}
    assert model.bgr_weights is False
    with pytest.raises(ValueError, match="'fur' is broken"):
        create_model("spca", backbone=SMALL, combine="fur")
    with pytest.raises(ValueError, match="combine='cro' only"):
        create_model("spca", backbone=SMALL, combine="cat", fuser_mlp_norm=True)
    with pytest.raises(ValueError, match="multi must be positive"):
        create_model("spca", backbone=SMALL, multi=0)


def test_weights_round_trip_and_tiny_inputs(tmp_path) -> None:
    source = create_model("spca", backbone=SMALL, outputdim=32, K=4, multi=2).eval()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "spca.pth")
    loaded = create_model("spca", backbone=SMALL, outputdim=32, K=4, multi=2, weights=tmp_path / "spca.pth").eval()
    x = _images(32)  # a 1x1 feature map, which the official squeeze(1) breaks
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), source(x))
        assert loaded.inspect(x)["token_assignments"].shape == (2, 4, 1, 1)
    loaded.train()(x).sum().backward()  # the cached distance matrices were built in inference mode
    assert math.isfinite(loaded.pos_branch.clusters.grad.sum().item())
    torch.save({k: v for k, v in source.state_dict().items() if k != "whiten.bias"}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys: whiten\.bias"):
        create_model("spca", backbone=SMALL, outputdim=32, K=4, multi=2, weights=tmp_path / "bad.pth")
