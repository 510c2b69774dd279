"""Retrieval models: ``create_model(method, backbone=...)`` builds a registered method (e.g. ``"gem"``)."""

from irlib.models._registry import create_model, list_models, register_model
from irlib.models.backbones import create_backbone
from irlib.models.gem import GeMNet
from irlib.models.pooling import GeM, gem

__all__ = ["GeM", "GeMNet", "create_backbone", "create_model", "gem", "list_models", "register_model"]
