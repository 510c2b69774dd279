"""A small timm-like registry of retrieval methods (``create_model("gem", backbone=...)``)."""

from __future__ import annotations

import fnmatch
import importlib
import os
import pkgutil
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

ModelBuilder = Callable[..., nn.Module]
"""``fn(*, backbone: str, pretrained: bool, weights: str | os.PathLike | None, **kwargs) -> nn.Module``."""

_B = TypeVar("_B", bound=ModelBuilder)

_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[_B], _B]:
    """Decorator registering a model builder (a function or an ``nn.Module`` class) as method ``name``."""

    def decorator(fn: _B) -> _B:
        if name in _MODELS:
            raise ValueError(f"Method {name!r} is already registered (by {_MODELS[name]!r}).")
        _MODELS[name] = fn
        return fn

    return decorator


def import_method_modules() -> None:
    """Import every public module of ``irlib.models`` once, so each method registers itself (model and converter)."""
    import irlib.models

    for info in pkgutil.iter_modules(irlib.models.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"irlib.models.{info.name}")


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered methods, optionally filtered by an fnmatch ``pattern`` (e.g. ``"ge*"``)."""
    import_method_modules()
    names = sorted(_MODELS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def create_model(
    method: str,
    backbone: str = "resnet50",
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build retrieval method ``method`` on timm ``backbone``; ``kwargs`` go to the method's builder.

    ``pretrained`` loads the backbone's ImageNet weights, ``weights`` a local state dict instead.
    """
    import_method_modules()
    if method not in _MODELS:
        available = ", ".join(list_models()) or "(none)"
        raise ValueError(f"Unknown method {method!r}. Available methods: {available}.")
    return _MODELS[method](backbone=backbone, pretrained=pretrained, weights=weights, **kwargs)
