"""The registry of retrieval methods, timm-like: ``create_model("gem", backbone=...)``, ``list_models()``."""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Mapping
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


LABELS: Registry[Callable[[Mapping[str, Any]], str]] = Registry("method label", populate=import_method_modules)
"""Method name -> ``fn(config) -> label``, for a method whose runs need more than its name to be told apart in
tables (``compose``: its parts)."""


def method_label(config: Mapping[str, Any]) -> str:
    """The name a run of a model with this ``config`` is recorded and tabled under: the method's name, or its
    :data:`LABELS` function's label (``"compose[spca+batchformer/w512]"``)."""
    method = str(config.get("method") or "")
    return LABELS[method](config) if method in LABELS else method


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
