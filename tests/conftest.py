"""Shared fixtures: the reference material in ``../shared`` (skipped with a reason when absent)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A file under ``../shared``; skips the calling test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} is absent (../shared holds the team's reference material)")
    return path


@pytest.fixture(scope="session")
def revisitop_dir() -> Path:
    """The folder with the real ``gnd_roxford5k.pkl`` and ``gnd_rparis6k.pkl``."""
    return shared_path("data", "revisitop")


@pytest.fixture(scope="session")
def oracle_cases() -> dict:
    """Outputs of the unmodified official revisitop ``compute_map`` (see its README)."""
    with open(shared_path("data", "oracle", "revisited_oracle_cases.pkl"), "rb") as f:
        return pickle.load(f)
