"""Notebooks are committed clean: no outputs or execution counts, one ``parameters`` cell of literals."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from irlib.results.sweep import notebook_parameters

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "run `make strip` before committing"
    assert notebook_parameters(path)  # one parameters cell of literal assignments (raises otherwise) ...
    (cell,) = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert all(isinstance(node, ast.AnnAssign) for node in ast.parse(cell.source).body)  # ... typed, here


def test_numbered_notebooks_exist():
    assert "03_evaluation.ipynb" in {p.name for p in NOTEBOOKS}
