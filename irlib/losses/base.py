"""The common base of every loss: an ``nn.Module`` that records its registry name and arguments in ``config``."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn


class ConfiguredLoss(nn.Module):
    """A loss whose ``config`` (``{"name": ..., **arguments}``) lets a training run record the exact variant; the
    module's repr shows the arguments.

    Class attributes a composite objective reads (:mod:`irlib.losses.composite`):
        inputs: the training outputs ``forward`` takes, in order, before the labels: ``forward(*outputs, labels)``.
        owns_classes: the loss owns class weights and is built with ``num_classes`` and ``embedding_dim``.
        needs_positives: the loss compares images of one class within the batch (class-balanced batches needed).
    """

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ("descriptor",)
    owns_classes: ClassVar[bool] = False
    needs_positives: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"name": self.name, **config}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if k != "name")
