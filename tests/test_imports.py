"""Every irlib module imports (SpCa's official script fails at import: spca-training.md bug 1)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import irlib

MODULES = sorted(m.name for m in pkgutil.walk_packages(irlib.__path__, "irlib.") if m.name != "irlib.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_every_package_is_covered():
    assert {"irlib.train.engine", "irlib.losses.margin", "irlib.data.gldv2", "irlib.models.spca"} <= set(MODULES)
