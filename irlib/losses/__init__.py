"""Training losses: margin-softmax heads, pair/triplet losses and AP surrogates, built by name with
:func:`create_loss`; pure tensor versions live in :mod:`irlib.losses.functional`."""

from irlib.losses import functional
from irlib.losses.base import ConfiguredLoss
from irlib.losses.cfcd import CFCDLocalTripletLoss
from irlib.losses.classification import CrossEntropy
from irlib.losses.composite import CompositeLoss, LossTerm, Stream, merge_terms
from irlib.losses.delg import DELGAttentionLoss, DELGReconstructionLoss
from irlib.losses.margin import ArcFace, CosFace, CurricularFace, MadaCos, MarginHead
from irlib.losses.pairs import ContrastiveLoss, TripletLoss
from irlib.losses.ranking import ROADMAP, FastAP, QuantizedAP, SmoothAP
from irlib.losses.registry import LOSSES, create_loss, list_losses, loss_class

__all__ = [
    "LOSSES",
    "ROADMAP",
    "ArcFace",
    "CFCDLocalTripletLoss",
    "CompositeLoss",
    "ConfiguredLoss",
    "ContrastiveLoss",
    "CosFace",
    "CrossEntropy",
    "CurricularFace",
    "DELGAttentionLoss",
    "DELGReconstructionLoss",
    "FastAP",
    "LossTerm",
    "MadaCos",
    "MarginHead",
    "QuantizedAP",
    "SmoothAP",
    "Stream",
    "TripletLoss",
    "create_loss",
    "functional",
    "list_losses",
    "loss_class",
    "merge_terms",
]
