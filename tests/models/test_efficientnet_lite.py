"""The offline EfficientNet-Lite0 ImageNet weights: complete key mapping, real-photo sanity, TF conventions."""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from skimage import data

from irlib.models import create_backbone
from irlib.models.backbones import backbone_data_config, load_state_dict_strict
from irlib.models.efficientnet_lite import (
    MEAN,
    STD,
    TIMM_KWARGS,
    create_efficientnet_lite0,
    efficientnet_lite0_imagenet,
    load_source_state_dict,
    map_state_dict,
)

CATS_TOP1 = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
CATS_ALL = [281, 282, 283, 284, 285]  # + persian, siamese


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return efficientnet_lite0_imagenet().eval()


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return load_source_state_dict()


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H,W) or (H,W,3|4) uint8 -> (3,H,W) float in [0,1]."""
    image = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


def _resize_center_crop(image: torch.Tensor, short: int = 256, crop: int = 224) -> torch.Tensor:
    """(3,H,W) -> (1,3,crop,crop): shorter side to ``short``, then the central ``crop``."""
    h, w = image.shape[-2:]
    scale = short / min(h, w)
    x = F.interpolate(image[None], size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    return x[..., top : top + crop, left : left + crop]


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_every_key_is_mapped(source: dict[str, torch.Tensor]) -> None:
    model = create_efficientnet_lite0()
    mapped = map_state_dict(source, model)
    assert len(mapped) == len(source) == len(model.state_dict()) == 296
    assert mapped.keys() == model.state_dict().keys()
    assert mapped["blocks.6.0.conv_pwl.weight"] is source["_blocks.15._project_conv.weight"]
    assert mapped["blocks.0.0.conv_pw.weight"] is source["_blocks.0._project_conv.weight"]
    assert mapped["classifier.bias"] is source["_fc.bias"]


def test_chelsea_is_classified_as_a_cat(classifier: torch.nn.Module) -> None:
    cfg = backbone_data_config("efficientnet_lite0", classifier)
    assert cfg["mean"] == MEAN and cfg["std"] == STD
    x = _normalise(_resize_center_crop(_to_tensor(data.chelsea())), cfg["mean"], cfg["std"])
    with torch.no_grad():
        probs = classifier(x).softmax(dim=-1)[0]
    top_p, top_class = probs.max(dim=0)
    assert top_class.item() in CATS_TOP1
    assert top_p.item() > 0.3
    assert probs[CATS_ALL].sum().item() > 0.85
    assert set(probs.topk(5).indices.tolist()) >= CATS_TOP1


def test_pretrained_backbone_matches_classifier_features(classifier: torch.nn.Module) -> None:
    backbone, channels = create_backbone("efficientnet_lite0", pretrained=True)
    x = torch.randn(1, 3, 80, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), classifier.forward_features(x))
    assert channels == 1280


def test_corrupted_state_dict_raises(source: dict[str, torch.Tensor]) -> None:
    renamed = dict(source)
    renamed["_blocks.3._bn9.weight"] = renamed.pop("_blocks.3._bn1.weight")
    with pytest.raises(ValueError, match=r"_blocks\.3\._bn9\.weight"):
        efficientnet_lite0_imagenet(renamed)

    out_of_range = dict(source, **{"_blocks.16._bn0.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"_blocks\.16\._bn0\.weight"):
        efficientnet_lite0_imagenet(out_of_range)

    wrong_shape = dict(source, **{"_conv_head.weight": torch.zeros(1280, 321, 1, 1)})
    with pytest.raises(ValueError, match=r"shape mismatches: conv_head\.weight \(expected \(1280, 320, 1, 1\)"):
        efficientnet_lite0_imagenet(wrong_shape)

    missing = {k: v for k, v in source.items() if k != "_blocks.7._bn2.running_var"}
    with pytest.raises(ValueError, match=r"missing keys: blocks\.3\.2\.bn3\.running_var"):
        efficientnet_lite0_imagenet(missing)


def _bn_mismatch(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Mean |log(batch var / running var)| over the inputs of all BatchNorm layers: 0 = perfect fit."""
    scores: list[float] = []

    def hook(module: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor], _: torch.Tensor) -> None:
        var = inputs[0].var(dim=(0, 2, 3))
        used = module.running_var > 1e-2  # skip (near-)dead channels
        scores.append(((var + 1e-3) / (module.running_var + 1e-3)).log().abs()[used].mean().item())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return float(np.mean(scores))


def test_tf_conventions_fit_the_weights_best(source: dict[str, torch.Tensor], classifier: torch.nn.Module) -> None:
    """The chosen BN eps / padding / normalisation beat the PyTorch defaults on real photos' statistics."""
    photos = [data.chelsea(), data.coffee(), data.rocket(), data.astronaut(), data.camera()]
    gen = torch.Generator().manual_seed(0)
    crops = []
    for photo in photos:
        full = _resize_center_crop(_to_tensor(photo), short=256, crop=256)
        for _ in range(4):
            top, left = torch.randint(0, 33, (2,), generator=gen).tolist()
            crops.append(full[..., top : top + 224, left : left + 224])
    x = torch.cat(crops)

    def variant(**kwargs: object) -> torch.nn.Module:
        model = timm.create_model("efficientnet_lite0", **kwargs).eval()
        load_state_dict_strict(model, map_state_dict(source, model), "lite0")
        return model

    chosen = _bn_mismatch(classifier, _normalise(x, MEAN, STD))
    imagenet_norm = _bn_mismatch(classifier, _normalise(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    pytorch_eps = _bn_mismatch(variant(**dict(TIMM_KWARGS, bn_eps=1e-5)), _normalise(x, MEAN, STD))
    symmetric_pad = _bn_mismatch(variant(bn_eps=TIMM_KWARGS["bn_eps"]), _normalise(x, MEAN, STD))
    assert chosen < min(imagenet_norm, pytorch_eps, symmetric_pad)
