"""Expert switching from models on demo images: extraction, per-domain whitening experts, every router, the run
folder; and the class-keeping sample of the training split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from irlib.experts import DEFAULT_ROUTERS, ExpertsConfig, ExpertSpec, run_experts
from irlib.experts.run import sample_classes
from irlib.results.runs import load_runs

DEMO_DOMAINS = ("cars", "inshop", "gldv2")


def test_the_demo_run_builds_whitened_experts_routes_and_saves(small_demo, tmp_path):
    cfg = ExpertsConfig(
        uned_root=str(small_demo / "uned"),
        domains=DEMO_DOMAINS,
        image_size=64,
        timing_queries=2,
        out_dir=str(tmp_path / "run"),
    )
    report = run_experts(cfg, progress=False)
    m = report.metrics
    assert list(m["metrics"]) == ["lw-cars", "lw-inshop", "lw-gldv2", "universal", *DEFAULT_ROUTERS]
    assert m["metrics"]["oracle"]["routing"]["accuracy"] == 100
    # The three demo domains are drawn differently (cars, garments, facades): the domain classifier tells them apart.
    assert m["metrics"]["classifier"]["routing"]["accuracy"] >= 95
    experts = m["settings"]["experts"]
    assert (
        experts["universal"]["embed_ms"] > 0
        and experts["universal"]["info"]["model"]["backbone"] == "efficientnet_lite0"
    )
    whitened = {key: experts["lw-cars"][key] for key in ("domains", "dim", "parameters", "requires")}
    assert whitened == {"domains": ["cars"], "dim": 1280, "parameters": 1280 + 1280 * 1280, "requires": ["universal"]}
    assert m["settings"]["router_training_images"] == 27 and m["settings"]["resize"] == "short-side-crop"
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["settings"]["config"]["universal"] == {
        "name": "universal",
        "domains": [],
        "method": "gem",
        "backbone": "efficientnet_lite0",
        "pretrained": True,
        "weights": None,
        "model_kwargs": {},
    }
    runs = load_runs(tmp_path)
    assert (
        runs.loc[0, "backbone"] == "efficientnet_lite0"
        and runs.loc[0, "oracle.R@1"] == saved["metrics"]["oracle"]["R@1"]
    )
    with pytest.raises(FileExistsError, match="is not empty"):
        run_experts(cfg, progress=False)


def test_a_config_without_experts_or_root_is_refused():
    with pytest.raises(ValueError, match="uned_root is empty"):
        ExpertsConfig()
    with pytest.raises(ValueError, match="no experts"):
        ExpertsConfig(uned_root="data/demo/uned", whitening=None)
    assert ExpertsConfig(uned_root="x", experts=[ExpertSpec("landmarks", ("gldv2",))], whitening=None).experts


def test_the_training_sample_keeps_whole_classes_up_to_the_caps():
    domains = np.repeat(["cars", "sop"], [30, 8])
    labels = np.r_[np.repeat(np.arange(6), 5), np.repeat([10, 11], 4)]
    rows = sample_classes(domains, labels, per_domain=10, per_class=3, seed=1)
    assert np.all(np.diff(rows) > 0)
    cars = rows[domains[rows] == "cars"]
    assert len(cars) == 10
    counts = np.unique(labels[cars], return_counts=True)[1]
    assert counts.max() == 3 and (counts >= 1).all() and len(counts) == 4  # 3 + 3 + 3 + 1
    assert sorted(labels[rows[domains[rows] == "sop"]].tolist()) == [10] * 3 + [11] * 3
    np.testing.assert_array_equal(rows, sample_classes(domains, labels, per_domain=10, per_class=3, seed=1))
