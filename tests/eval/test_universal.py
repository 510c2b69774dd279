"""Universal benchmarks evaluated end to end: official input formats in, the official code's numbers out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from irlib.data.uned import uned_knn
from irlib.eval.universal import read_uned_descriptors, score_descriptors, uned_benchmark, write_uned_descriptors
from irlib.io import load_data_pickle

ORACLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "oracle" / "universal"


def _uned_cases() -> list[dict]:
    if not (ORACLE / "uned_knn_cases.pkl").is_file():
        pytest.skip(f"official UnED outputs not found in {ORACLE} (the team's ../shared reference data)")
    return load_data_pickle(ORACLE / "uned_knn_cases.pkl")["cases"]


def _write_official_inputs(case: dict, root: Path) -> Path:
    """The case as the official code received it: info files ``<d>/<split>.json`` and the descriptor JSON."""
    descriptors: dict[str, dict[str, list]] = {}
    for d in case["domains"]:
        data = case["data"][d]
        folder = root / "info_files" / d
        folder.mkdir(parents=True)
        sides = [(data["index_split"], data["index_labels"], data["index_desc"])]
        if not data["throw_1st"]:
            sides.append((data["query_split"], data["query_labels"], data["query_desc"]))
        descriptors[d] = {}
        for split, labels, desc in sides:
            entries = [{"path": f"{d}/{split}/{i}.jpg", "class_id": int(c)} for i, c in enumerate(labels)]
            (folder / f"{split}.json").write_text(json.dumps(entries))
            descriptors[d][split] = desc.tolist()
    (root / "descriptors.json").write_text(json.dumps(descriptors))
    return root / "descriptors.json"


@pytest.mark.parametrize("protocol", ["merged", "separate"])
def test_uned_from_info_files_and_descriptor_json_equals_the_official_script(tmp_path, protocol):
    for case in _uned_cases():
        root = tmp_path / case["name"]
        descriptors = _write_official_inputs(case, root)
        knn = uned_knn(root, domains=case["domains"])
        queries, database = read_uned_descriptors(knn, descriptors)
        result = score_descriptors(uned_benchmark(knn, protocol=protocol), queries, database)
        expected = case["expected"][protocol]
        got = result.metrics["metrics"]
        names = {"r1": "R@1", "mmp5": "mMP@5", "map5": "mAP@5"}
        for d in case["domains"]:
            for theirs, ours in names.items():
                want = expected["per_domain_unrounded"][d][theirs] * 100
                assert got["per_domain"][d][ours] == pytest.approx(want, abs=1e-4), (case["name"], d, ours)
                assert got["official_rounded"][f"{d}/{ours}"] == expected["per_domain"][d][theirs]
        for theirs, ours in names.items():
            assert got[ours] == pytest.approx(expected["average_unrounded"][theirs] * 100, abs=1e-4), case["name"]
            assert got["official_rounded"][ours] == expected["average"][theirs]
        rows = result.per_query
        for d in case["domains"]:
            want = expected["per_query"][d]
            mine = rows[rows["domain"] == d]
            np.testing.assert_array_equal(mine["R@1"].to_numpy() / 100, want["r1"])
            np.testing.assert_allclose(mine["MP@5"].to_numpy() / 100, want["mp5"], atol=1e-9)
            np.testing.assert_allclose(mine["AP@5"].to_numpy() / 100, want["ap5"], atol=1e-9)
            np.testing.assert_array_equal(mine["n_relevant"].to_numpy(), want["n_rel"])


def test_uned_descriptor_json_round_trips_in_info_file_order(tmp_path):
    case = _uned_cases()[0]
    descriptors = _write_official_inputs(case, tmp_path)
    knn = uned_knn(tmp_path, domains=case["domains"])
    queries, database = read_uned_descriptors(knn, descriptors)
    write_uned_descriptors(knn, queries, database, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(descriptors.read_text())
    broken = json.loads(descriptors.read_text())
    broken[case["domains"][0]].popitem()
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=rf"broken\.json has no descriptors for {case['domains'][0]}/"):
        read_uned_descriptors(knn, tmp_path / "broken.json")


def test_gldv2_retrieval_scores_the_ranking_as_the_kaggle_metric_per_split(tmp_path):
    from irlib.data.gldv2 import gldv2_retrieval
    from irlib.eval.metrics import gldv2_map_at_k
    from irlib.eval.universal import gldv2_benchmark
    from tests.data.test_gldv2_retrieval import I1, I2, I3, I4, SOLUTION_CSV, T1, T2, T3, T4, T5

    (tmp_path / "index.csv").write_text(f"id\n{I1}\n{I2}\n{I3}\n{I4}\n")
    (tmp_path / "test.csv").write_text(f"id\n{T1}\n{T2}\n{T3}\n{T4}\n{T5}\n")
    (tmp_path / "retrieval_solution_v2.1.csv").write_text(SOLUTION_CSV)
    ds = gldv2_retrieval(tmp_path)
    bench = gldv2_benchmark(ds)
    assert bench.query_names == [T1, T3] and bench.depth == 100  # Ignored rows are never queries
    database = np.eye(4, dtype=np.float32)
    queries = np.array([[0.1, 0.5, 0.9, 0.0], [0.0, 0.0, 1.0, 0.2]], dtype=np.float32)  # T1: I3 I2 ...; T3: I3 I4
    result = score_descriptors(bench, queries, database)
    ranked = {q: [ds.index_ids[i] for i in row] for q, row in zip(bench.query_names, result.ranks, strict=True)}
    assert ranked[T1][:2] == [I3, I2] and ranked[T3][:2] == [I3, I4]
    public = gldv2_map_at_k({T1: ranked[T1]}, {T1: ds.solution[T1]}) * 100
    assert result.metrics["metrics"] == {"private mAP@100": 100.0, "public mAP@100": pytest.approx(public, abs=1e-4)}
    assert result.per_query.loc[T3, "usage"] == "Private" and result.per_query.loc[T1, "AP@100"] == pytest.approx(
        public
    )
    assert {T2, T4, T5}.isdisjoint(result.per_query.index)


def test_ilias_benchmark_ranks_and_reports_like_the_official_code():
    """The ILIAS path (database order, exact top-k of depth k + max |gt|, the report) on the official outputs: each
    case's score matrix is reproduced exactly as inner products (query rows of scores, database = identity)."""
    from irlib.data.ilias import IliasDataset, IliasIdFiles, IliasImage
    from irlib.data.images import TarMember
    from irlib.eval.universal import ilias_benchmark

    if not (ORACLE / "ilias_map_cases.pkl").is_file():
        pytest.skip(f"official ILIAS outputs not found in {ORACLE} (the team's ../shared reference data)")
    cases = [c for c in load_data_pickle(ORACLE / "ilias_map_cases.pkl")["cases"] if "/text" not in str(c["query_ids"])]
    assert len(cases) == 4  # the cases without text queries (irlib scores image queries)
    for case in cases:
        positive_ids = [p for ids in case["positives"].values() for p in ids]
        distractors = [d for d in case["db_ids"] if d not in set(positive_ids)]
        ds = IliasDataset(
            root=Path("ilias_core"),
            instances=tuple(case["positives"]),
            image_queries=tuple(IliasImage(q, q.split("/")[0], np.zeros((0, 4))) for q in case["query_ids"]),
            text_queries=(),
            positives=tuple(IliasImage(p, p.split("/")[0], np.zeros((0, 4))) for p in positive_ids),
            distractor_ids=tuple(distractors),
            id_files=IliasIdFiles((), (), dict(case["positive_info"])),
            distractors=tuple(TarMember(Path("unused.tar"), d, 0, 0) for d in distractors),  # never read here
        )
        column = {d: j for j, d in enumerate(case["db_ids"])}
        scores = case["scores"][:, [column[d] for d in ds.database_ids()]].astype(np.float32)
        bench = ilias_benchmark(ds, k=case["k"], taxonomy=case["taxonomy"])
        result = score_descriptors(bench, scores, np.eye(len(column), dtype=np.float32))
        expected, got, rows = case["expected"], result.metrics["metrics"], result.per_query
        k = case["k"]
        np.testing.assert_allclose(rows[f"AP@{k}"].to_numpy(), expected["aps"], atol=1e-9, err_msg=case["name"])
        assert got[f"mAP@{k}"] == pytest.approx(expected["map"], abs=1e-4)
        assert got["oracle"] == pytest.approx(expected["oracle"], abs=1e-4)
        for group in ("scale", "clutter", "categories", "subcategories"):
            assert got[group].keys() == expected[group].keys(), (case["name"], group)
            for key, value in expected[group].items():
                assert got[group][key] == pytest.approx(value, abs=1e-4), (case["name"], group, key)
        for group in ("scale", "clutter"):
            mine = rows[[c for c in rows.columns if c.startswith(f"{group} ")]].to_numpy()
            want = expected[f"per_query_{group}_ap"]
            np.testing.assert_array_equal(np.isnan(mine), np.isnan(want))
            np.testing.assert_allclose(mine[~np.isnan(mine)], want[~np.isnan(want)], atol=1e-9)
