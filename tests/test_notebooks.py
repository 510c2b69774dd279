"""Notebooks are committed clean: no outputs or execution counts, one ``parameters`` cell of literals."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "run `make strip` before committing"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    for node in ast.parse(params[0].source).body:
        assert isinstance(node, ast.AnnAssign), f"parameters cell: typed assignments only ({ast.unparse(node)})"
        ast.literal_eval(node.value)  # literals only: papermill does not recompute derived values


def test_numbered_notebooks_exist():
    assert "03_evaluation.ipynb" in {p.name for p in NOTEBOOKS}
