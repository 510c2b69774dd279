"""``python -m irlib sweep``: a grid of papermill runs, a failing point reported, a resume that runs nothing."""

import json

import nbformat
import pytest

from irlib.cli import main
from irlib.results.sweep import grid, point_name


def test_grid_and_point_names():
    points = grid({"backbone": ["resnet50", "vit/b"], "lr": [0.01]})
    assert points == [{"backbone": "resnet50", "lr": 0.01}, {"backbone": "vit/b", "lr": 0.01}]
    assert [point_name(p) for p in points] == ["backbone=resnet50,lr=0.01", "backbone=vit_b,lr=0.01"]
    assert point_name({"flag": True, "ks": [1, 2]}) == "flag=true,ks=_1__2_"


@pytest.fixture
def notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell("x = 0\nout_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell("import os\nassert x != 3, 'x=3 is the failing point'"),
        nbformat.v4.new_code_cell("open(os.path.join(out_dir, 'result.txt'), 'w').write(repr(x * 2))"),
    ]
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_sweep_runs_the_grid_reports_a_failure_and_resumes(notebook, tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    argv = ["sweep", str(notebook), "--name", "demo", "--out", str(out)]
    assert main([*argv, "-p", "x", "1", "2", "3"]) == 1
    printed = capsys.readouterr()
    assert "x=3" in printed.err and "1 of 3 points failed" in printed.err
    root = out / "demo"
    for x in (1, 2):
        assert (root / f"x={x}" / "result.txt").read_text() == repr(x * 2)
        assert (root / f"x={x}" / "tiny.ipynb").is_file()
        assert json.loads((root / f"x={x}" / "point.json").read_text())["status"] == "done"
    assert "failing point" in (root / "x=3" / "error.txt").read_text()
    assert json.loads((root / "x=3" / "point.json").read_text())["status"] == "failed"
    manifest = json.loads((root / "sweep.json").read_text())
    assert manifest["parameters"] == {"x": [1, 2, 3]} and len(manifest["points"]) == 3

    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("a done point was executed again")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)
    assert main([*argv, "-p", "x", "1", "2"]) == 0
    table = capsys.readouterr().out.split("point  status")[1]
    assert table.split() == ["seconds", "x=1", "skipped", "0.0", "x=2", "skipped", "0.0"]


def test_sweep_rejects_a_missing_notebook(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.ipynb"), "--name", "s", "--out", str(tmp_path), "-p", "x", "1"]) == 2
    assert "no notebook" in capsys.readouterr().err
