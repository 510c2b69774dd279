"""Training losses: margin-softmax heads, pair/triplet losses and AP surrogates, built by name with
:func:`create_loss`; pure tensor versions live in :mod:`irlib.losses.functional`."""

from irlib.losses import functional
from irlib.losses.base import ConfiguredLoss
from irlib.losses.margin import ArcFace, CosFace, CurricularFace, MadaCos, MarginHead
from irlib.losses.pairs import ContrastiveLoss, TripletLoss
from irlib.losses.ranking import ROADMAP, FastAP, QuantizedAP, SmoothAP
from irlib.losses.registry import LOSSES, create_loss, list_losses

__all__ = [
    "LOSSES",
    "ROADMAP",
    "ArcFace",
    "ConfiguredLoss",
    "ContrastiveLoss",
    "CosFace",
    "CurricularFace",
    "FastAP",
    "MadaCos",
    "MarginHead",
    "QuantizedAP",
    "SmoothAP",
    "TripletLoss",
    "create_loss",
    "functional",
    "list_losses",
]
