"""CVNet-Global: the official outputs (single- and multi-scale), the converter against the manifests, the API."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from irlib.models import create_model, list_models
from irlib.models.checkpoints import list_checkpoint_sources, load_checkpoint
from irlib.models.cvnet import CVNetGlobal
from irlib.models.pooling import mean_of_scales
from tests.conftest import oracle_model_case, shared_path

BGR_MEAN, BGR_STD = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)  # official test/dataset.py:20-21
MS_IMAGES = ["ms_image_u8_scale0.7071", "ms_image_u8", "ms_image_u8_scale1.4142"]  # scales 0.7071, 1, 1.4142


def _manifest(variant: str) -> dict:
    return json.loads(shared_path("reference", "manifests", "cvnet_state_dict_manifest.json").read_text())[variant]


def _fake_state_dict(entries: list[dict]) -> dict[str, torch.Tensor]:
    """Zero tensors of the manifest's shapes and dtypes (stride-0 views)."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {e["key"]: torch.zeros((), dtype=dtypes[e["dtype"]]).expand(e["shape"]) for e in entries}


def _assert_unnormalised_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def _stats(t: torch.Tensor) -> torch.Tensor:
    t = t.double()
    return torch.stack([t.mean(), t.std(), t.min(), t.max()])


def _normalise_bgr_u8(images: torch.Tensor) -> torch.Tensor:
    """(N,H,W,3) uint8 BGR -> (N,3,H,W) float32 BGR: /255 then the BGR mean/std (official test/dataset.py:55-62)."""
    x = images.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(BGR_MEAN).view(1, 3, 1, 1)) / torch.tensor(BGR_STD).view(1, 3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def oracle():
    rec, state_dict, x = oracle_model_case("cvnet_global_r50.pt")
    model = load_checkpoint(create_model("cvnet"), state_dict, source="cvnet").eval()
    return rec, model, x


def test_reproduces_official_global_descriptor(oracle):
    """The model takes RGB: the oracle's BGR input is flipped, and the converted model flips it back."""
    rec, model, x = oracle
    assert model.bgr_weights
    stages = {"stem": model.backbone.maxpool, **{f"s{i}": getattr(model.backbone, f"layer{i}") for i in range(1, 5)}}
    outputs: dict[str, torch.Tensor] = {}
    for name, module in stages.items():
        module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    with torch.inference_mode():
        out = model.inspect(x.flip(1))
        pooled = model.pool(out["features"])
        fc_out = model.whiten(pooled)
    torch.testing.assert_close(out["descriptor"], rec["outputs"]["global_desc"], rtol=0, atol=1e-6)
    inter = rec["intermediates"]
    _assert_unnormalised_close(pooled, inter["gem_pooled"])
    _assert_unnormalised_close(fc_out, inter["fc_out"])
    for name, t in outputs.items():
        torch.testing.assert_close(_stats(t), inter[f"{name}_out_stats"], rtol=1e-4, atol=0)
    s4_mean = outputs["s4"].double().mean(dim=(1, 2, 3))
    torch.testing.assert_close(s4_mean, inter["s4_out_mean_per_image"], rtol=1e-4, atol=0)
    assert out["features"].shape == (2, 2048, 7, 7) and out["gem_weights"].shape == (2, 7, 7)
    torch.testing.assert_close(out["gem_weights"].sum(dim=(-2, -1)), torch.ones(2))


def test_reproduces_official_multiscale_descriptor(oracle):
    """Per-scale descriptors of the recorded cv2-resized uint8 images, then L2 -> mean -> L2 (mean_of_scales)."""
    rec, model, _ = oracle
    images = [rec["inputs"][k] for k in MS_IMAGES]
    assert torch.tensor([im.shape[1:3] for im in images]).equal(rec["intermediates"]["ms_input_hw"])
    with torch.inference_mode():
        per_scale = torch.stack([model(_normalise_bgr_u8(im).flip(1)) for im in images])
    torch.testing.assert_close(per_scale, rec["outputs"]["ms_per_scale_desc"], rtol=0, atol=1e-6)
    torch.testing.assert_close(mean_of_scales(per_scale), rec["outputs"]["ms_global_desc"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("variant", "arch"), [("R50", "resnet50"), ("R101", "resnet101")])
def test_converter_against_manifest(variant, arch):
    """Every ``encoder_q`` tensor is loaded; exactly the reranker's ``conv2ds.*``/``cv_learner.*`` are dropped."""
    entries = _manifest(variant)
    model = create_model("cvnet", backbone=arch)
    assert sum(p.numel() for p in model.parameters()) == entries["n_params_global_encoder_q"]
    assert len(model.state_dict()) == entries["n_tensors_global_encoder_q"]
    official = _fake_state_dict(entries["state_dict"])
    dropped = {k for k in official if not k.startswith("encoder_q.")}
    assert {k.split(".")[0] for k in dropped} == {"conv2ds", "cv_learner"}
    load_checkpoint(model, official, source="cvnet")
    assert model.bgr_weights
    load_checkpoint(model, {k: v for k, v in official.items() if k not in dropped}, source="cvnet")
    assert model.pool.p.shape == () and official["encoder_q.head.pool.p"].shape == (1,)
    for drop in ["encoder_q.s1.b1.proj.weight", "encoder_q.head.fc.bias", "encoder_q.stem.bn.num_batches_tracked"]:
        with pytest.raises(ValueError, match="missing keys"):
            load_checkpoint(model, {k: v for k, v in official.items() if k != drop}, source="cvnet")
    renamed = dict(official)
    renamed["encoder_q.head.whiten.weight"] = renamed.pop("encoder_q.head.fc.weight")
    with pytest.raises(ValueError, match="encoder_q.head.whiten.weight"):
        load_checkpoint(model, renamed, source="cvnet")
    with pytest.raises(ValueError, match="encoder_q.sefc.bias"):
        load_checkpoint(model, {**official, "encoder_q.sefc.bias": torch.zeros(1)}, source="cvnet")
    with pytest.raises(TypeError, match="CVNetGlobal"):
        load_checkpoint(create_model("gem", backbone=arch), official, source="cvnet")


def test_shapes_unit_norm_gradients_and_config():
    model = create_model("cvnet", backbone="efficientnet_lite0", dim=32).train()
    assert isinstance(model, CVNetGlobal) and model.feat_dim == 32 and not model.bgr_weights
    x = torch.randn(2, 3, 64, 64)
    desc = model(x)
    assert desc.shape == (2, 32)
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(2))
    desc[:, 0].sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert model.pool.p.requires_grad and model.pool.p.item() == 3.0
    assert model.config == {
        "method": "cvnet",
        "backbone": "efficientnet_lite0",
        "pretrained": False,
        "weights": None,
        "p": 3.0,
        "dim": 32,
    }
    assert model.data_config["channel_order"] == "RGB"


def test_local_weights_round_trip(tmp_path):
    a = create_model("cvnet", backbone="efficientnet_lite0", dim=16).eval()
    torch.save(a.state_dict(), tmp_path / "cvnet.pth")
    b = create_model("cvnet", backbone="efficientnet_lite0", dim=16, weights=tmp_path / "cvnet.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(a(x), b(x))
    assert b.config["weights"] == str(tmp_path / "cvnet.pth")


def test_registered():
    assert {"cvnet", "superglobal"} <= set(list_models())
    assert {"cvnet", "superglobal"} <= set(list_checkpoint_sources())


def test_average_scales_is_l2_mean_l2():
    per_scale = torch.randn(3, 2, 8)
    expected = F.normalize(sum(F.normalize(d, dim=-1) for d in per_scale) / 3, dim=-1)
    torch.testing.assert_close(mean_of_scales(per_scale), expected)
