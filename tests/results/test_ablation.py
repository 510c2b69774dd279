"""The ablation of composed models: the grid is notebook 02's sweep parameters; finished cells (a point record and an
evaluation record, as notebook 02 writes them) become rows, a table and re-run cells of the comparison table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from irlib.data.revisited import RevisitedDataset
from irlib.eval.extract import ExtractConfig
from irlib.eval.pipeline import evaluate_model, save_result
from irlib.io import write_json
from irlib.models import create_model
from irlib.results.ablation import OBJECTIVES, ablation_grid, ablation_results, ablation_table, objective_name
from irlib.results.published import published_results
from irlib.results.sweep import grid, notebook_values, point_name
from irlib.results.table import comparison_cells


def test_the_grid_is_pooling_x_batch_attention_x_objective_of_composed_models():
    parameters = ablation_grid(
        ["gem", "spca"], ["none", "batchformer"], ["arcface", "compose_rank"], fixed={"max_steps": 5}
    )
    points = grid(parameters)
    assert len(points) == 8 and len({point_name(p) for p in points}) == 8
    values = notebook_values(points[-1], {"model_kwargs": {"whitening": 64}, "overrides": {}})
    assert values["method"] == "compose" and values["max_steps"] == 5
    assert values["model_kwargs"] == {"whitening": 64, "pooling": "spca", "batch_attention": "batchformer"}
    assert values["losses"] == OBJECTIVES["compose_rank"] and values["overrides"] == {"sampler": "class_balanced"}
    assert objective_name(values["losses"]) == "compose_rank"
    assert objective_name([{"name": "arcface"}, {"name": "smooth_ap"}]) == "arcface+smooth_ap"
    with pytest.raises(ValueError, match="unknown or no pooling \\['netvlad'\\]"):
        ablation_grid(["netvlad"], ["none"], ["arcface"])
    with pytest.raises(ValueError, match="unknown or no objective \\['triplet'\\]"):
        ablation_grid(["gem"], ["none"], ["triplet"])


def test_finished_cells_become_rows_a_table_and_re_run_cells(tmp_path, tiny_revisited):
    dataset = RevisitedDataset.from_dir(tiny_revisited)
    cfg = ExtractConfig(image_size=64, scales=(1.0,), device="cpu")
    parameters = ablation_grid(["gem", "alpha"], ["none"], ["arcface"])
    sweep = tmp_path / "ablation"
    for i, point in enumerate(grid(parameters)):
        values = notebook_values(point, {"model_kwargs": {}})
        folder = sweep / point_name(point)
        torch.manual_seed(i)
        model = create_model("compose", backbone="resnet18", whitening=16, **values["model_kwargs"])
        save_result(evaluate_model(model, dataset, cfg, progress=False), folder / "eval_after")
        write_json(folder / "point.json", {"name": folder.name, "parameters": values, "status": "done"})
    failed = sweep / "failed-cell"
    failed.mkdir()
    write_json(failed / "point.json", {"name": "failed-cell", "parameters": {}, "status": "failed"})

    results = ablation_results(sweep)
    assert sorted(results["label"]) == ["compose[alpha/w16] · arcface", "compose[gem/w16] · arcface"]
    assert set(results["pooling"]) == {"gem", "alpha"} and set(results["batch_attention"]) == {"none"}
    assert {Path(d).name for d in results["cell_dir"]} == {p.parent.name for p in sweep.glob("*/eval_after")}
    assert results["model_kwargs"].tolist()[0]["batch_attention"] == "none"
    table = ablation_table(results)
    assert table.loc[("alpha", "none"), ("medium.map", "arcface")] == round(
        float(results.set_index("pooling").loc["alpha", "medium.map"]), 2
    )
    labels = dict(zip(results["id"], results["label"], strict=True))
    runs = results.drop(columns=["label"])
    cells = comparison_cells(runs, published_results(), datasets=("tiny",), labels=labels)
    assert set(cells["row"]) == set(labels.values()) and set(cells["provenance"]) == {"re-run"}
    with pytest.raises(FileNotFoundError, match="no finished ablation cell"):
        ablation_results(failed)
