"""The registry of retrieval methods, timm-like: ``create_model("gem", backbone=...)``, ``list_models()``."""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from irlib.registry import Registry

if TYPE_CHECKING:
    from irlib.models.base import RetrievalModel

ModelBuilder = Callable[..., "RetrievalModel"]
"""``fn(*, backbone: str, pretrained: bool, weights: str | os.PathLike | None, **kwargs) -> RetrievalModel``."""


def import_method_modules() -> None:
    """Import every public module of ``irlib.models`` once, so each method registers itself (model and converter)."""
    import irlib.models

    for info in pkgutil.iter_modules(irlib.models.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"irlib.models.{info.name}")


MODELS: Registry[ModelBuilder] = Registry("method", populate=import_method_modules)
"""Method name -> builder (a function or a :class:`RetrievalModel` class)."""


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering a model builder (a :class:`RetrievalModel` class or a function) as method ``name``:
    ``@register_model("gem")``; a class learns its name (``method``, recorded in its ``config``)."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if isinstance(builder, type):
            builder.method = name
        return MODELS.register(name, builder)

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered methods, optionally filtered by an fnmatch ``pattern`` (e.g. ``"ge*"``)."""
    return MODELS.names(pattern)


def create_model(
    method: str,
    backbone: str = "resnet50",
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> RetrievalModel:
    """Build retrieval method ``method`` on timm ``backbone``; ``kwargs`` go to the method's builder.

    ``pretrained`` loads the backbone's ImageNet weights, ``weights`` a local state dict instead.
    """
    return MODELS.get(method)(backbone=backbone, pretrained=pretrained, weights=weights, **kwargs)
