"""The API every irlib retrieval model shares, so extraction, training and figures treat methods alike."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from irlib.losses.composite import DESCRIPTOR, LossTerm, Stream
from irlib.models.backbones import (
    backbone_data_config,
    create_backbone,
    load_backbone_weights,
    load_state_dict_strict,
    read_checkpoint,
)


def to_channels_last(module: nn.Module) -> bool:
    """Put a module's 4-D weights in channels_last (NHWC) layout; False when a 5-D weight (e.g. SENet's Conv3d)
    prevents it, the module then staying contiguous."""
    try:
        module.to(memory_format=torch.channels_last)
        return True
    except RuntimeError:
        module.to(memory_format=torch.contiguous_format)
        return False


def _plain(value: Any) -> Any:
    """A constructor argument as ``config`` stores it: paths as strings, sequences as lists."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


class RetrievalModel(nn.Module):
    """Base of all methods: ``(B, 3, H, W)`` RGB images -> ``(B, feat_dim)`` L2-normalised descriptors.

    Construction: a subclass's ``__init__`` builds the modules; then, once, for the outermost constructor, the base
    records ``config`` (``{"method": <registered name>, **the constructor's arguments}``, plain values; see
    :meth:`record_config`) and loads the ``weights`` argument with :meth:`load_weights`, the one place weights are
    read. ``pretrained`` and ``weights`` exclude each other (checked before anything is built).

    Attributes set by subclasses:
        feat_dim: descriptor size D.
        data_config: input normalisation ``{"mean", "std"}`` (RGB order, on [0, 1] pixels) and ``channel_order``
            ("RGB"), what the extractor applies before calling the model.
        config: the constructor arguments, recorded with every run (set by the base, see above).
        method: the registered name (set by :func:`irlib.models.register_model`).
        bgr_weights: the backbone was trained on BGR input (pycls family: CVNet, SuperGlobal, DOLG); the model
            then flips its RGB input itself (:meth:`to_backbone_order`). Set by checkpoint converters.

    Methods to override: :meth:`forward_features` (the feature map before pooling) and :meth:`forward`;
    :meth:`inspect` adds method-specific maps (attention, assignments, ...) for figures.

    Training interface (what the Trainer drives; evaluation only ever calls ``model(images)``): a method whose
    paper trains more than the descriptor overrides :meth:`forward_train` (its named training outputs),
    :meth:`output_dims` (their channel sizes), :meth:`descriptor_streams` (the outputs the run's descriptor losses
    supervise) and :meth:`loss_terms` (the auxiliary losses its paper adds, with their weights). A part that no
    loss trains must be frozen on purpose (``requires_grad=False``, said in the code); the Trainer refuses a
    parameter that receives no gradient.
    """

    feat_dim: int
    data_config: dict[str, Any]
    config: dict[str, Any]
    method: str = ""
    bgr_weights: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap a subclass's own ``__init__`` so that the outermost constructor records ``config`` and loads
        ``weights`` once its body has built the modules."""
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        body = cls.__init__
        signature = inspect.signature(body)

        @functools.wraps(body)
        def init(self: RetrievalModel, *args: Any, **kw: Any) -> None:
            arguments = signature.bind(self, *args, **kw)
            arguments.apply_defaults()
            given = dict(arguments.arguments)
            given.pop(next(iter(signature.parameters)))  # self
            outermost = type(self).__init__ is init
            if outermost and given.get("pretrained") and given.get("weights") is not None:
                raise ValueError("Pass either pretrained=True or weights=PATH, not both.")
            body(self, *args, **kw)
            if outermost:
                self.config = self.record_config(
                    {k: _plain(v) for k, v in given.items() if not isinstance(v, nn.Module)}
                )
                if given.get("weights") is not None:
                    self.load_weights(given["weights"])

        cls.__init__ = init  # type: ignore[method-assign]

    def record_config(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``config`` from the constructor's arguments (plain values; modules left out; a ``**kwargs`` argument as one
        mapping): ``{"method", **arguments}``. Wrappers record what they wrap."""
        return {"method": self.method, **arguments}

    def build_backbone(self, name: str, pretrained: bool) -> int:
        """Create ``self.backbone`` (a timm feature extractor, see ``create_backbone``) and ``self.data_config``;
        returns the feature-map channels."""
        self.backbone, channels = create_backbone(name, pretrained=pretrained)
        self.data_config = backbone_data_config(name, self.backbone)
        return channels

    def load_weights(self, path: str | os.PathLike) -> None:
        """Strictly load a local file (optionally under ``model_state``/``state_dict``/``model``).

        Keys ``backbone.*`` make it the whole model's state dict; otherwise it is the bare backbone's (timm and
        torchvision layout, its ImageNet classifier dropped, or a pycls-layout ResNet, which marks the weights
        BGR). A file from :func:`irlib.models.checkpoints.save_checkpoint` also restores ``bgr_weights``.
        Missing/unexpected keys or shape mismatches -> ValueError naming the file and the keys.
        """
        state_dict, meta = read_checkpoint(path)
        source = os.fspath(path)
        if any(k.startswith("backbone.") for k in state_dict):
            load_state_dict_strict(self, state_dict, source)
            self.bgr_weights = bool(meta.get("bgr_weights", False))
        else:
            self.bgr_weights = self.load_backbone_state(state_dict, source)

    def load_backbone_state(self, state_dict: dict[str, Tensor], source: str) -> bool:
        """Strictly load a bare backbone's state dict (:func:`irlib.models.backbones.load_backbone_weights`);
        returns whether it is BGR (pycls layout)."""
        return load_backbone_weights(self.backbone, state_dict, source)

    def to_backbone_order(self, x: Tensor) -> Tensor:
        """RGB input -> the channel order of the backbone weights (ImageNet RGB statistics flip with it)."""
        return x.flip(1) if self.bgr_weights else x

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, h, w)``: the feature map the method pools."""
        raise NotImplementedError

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, 3, H, W)`` -> named training outputs, always ``"descriptor"`` ``(B, D)``; one pass for all."""
        return {DESCRIPTOR: self(x)}

    def output_dims(self) -> dict[str, int]:
        """Channel size of each output of :meth:`forward_train` (the ``embedding_dim`` of a head reading it)."""
        return {DESCRIPTOR: self.feat_dim}

    def descriptor_streams(self) -> tuple[Stream, ...]:
        """What the run's descriptor losses supervise (:class:`irlib.losses.Stream`): the descriptor alone."""
        return (Stream((DESCRIPTOR,)),)

    def loss_terms(self) -> list[LossTerm]:
        """Auxiliary loss terms the method's paper adds to the run's losses (none for a descriptor-only method)."""
        return []

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """Tensors for figures, keyed by name; always ``"features"`` ``(B, C, h, w)`` and ``"descriptor"``
        ``(B, D)``; methods add their own maps (documented in each module), spatial maps as ``(B, h, w)`` or
        ``(B, K, h, w)``."""
        return {"features": self.forward_features(x), "descriptor": self(x)}


def _backbone(model: nn.Module) -> nn.Module:
    """The model's first submodule named ``backbone`` (wrappers included), or the model itself when it has none."""
    return next((m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "backbone"), model)


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode with parameters not requiring grad inside the block; both restored after."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def last_feature_layer(model: nn.Module, x: Tensor) -> tuple[nn.Module, int]:
    """The last module inside the model's backbone (its first submodule named ``backbone``) to output a 4-D
    ``(B, C, h, w)`` tensor in an eval-mode forward of ``x``, and that C: the backbone's final feature map, found the
    same way however a method calls its backbone (``forward_features``, stage by stage as DOLG,
    ``forward_intermediates`` as ULTRON, once per scale as SuperGlobal). Neither the mode, the parameters nor BN
    statistics change."""
    fired: list[tuple[nn.Module, int]] = []

    def note(module: nn.Module, _inputs: object, out: object) -> None:
        if isinstance(out, Tensor) and out.ndim == 4:
            fired.append((module, out.shape[1]))

    handles = [m.register_forward_hook(note) for m in _backbone(model).modules()]
    try:
        with frozen_eval(model), torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not fired:
        raise ValueError(f"no module of {type(model).__name__}'s backbone outputs a (B, C, h, w) map")
    return fired[-1]
