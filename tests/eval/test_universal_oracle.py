"""UnED R@1 / mMP@5 / mAP@5 (merged and separate protocols) and the ILIAS report against the outputs of the unmodified
official code on synthetic inputs (``../shared/data/oracle/universal/README.md``: layout, semantics, tolerances)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from irlib.data.uned import DOMAINS
from irlib.eval.metrics import (
    ILIAS_CLUTTER_GROUPS,
    ILIAS_SCALE_GROUPS,
    UnedPerQuery,
    ilias_report,
    top_k_ids,
    uned_merged_metrics,
    uned_per_query,
    uned_separate_metrics,
)
from irlib.io import load_data_pickle

ORACLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "oracle" / "universal"
TOL = 1e-9
NAMES = {"r1": "R@1", "mmp5": "mMP@5", "map5": "mAP@5"}


def _cases(name: str) -> list[dict[str, Any]]:
    path = ORACLE / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the official-code oracle lives in ../shared/data/oracle/universal)")
    return load_data_pickle(path, what="an oracle case file")["cases"]


def _uned_cases() -> list[dict[str, Any]]:
    return _cases("uned_knn_cases.pkl")


def _ilias_cases() -> list[dict[str, Any]]:
    return _cases("ilias_map_cases.pkl")


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` in float64 where identical rows give bit-identical scores (exact ties stay ties)."""
    ua, ia = np.unique(a, axis=0, return_inverse=True)
    ub, ib = np.unique(b, axis=0, return_inverse=True)
    return (ua.astype(np.float64) @ ub.astype(np.float64).T)[ia.ravel()][:, ib.ravel()]


class Merged:
    """A case laid out as irlib's evaluation lays it out: domains in :data:`DOMAINS` order, labels shifted by the
    summed class-id ranges of the domains before (``irlib.data.uned.uned_knn``), whatever order the official run
    used (the README: results are order invariant)."""

    def __init__(self, case: dict[str, Any]) -> None:
        self.domains = [d for d in DOMAINS if d in case["domains"]]
        data = [case["data"][d] for d in self.domains]
        widths = [max(x["query_labels"].max(), x["index_labels"].max()) + 1 for x in data]
        offsets = np.cumsum([0] + widths[:-1])
        self.query_labels = np.concatenate([x["query_labels"] + o for x, o in zip(data, offsets, strict=True)])
        self.index_labels = np.concatenate([x["index_labels"] + o for x, o in zip(data, offsets, strict=True)])
        self.query_domains = np.repeat(self.domains, [len(x["query_labels"]) for x in data])
        self.index_domains = np.repeat(self.domains, [len(x["index_labels"]) for x in data])
        self.index_start = dict(
            zip(self.domains, np.cumsum([0] + [len(x["index_labels"]) for x in data]), strict=False)
        )
        self.throw = {d: bool(x["throw_1st"]) for d, x in zip(self.domains, data, strict=True)}
        self.data = dict(zip(self.domains, data, strict=True))
        self.scores = _dot(
            np.concatenate([x["query_desc"] for x in data]), np.concatenate([x["index_desc"] for x in data])
        )

    def args(self, scores_or_ranks: np.ndarray) -> tuple[Any, ...]:
        labels = (self.query_labels, self.query_domains, self.index_labels, self.index_domains, self.throw)
        return (scores_or_ranks, *labels)

    def separate_ranks(self) -> np.ndarray:
        """Top-(k + throw) ranks of per-domain searches, shifted to merged index ids (rows padded with other ids)."""
        rows = []
        for d, x in self.data.items():
            local = top_k_ids(_dot(x["query_desc"], x["index_desc"]), 5 + self.throw[d]) + self.index_start[d]
            rows.append(np.pad(local, ((0, 0), (0, 6 - local.shape[1])), constant_values=self.index_start[d]))
        return np.concatenate(rows)


def _check_per_query(out: UnedPerQuery, merged: Merged, expected: dict[str, Any]) -> None:
    for d in merged.domains:
        rows = merged.query_domains == d
        exp = expected["per_query"][d]
        np.testing.assert_array_equal(out.r1[rows], exp["r1"].astype(bool), err_msg=d)
        np.testing.assert_array_equal(out.relevances[rows], exp["relevances"].astype(bool), err_msg=d)
        np.testing.assert_array_equal(out.n_rel[rows], exp["n_rel"], err_msg=d)
        np.testing.assert_allclose(out.mp[rows], exp["mp5"], rtol=0, atol=TOL, err_msg=d)
        np.testing.assert_allclose(out.ap[rows], exp["ap5"], rtol=0, atol=TOL, err_msg=d)


def _check_summary(full: dict[str, float], rounded: dict[str, float], expected: dict[str, Any]) -> None:
    for short, name in NAMES.items():
        for d, values in expected["per_domain_unrounded"].items():
            assert full[f"{d}/{name}"] == pytest.approx(values[short], abs=TOL), (d, name)
            assert np.round(full[f"{d}/{name}"], 3) == expected["per_domain"][d][short], (d, name)
            assert rounded[f"{d}/{name}"] == expected["per_domain"][d][short], (d, name)
        assert full[name] == pytest.approx(expected["average_unrounded"][short], abs=TOL), name
        assert rounded[name] == expected["average"][short], name


@pytest.mark.parametrize("protocol", ["merged", "separate"])
def test_uned_cases_from_scores(protocol: str) -> None:
    metrics = uned_merged_metrics if protocol == "merged" else uned_separate_metrics
    for case in _uned_cases():
        merged = Merged(case)
        expected = case["expected"][protocol]
        out = uned_per_query(*merged.args(merged.scores), protocol=protocol)
        _check_per_query(out, merged, expected)
        _check_summary(metrics(*merged.args(merged.scores)), metrics(*merged.args(merged.scores), decimals=3), expected)


def test_uned_cases_from_top_k_ranks() -> None:
    """Ranks of a top-(k + 1) search over the merged index (merged protocol) and per-domain searches (separate)."""
    for case in _uned_cases():
        merged = Merged(case)
        ranks = top_k_ids(merged.scores, 6)
        _check_per_query(uned_per_query(*merged.args(ranks), ranks=True), merged, case["expected"]["merged"])
        full, rounded = (uned_merged_metrics(*merged.args(ranks), ranks=True, decimals=r) for r in (None, 3))
        _check_summary(full, rounded, case["expected"]["merged"])
        separate = merged.separate_ranks()
        out = uned_per_query(*merged.args(separate), ranks=True, protocol="separate")
        _check_per_query(out, merged, case["expected"]["separate"])
        full, rounded = (uned_separate_metrics(*merged.args(separate), ranks=True, decimals=r) for r in (None, 3))
        _check_summary(full, rounded, case["expected"]["separate"])
        # Deep ranks over the merged index work for the separate protocol too (other domains' ids are skipped).
        deep = uned_per_query(*merged.args(np.argsort(-merged.scores, axis=1, kind="stable")), ranks=True,
                              protocol="separate")  # fmt: skip
        _check_per_query(deep, merged, case["expected"]["separate"])


def test_uned_separate_ranks_too_shallow_are_refused() -> None:
    merged = Merged(_uned_cases()[0])
    with pytest.raises(ValueError, match=r"ranks of query 0 hold \d+ ids of its domain 'cars'; the separate protocol"):
        uned_per_query(*merged.args(top_k_ids(merged.scores, 6)), ranks=True, protocol="separate")


def _ilias_positive_ids(case: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in case["positive_info"]:
        out.setdefault(p.split("/")[0], []).append(p)
    return out


def _check_ilias(report: Any, expected: dict[str, Any]) -> None:
    np.testing.assert_allclose(report.aps, expected["aps"], rtol=0, atol=TOL)
    assert report.map == pytest.approx(expected["map"], abs=TOL)
    assert report.map == pytest.approx(expected["map_report_false"], abs=TOL)
    assert report.oracle == pytest.approx(expected["oracle"], abs=TOL)
    for field in ("scale", "clutter", "categories", "subcategories"):
        assert getattr(report, field) == pytest.approx(expected[field], abs=TOL), field
    for ours, theirs in ((report.scale_aps, "per_query_scale_ap"), (report.clutter_aps, "per_query_clutter_ap")):
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected[theirs]))
        np.testing.assert_allclose(ours, expected[theirs], rtol=0, atol=TOL)


def test_ilias_cases_dense_and_top_k_lists() -> None:
    rng = np.random.default_rng(0)
    for case in _ilias_cases():
        # The case's ground truth is the positives of positive_info grouped by instance, as ilias_report reads it.
        assert {i: sorted(p) for i, p in _ilias_positive_ids(case).items()} == {
            i: sorted(p) for i, p in case["positives"].items()
        }
        args = (case["query_ids"], case["db_ids"], case["positive_info"], case["taxonomy"])
        _check_ilias(ilias_report(case["scores"], *args, k=case["k"]), case["expected"])
        # Top-m lists, m = k + the largest |gt| (what the groups need), shuffled within each row.
        m = min(len(case["db_ids"]), case["k"] + int(case["n_gt"].max()))
        ids = np.array([rng.permutation(row) for row in top_k_ids(case["scores"], m)])
        sims = np.take_along_axis(case["scores"], ids, axis=1)
        _check_ilias(ilias_report(sims, *args, k=case["k"], ids=ids), case["expected"])


def test_ilias_group_keys_are_the_official_ones() -> None:
    keys = {f"{a}-{b}" for a, b in ILIAS_SCALE_GROUPS} | {f"{a}-{b}" for a, b in ILIAS_CLUTTER_GROUPS}
    assert {"0-0.06880213760855043", "0.2729876723163842-inf", "0-18", "53-inf"} <= keys
    for case in _ilias_cases():
        assert set(case["expected"]["scale"]) | set(case["expected"]["clutter"]) <= keys
