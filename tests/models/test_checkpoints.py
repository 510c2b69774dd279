"""Checkpoint plumbing: the pycls -> torchvision ResNet key rules against the official manifests."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from irlib.models import create_model
from irlib.models.checkpoints import list_checkpoint_sources, load_checkpoint, pycls_resnet_key
from tests.conftest import shared_path


@pytest.mark.parametrize(("variant", "arch"), [("R50", "resnet50"), ("R101", "resnet101")])
def test_pycls_rules_map_every_cvnet_backbone_key_onto_timm_resnet(variant, arch):
    manifest = json.loads(shared_path("reference", "manifests", "cvnet_state_dict_manifest.json").read_text())
    entries = {e["key"]: e["shape"] for e in manifest[variant]["state_dict"]}
    backbone = {k.removeprefix("encoder_q."): v for k, v in entries.items() if k.startswith("encoder_q.")}
    mapped = {pycls_resnet_key(k): v for k, v in backbone.items() if not k.startswith("head.")}
    assert None not in mapped
    target = {k: list(t.shape) for k, t in timm.create_model(arch, num_classes=0).state_dict().items()}
    assert mapped == target


def test_irlib_checkpoints_round_trip_and_unknown_sources_are_named(tmp_path):
    a, b = create_model("gem", backbone="efficientnet_lite0"), create_model("gem", backbone="efficientnet_lite0")
    torch.save({"model_state": a.state_dict()}, tmp_path / "a.pyth")
    load_checkpoint(b, tmp_path / "a.pyth")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))
    assert "irlib" in list_checkpoint_sources()
    with pytest.raises(
        ValueError, match="Unknown checkpoint source 'cvnett'. Available checkpoint sources: .*Did you mean 'cvnet'"
    ):
        load_checkpoint(b, a.state_dict(), source="cvnett")


def test_save_checkpoint_keeps_the_bgr_flag_of_a_converted_official_model(tmp_path):
    from irlib.models import save_checkpoint

    manifest = json.loads(shared_path("reference", "manifests", "cvnet_state_dict_manifest.json").read_text())
    torch.manual_seed(0)
    official = {
        e["key"]: torch.zeros((), dtype=torch.int64) if e["dtype"] == "int64" else torch.randn(e["shape"]) * 0.05
        for e in manifest["R50"]["state_dict"]
        if e["key"].startswith("encoder_q.")
    }
    official["encoder_q.head.pool.p"] = torch.tensor([3.0])
    official.update({k: torch.rand_like(v) + 0.5 for k, v in official.items() if k.endswith("running_var")})
    converted = load_checkpoint(create_model("cvnet"), official, source="cvnet").eval()
    assert converted.bgr_weights
    save_checkpoint(converted, tmp_path / "cvnet_irlib.pth")
    for reloaded in (
        create_model("cvnet", weights=tmp_path / "cvnet_irlib.pth"),
        load_checkpoint(create_model("cvnet"), tmp_path / "cvnet_irlib.pth"),
    ):
        assert reloaded.bgr_weights
        x = torch.randn(1, 3, 64, 64)
        with torch.inference_mode():
            torch.testing.assert_close(reloaded.eval()(x), converted(x))


def test_weights_files_load_without_running_code_and_bad_files_are_named(tmp_path):
    from tests.test_io import _Exploit

    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("these are not weights\n")
    torch.save(create_model("gem", backbone="resnet18").state_dict(), tmp_path / "good.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:1000])
    for name in ("empty.pth", "text.pth", "cut.pth"):
        with pytest.raises(ValueError, match=rf"{name} is not a readable weights file"):
            create_model("gem", backbone="resnet18", weights=tmp_path / name)
    marker = tmp_path / "pwned"
    torch.save({"backbone.x": torch.zeros(1), "payload": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil.pth: refused: it holds Python objects beyond tensors"):
        create_model("gem", backbone="resnet18", weights=tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="weights file .*missing.pth does not exist"):
        create_model("gem", backbone="resnet18", weights=tmp_path / "missing.pth")
