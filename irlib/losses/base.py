"""The common base of every loss: an ``nn.Module`` that records its registry name and arguments in ``config``."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn


class ConfiguredLoss(nn.Module):
    """A loss whose ``config`` (``{"name": ..., **arguments}``) lets a training run record the exact variant; the
    module's repr shows the arguments."""

    name: ClassVar[str]

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"name": self.name, **config}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if k != "name")
