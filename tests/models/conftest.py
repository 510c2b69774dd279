"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: with other jobs on the 2 cores, 2 threads run R50 passes several times
    slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unzero_norms(model: torch.nn.Module) -> torch.nn.Module:
    """timm ResNets zero-initialise each block's last BN scale, which zeroes the gradients inside the blocks at
    first: draw every BN scale from U(0.5, 1.5) instead; returns ``model``."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    return model
