"""``python -m irlib sweep``: a grid of papermill runs, a failing point reported, a resume that retries only the
failed point, the sweep named after the notebook by default."""

import json
from pathlib import Path

import nbformat
import papermill
import pytest

from irlib.cli import main
from irlib.results.sweep import grid, notebook_values, point_name, run_sweep


def test_grid_and_point_names():
    points = grid({"backbone": ["resnet50", "vit/b"], "lr": [0.01]})
    assert points == [{"backbone": "resnet50", "lr": 0.01}, {"backbone": "vit/b", "lr": 0.01}]
    assert [point_name(p) for p in points] == ["backbone=resnet50,lr=0.01", "backbone=vit_b,lr=0.01"]
    assert point_name({"flag": True, "ks": [1, 2]}) == "flag=true,ks=_1__2_"


@pytest.fixture
def notebook(tmp_path):
    """A notebook writing ``2 x`` into its point folder; x = 3 fails while ``tmp_path/broken`` exists."""
    broken = tmp_path / "broken"
    broken.touch()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell("x = 0\nout_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(f"import os\nassert not (x == 3 and os.path.exists({str(broken)!r})), 'x=3 fails'"),
        nbformat.v4.new_code_cell("open(os.path.join(out_dir, 'result.txt'), 'w').write(repr(x * 2))"),
    ]
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def executed(monkeypatch):
    """The ``x`` of every point papermill executes (it still executes them)."""
    calls = []
    real = papermill.execute_notebook

    def record(*args, **kwargs):
        calls.append(kwargs["parameters"]["x"])
        return real(*args, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", record)
    return calls


def test_sweep_runs_the_grid_reports_a_failure_and_resumes(notebook, tmp_path, capsys, executed):
    out = tmp_path / "runs"
    argv = ["sweep", str(notebook), "--name", "demo", "--out", str(out), "-p", "x", "1", "2", "3"]
    assert main(argv) == 1
    printed = capsys.readouterr()
    assert "x=3" in printed.err and "1 of 3 points failed" in printed.err
    assert executed == [1, 2, 3]
    root = out / "demo"
    for x in (1, 2):
        assert (root / f"x={x}" / "result.txt").read_text() == repr(x * 2)
        assert (root / f"x={x}" / "tiny.ipynb").is_file()
        assert json.loads((root / f"x={x}" / "point.json").read_text())["status"] == "done"
    assert "x=3 fails" in (root / "x=3" / "error.txt").read_text()
    assert json.loads((root / "x=3" / "point.json").read_text())["status"] == "failed"
    manifest = json.loads((root / "sweep.json").read_text())
    assert manifest["parameters"] == {"x": [1, 2, 3]} and len(manifest["points"]) == 3

    # the same grid again, the failure fixed: only the failed point runs, and now succeeds
    (tmp_path / "broken").unlink()
    executed.clear()
    assert main(argv) == 0
    assert executed == [3]
    table = capsys.readouterr().out.split("point  status")[1].split()
    assert table[1::3] == ["x=1", "x=2", "x=3"] and table[2::3] == ["skipped", "skipped", "done"]
    assert (root / "x=3" / "result.txt").read_text() == "6" and not (root / "x=3" / "error.txt").exists()
    assert json.loads((root / "x=3" / "point.json").read_text())["status"] == "done"


def test_the_sweep_is_named_after_the_notebook_by_default(notebook, tmp_path, executed):
    results = run_sweep(notebook, None, {"x": [1]}, out=tmp_path / "runs", log=lambda _: None)
    assert [r.status for r in results] == ["done"] and executed == [1]
    assert (tmp_path / "runs" / "tiny" / "x=1" / "result.txt").read_text() == "2"


def test_sweep_rejects_a_missing_notebook(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.ipynb"), "--name", "s", "--out", str(tmp_path), "-p", "x", "1"]) == 2
    assert "no notebook" in capsys.readouterr().err


def test_an_unknown_parameter_is_refused_before_anything_runs(tmp_path):
    from irlib.results.sweep import notebook_parameters

    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "03_evaluation.ipynb"
    defaults = notebook_parameters(notebook)
    assert "image_size" in defaults and "rerank_params" in defaults  # valid lines are parameters, not unknowns
    with pytest.raises(ValueError, match=r"no parameter 'imagesize' \(did you mean 'image_size'\?\)"):
        run_sweep(notebook, "typo", {"imagesize": [64]}, out=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


def test_dotted_names_vary_the_keys_of_a_dict_parameter_independently():
    defaults = {"model_kwargs": {"pooling": "gem", "whitening": 32}, "lr": 0.1}
    points = grid({"model_kwargs.pooling": ["gem", "spca"], "model_kwargs.batch_attention": ["none", "batchformer"]})
    values = [notebook_values(p, defaults) for p in points]
    assert values[1] == {"model_kwargs": {"pooling": "gem", "whitening": 32, "batch_attention": "batchformer"}}
    assert [v["model_kwargs"]["pooling"] for v in values] == ["gem", "gem", "spca", "spca"]
    assert defaults["model_kwargs"] == {"pooling": "gem", "whitening": 32}  # the defaults are not changed
    given = notebook_values({"model_kwargs": {"bn": True}, "model_kwargs.pooling_kwargs.K": 4}, defaults)
    assert given == {"model_kwargs": {"bn": True, "pooling_kwargs": {"K": 4}}}  # a given dict replaces the default
    with pytest.raises(ValueError, match=r"-p lr.x: lr is not a dict parameter"):
        notebook_values({"lr.x": 1}, defaults)


def test_a_dotted_grid_reaches_the_notebook_as_one_dict(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell("parts = {'a': 1}\nout_dir = None")
    params.metadata["tags"] = ["parameters"]
    write = "import json, os\njson.dump(parts, open(os.path.join(out_dir, 'parts.json'), 'w'))"
    nb.cells = [params, nbformat.v4.new_code_cell(write)]
    nbformat.write(nb, tmp_path / "parts.ipynb")
    results = run_sweep(tmp_path / "parts.ipynb", None, {"parts.b": [2, 3]}, out=tmp_path / "runs", log=print)
    assert [r.name for r in results] == ["parts.b=2", "parts.b=3"]
    written = [json.loads((tmp_path / "runs" / "parts" / r.name / "parts.json").read_text()) for r in results]
    assert written == [{"a": 1, "b": 2}, {"a": 1, "b": 3}]
    with pytest.raises(ValueError, match="no parameter 'part'"):
        run_sweep(tmp_path / "parts.ipynb", None, {"part.b": [2]}, out=tmp_path / "runs")


def test_long_values_and_names_keep_their_start_and_a_hash():
    losses = [{"name": "cosface", "kwargs": {"s": 30.0}}, {"name": "roadmap"}]
    name = point_name({"losses": losses, "lr": 0.1})
    assert name.startswith("losses=___name____cosf@") and name.endswith(",lr=0.1") and len(name) < 50
    assert point_name({"losses": losses[:1]}) != point_name({"losses": losses})  # the hash tells them apart
    long = point_name({f"p{i}": "x" * 20 for i in range(20)})
    assert len(long) == 200 and long != point_name({f"p{i}": "x" * 20 for i in range(21)})
