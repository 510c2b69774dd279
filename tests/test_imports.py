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


LAYERS = {"io": 0, "provenance": 0, "registry": 0, "losses": 1, "models": 2, "data": 2, "eval": 3, "train": 4}
LAYERS |= {"results": 4, "experts": 4, "viz": 5, "cli": 6, "__main__": 7}


def test_layers_import_downwards_only():
    """io/provenance/registry < losses < models, data < eval < train, results < viz < cli: no import goes up (a
    higher layer's work reaches a lower one as a callback), so there is no cycle between layers either."""
    import pathlib
    import re

    root = pathlib.Path(irlib.__file__).parent
    upward = []
    for path in sorted(root.rglob("*.py")):
        layer = path.relative_to(root).with_suffix("").parts[0]
        for target in re.findall(r"^\s*(?:from|import)\s+irlib\.(\w+)", path.read_text(), re.M):
            if target in LAYERS and layer in LAYERS and LAYERS[target] > LAYERS[layer]:
                upward.append(f"{path.relative_to(root)} imports irlib.{target}")
    assert set(LAYERS) >= {p.stem for p in root.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")
    }
    assert not upward
