"""``create_loss("arcface", embedding_dim=..., num_classes=..., s=32.0)``: every loss of :mod:`irlib.losses` by name."""

from __future__ import annotations

from typing import Any

from irlib.losses.base import ConfiguredLoss
from irlib.losses.cfcd import CFCDLocalTripletLoss
from irlib.losses.classification import CrossEntropy
from irlib.losses.delg import DELGAttentionLoss, DELGReconstructionLoss
from irlib.losses.margin import ArcFace, CosFace, CurricularFace, MadaCos
from irlib.losses.pairs import ContrastiveLoss, TripletLoss
from irlib.losses.ranking import ROADMAP, FastAP, QuantizedAP, SmoothAP
from irlib.registry import Registry

LOSSES: Registry[type[ConfiguredLoss]] = Registry("loss", "losses")
"""Loss classes by registry name; those with ``owns_classes`` need ``num_classes`` and ``embedding_dim``."""
for _cls in (
    ArcFace,
    CosFace,
    CurricularFace,
    MadaCos,
    ContrastiveLoss,
    TripletLoss,
    SmoothAP,
    FastAP,
    ROADMAP,
    QuantizedAP,
    DELGAttentionLoss,
    DELGReconstructionLoss,
    CrossEntropy,
    CFCDLocalTripletLoss,
):
    LOSSES.register(_cls.name, _cls)


def list_losses() -> list[str]:
    """Sorted names accepted by :func:`create_loss`."""
    return LOSSES.names()


def loss_class(name: str) -> type[ConfiguredLoss]:
    """The class registered as ``name``; an unknown name raises a ValueError listing the available ones."""
    return LOSSES.get(name)


def create_loss(
    name: str, *, embedding_dim: int | None = None, num_classes: int | None = None, **kwargs: Any
) -> ConfiguredLoss:
    """Build loss ``name`` with ``kwargs``; the result's ``config`` records name and arguments.

    Losses owning class weights need ``embedding_dim`` and ``num_classes`` (a ValueError says so when one is
    missing); the parameter-free pair, ranking and reconstruction losses ignore them, so a training loop can pass
    them to any loss.
    """
    cls = loss_class(name)
    if not cls.owns_classes:
        return cls(**kwargs)
    missing = [arg for arg, value in (("num_classes", num_classes), ("embedding_dim", embedding_dim)) if value is None]
    if missing:
        raise ValueError(f"Loss {name!r} owns a class-weight matrix and needs {' and '.join(missing)}.")
    return cls(num_classes=num_classes, embedding_dim=embedding_dim, **kwargs)
