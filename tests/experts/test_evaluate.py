"""Expert switching evaluated end to end on separable demo-like UnED data: the acceptance numbers, the edge cases
(an expert missing, queries far from every domain, experts of different sizes) and the saved run."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from irlib.eval.universal import score_descriptors, uned_benchmark
from irlib.experts import (
    DEFAULT_ROUTERS,
    ExpertSet,
    build_routers,
    evaluate_experts,
    save_report,
    systems_table,
)
from irlib.results.runs import load_runs

SYSTEMS = ["cars-expert", "inshop-expert", "gldv2-expert", "universal", *DEFAULT_ROUTERS]


@pytest.fixture(scope="module")
def report(separable):
    experts = ExpertSet(separable.experts, fallback="universal")
    return evaluate_experts(
        separable.knn,
        experts,
        build_routers(DEFAULT_ROUTERS),
        separable.training,
        universal="universal",
        progress=False,
    )


def test_learned_routers_route_like_the_oracle_on_separable_domains(report):
    """The acceptance: classifier and gating routers >= 95% routing accuracy, within 1 point of the oracle."""
    m = report.metrics["metrics"]
    assert m["oracle"]["routing"]["accuracy"] == 100
    for system in ("classifier", "gating", "gating-soft"):
        assert m[system]["routing"]["accuracy"] >= 95, system
        for metric in ("R@1", "mMP@5"):
            assert m[system][metric] >= m["oracle"][metric] - 1, (system, metric)
    # The experts are the better models of their domains, so routing them beats the universal model.
    assert m["oracle"]["R@1"] > m["universal"]["R@1"] + 10
    for d in ("cars", "inshop", "gldv2"):
        assert m[f"{d}-expert"]["per_domain"][d]["R@1"] > m["universal"]["per_domain"][d]["R@1"]


def test_every_number_is_the_official_scorers_on_what_was_searched(separable, report):
    """A single expert's numbers are UnED's scores of its descriptors; the oracle's per domain are its expert's."""
    bench = uned_benchmark(separable.knn)
    m = report.metrics["metrics"]
    for e in separable.experts:
        official = score_descriptors(bench, e.queries, e.database).metrics["metrics"]
        assert {k: m[e.name][k] for k in ("R@1", "mMP@5", "mAP@5", "per_domain")} == {
            k: official[k] for k in ("R@1", "mMP@5", "mAP@5", "per_domain")
        }
    for d in ("cars", "inshop", "gldv2"):
        assert m["oracle"]["per_domain"][d] == m[f"{d}-expert"]["per_domain"][d]
    rows = report.per_query.loc["classifier"]
    assert set(rows["expert"]) <= {"cars-expert", "inshop-expert", "gldv2-expert"}
    assert (rows["expert"] == rows["target"]).mean() * 100 == m["classifier"]["routing"]["accuracy"]
    assert set(report.per_query.loc["gating-soft", "expert"]) == {"mixture"}


def test_costs_add_up_from_the_experts_and_routers(separable, report):
    m = report.metrics["metrics"]
    experts = {e.name: e for e in separable.experts}
    assert m["universal"]["cost"]["parameters_added"] == 0
    assert m["cars-expert"]["cost"]["index_bytes"] == len(separable.knn.index_labels) * 48 * 4
    every_index = sum(e.database.size * 4 for e in separable.experts)
    oracle, gating = m["oracle"]["cost"], m["gating"]["cost"]
    assert oracle["index_bytes"] == gating["index_bytes"] == every_index
    assert oracle["parameters"] == sum(e.parameters for e in experts.values())
    assert gating["parameters"] == oracle["parameters"] + 64 * 3 + 3  # the linear gate
    assert gating["parameters_added"] == gating["parameters"] - experts["universal"].parameters
    # Each expert embeds in 1 ms here: the oracle runs one, the gate the shared embedding and one, the soft mixture
    # and the confidence router the shared embedding (soft) and all three.
    assert oracle["ms_per_query"]["embed"] == 1
    assert gating["ms_per_query"]["embed"] == 2
    assert m["gating-soft"]["cost"]["ms_per_query"]["embed"] == 4
    assert m["confidence"]["cost"]["ms_per_query"]["embed"] == 3
    for system in SYSTEMS:
        times = m[system]["cost"]["ms_per_query"]
        assert times["total"] == pytest.approx(times["embed"] + times["route"] + times["search"])


def test_a_domain_without_expert_goes_to_the_fallback_or_is_an_error(separable):
    partial = [e for e in separable.experts if e.name != "gldv2-expert"]
    routers = build_routers({"oracle": {}, "classifier": {}})
    report = evaluate_experts(
        separable.knn,
        ExpertSet(partial, fallback="universal"),
        routers,
        separable.training,
        universal="universal",
        progress=False,
    )
    m = report.metrics["metrics"]
    assert m["oracle"]["per_domain"]["gldv2"] == m["universal"]["per_domain"]["gldv2"]
    assert m["classifier"]["routing"]["accuracy"] >= 95
    assert (report.per_query.loc["oracle"].query("domain == 'gldv2'")["expert"] == "universal").all()
    with pytest.raises(ValueError, match="domain 'gldv2' has no expert"):
        evaluate_experts(
            separable.knn, ExpertSet(partial), build_routers({"oracle": {}}), universal="universal", progress=False
        )


def test_queries_far_from_every_domain_are_served_by_the_fallback(separable):
    """Four inshop queries (not in the index) are replaced, in every embedding, by descriptors pointing away from
    every domain: every router but the oracle sends them to the universal model, with at most 1% of the others (those
    less typical of their domain than every training image)."""
    inshop = np.flatnonzero(separable.knn.query_domains == "inshop")[:4]
    rng = np.random.default_rng(5)
    experts = []
    for e in separable.experts:
        queries = e.queries.copy()
        means = np.stack([e.train[separable.training.domains == d].mean(0) for d in ("cars", "inshop", "gldv2")])
        stray = rng.standard_normal((4, e.dim))
        stray -= stray @ np.linalg.pinv(means) @ means  # orthogonal to every domain mean
        queries[inshop] = stray / np.linalg.norm(stray, axis=1, keepdims=True)
        experts.append(replace(e, queries=queries))
    report = evaluate_experts(
        separable.knn,
        ExpertSet(experts, fallback="universal"),
        build_routers({"oracle": {}, "classifier": {}, "gating": {}, "confidence": {}}),
        separable.training,
        universal="universal",
        far_quantile=0.0,
        progress=False,
    )
    for system in ("classifier", "gating", "confidence"):
        rows = report.per_query.loc[system]
        fallback = rows["fallback"].to_numpy()
        assert fallback[inshop].all() and fallback.sum() <= 4 + 0.01 * len(rows), system
        assert (rows["expert"][fallback] == "universal").all()
        assert rows["support"].iloc[inshop].max() < rows["support"].drop(rows.index[inshop]).min()
        assert report.metrics["metrics"][system]["routing"]["fallback_rate"] == round(fallback.mean() * 100, 4)
    assert not report.per_query.loc["oracle", "fallback"].any()
    assert report.metrics["settings"]["far_threshold"] > 0


def test_the_run_is_saved_and_read_back(report, tmp_path):
    save_report(report, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(saved["metrics"]) == SYSTEMS
    per_query = pd.read_csv(tmp_path / "run" / "per_query.csv", index_col=["system", "query"])
    assert len(per_query) == len(SYSTEMS) * 240
    runs = load_runs(tmp_path)
    assert runs.loc[0, "kind"] == "eval" and runs.loc[0, "dataset"] == "uned" and runs.loc[0, "method"] == "experts"
    assert runs.loc[0, "gating.R@1"] == saved["metrics"]["gating"]["R@1"]
    table = systems_table(saved)
    assert list(table.index) == SYSTEMS
    assert table.loc["classifier", "routing accuracy"] == saved["metrics"]["classifier"]["routing"]["accuracy"]
    assert np.isnan(table.loc["universal", "routing accuracy"])
    assert {"cars R@1", "gldv2 mMP@5", "params added (M)", "index (MiB)", "ms/query"} <= set(table.columns)
    pd.testing.assert_frame_equal(table, report.table())


def test_inconsistent_inputs_are_refused(separable):
    experts = ExpertSet(separable.experts, fallback="universal")
    with pytest.raises(ValueError, match="no expert named 'global'"):
        evaluate_experts(separable.knn, experts, {}, universal="global", progress=False)
    with pytest.raises(ValueError, match="named like experts"):
        evaluate_experts(
            separable.knn, experts, build_routers({"universal": {"router": "oracle"}}), universal="universal"
        )
    short = ExpertSet([replace(e, queries=e.queries[:10]) for e in separable.experts])
    with pytest.raises(ValueError, match="describes 10 queries"):
        evaluate_experts(separable.knn, short, {}, universal="universal", progress=False)
    with pytest.raises(ValueError, match="far-from-every-domain test needs router training data"):
        evaluate_experts(separable.knn, experts, {}, universal="universal", far_quantile=0.1, progress=False)
