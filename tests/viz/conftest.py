"""Fixtures of the figure tests."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    """Close the figures each test opened (pyplot keeps them alive until closed)."""
    yield
    plt.close("all")
