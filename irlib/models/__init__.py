"""Retrieval models: ``create_model(method, backbone=...)`` builds a registered method (e.g. ``"gem"``).

Each method lives in its own module ``irlib/models/<method>.py`` and registers itself (``@register_model``)
when imported; ``create_model`` and ``list_models`` import all of them.
"""

from irlib.models._registry import create_model, list_models, method_label, register_model
from irlib.models.backbones import create_backbone
from irlib.models.base import RetrievalModel
from irlib.models.checkpoints import load_checkpoint, register_converter, save_checkpoint
from irlib.models.gem import GeMNet
from irlib.models.pooling import GeM, gem

__all__ = [
    "GeM",
    "GeMNet",
    "RetrievalModel",
    "create_backbone",
    "create_model",
    "gem",
    "list_models",
    "method_label",
    "load_checkpoint",
    "register_converter",
    "register_model",
    "save_checkpoint",
]
