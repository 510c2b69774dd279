"""``create_loss("arcface", embedding_dim=..., num_classes=..., s=32.0)``: every loss of :mod:`irlib.losses` by name."""

from __future__ import annotations

from typing import Any

from irlib.losses.base import ConfiguredLoss
from irlib.losses.margin import ArcFace, CosFace, CurricularFace, MadaCos, MarginHead
from irlib.losses.pairs import ContrastiveLoss, TripletLoss
from irlib.losses.ranking import ROADMAP, FastAP, QuantizedAP, SmoothAP

LOSSES: dict[str, type[ConfiguredLoss]] = {
    cls.name: cls
    for cls in (
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
    )
}
"""Loss classes by registry name; margin heads (:class:`MarginHead`) need ``num_classes`` and ``embedding_dim``."""


def list_losses() -> list[str]:
    """Sorted names accepted by :func:`create_loss`."""
    return sorted(LOSSES)


def create_loss(
    name: str, *, embedding_dim: int | None = None, num_classes: int | None = None, **kwargs: Any
) -> ConfiguredLoss:
    """Build loss ``name`` with ``kwargs``; the result's ``config`` records name and arguments.

    Margin heads need ``embedding_dim`` and ``num_classes`` (a ValueError says so when one is missing); the
    parameter-free pair and ranking losses ignore them, so a training loop can pass them to any loss.
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Available losses: {', '.join(list_losses())}.")
    cls = LOSSES[name]
    if not issubclass(cls, MarginHead):
        return cls(**kwargs)
    missing = [arg for arg, value in (("num_classes", num_classes), ("embedding_dim", embedding_dim)) if value is None]
    if missing:
        raise ValueError(f"Loss {name!r} owns a class-weight matrix and needs {' and '.join(missing)}.")
    return cls(num_classes=num_classes, embedding_dim=embedding_dim, **kwargs)
