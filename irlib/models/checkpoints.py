"""Released checkpoints of official code converted into irlib models, strictly.

``load_checkpoint(model, path, source="cvnet")`` renames every tensor of an official state dict to irlib's
names with the converter registered for ``source`` and loads the result with :func:`load_state_dict_strict`:
every tensor mapped, every shape equal, nothing skipped (unlike SuperGlobal's lenient loader). Converters live
beside their method (``irlib/models/<method>.py``) and register with :func:`register_converter`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from irlib.io import atomic_path
from irlib.models._registry import import_method_modules
from irlib.models.backbones import load_state_dict_strict, pycls_resnet_key, read_checkpoint
from irlib.models.base import RetrievalModel
from irlib.registry import Registry

__all__ = [
    "Converter",
    "list_checkpoint_sources",
    "load_checkpoint",
    "pycls_resnet_key",
    "register_converter",
    "save_checkpoint",
]

Converter = Callable[[Mapping[str, Tensor], nn.Module], dict[str, Tensor]]
"""``fn(official_state_dict, model) -> irlib_state_dict``; raises ``ValueError`` naming unmappable keys."""

CONVERTERS: Registry[Converter] = Registry("checkpoint source", populate=import_method_modules)
"""Source name (the code that wrote a checkpoint) -> converter; ``"irlib"`` takes irlib's own state dicts."""
CONVERTERS.register("irlib", lambda state_dict, model: dict(state_dict))

register_converter = CONVERTERS.register
"""Decorator registering the converter of checkpoints from ``source``: ``@register_converter("cvnet")``."""


def save_checkpoint(model: RetrievalModel, path: str | os.PathLike) -> None:
    """Write ``{"state_dict", "config", "bgr_weights", "irlib_version"}`` atomically.

    Unlike a bare ``torch.save(model.state_dict())``, the file keeps ``bgr_weights``, so a converted official
    pycls-family model (BGR weights) reloaded with ``weights=PATH`` or :func:`load_checkpoint` still flips its input.
    """
    import irlib

    payload = {
        "state_dict": model.state_dict(),
        "config": dict(model.config),
        "bgr_weights": bool(model.bgr_weights),
        "irlib_version": irlib.__version__,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def list_checkpoint_sources() -> list[str]:
    """Sorted sources :func:`load_checkpoint` converts from."""
    return CONVERTERS.names()


def load_checkpoint(
    model: RetrievalModel, checkpoint: str | os.PathLike | Mapping[str, Tensor], source: str = "irlib"
) -> nn.Module:
    """Load an official (or irlib) checkpoint into ``model``; returns ``model``.

    Args:
        model: an irlib model built to match the checkpoint (method, backbone depth, options).
        checkpoint: a file (a state dict, or a container with it under ``model_state``/``state_dict``/``model``)
            or a state dict.
        source: which code produced it; see :func:`list_checkpoint_sources`.
    """
    convert = CONVERTERS.get(source)
    if isinstance(checkpoint, Mapping):
        state_dict, meta, label = dict(checkpoint), {}, f"the given {source} state dict"
    else:
        (state_dict, meta), label = read_checkpoint(checkpoint), f"{os.fspath(checkpoint)} ({source})"
    load_state_dict_strict(model, convert(state_dict, model), label)
    if "bgr_weights" in meta:
        model.bgr_weights = bool(meta["bgr_weights"])
    return model
