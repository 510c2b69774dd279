"""End to end on generated demo data: the offline-pretrained model retrieves far better than a random one; exact,
faiss-flat and IVF-PQ search, with and without reranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from irlib.data.revisited import Distractors, RevisitedDataset
from irlib.data.synthetic import DemoConfig, make_demo_data
from irlib.eval.extract import ExtractConfig, model_fingerprint
from irlib.eval.pipeline import evaluate_model, rescore, save_result, search_database, summary_table
from irlib.eval.rerank import alpha_dba, superglobal_rerank
from irlib.eval.revisited import evaluate
from irlib.eval.search import StackedDatabase, build_index, knn, recall_at_k, search_index
from irlib.eval.shards import extract_sharded
from irlib.models import create_model
from tests.data.test_revisited import _distractor_root
from tests.eval.conftest import clustered


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> RevisitedDataset:
    config = DemoConfig(n_test_landmarks=4, views_per_landmark=10, n_distractors=10, n_train_landmarks=2)
    root = make_demo_data(tmp_path_factory.mktemp("demo"), config, progress=False)
    return RevisitedDataset.from_dir(root / "demo")


def test_pretrained_beats_random_init_by_far(demo, tmp_path):
    cfg = ExtractConfig(image_size=256, scales=(1.0,))
    model = create_model("gem", backbone="efficientnet_lite0", pretrained=True)
    pretrained = evaluate_model(model, demo, cfg)
    torch.manual_seed(0)
    random_init = evaluate_model(create_model("gem", backbone="efficientnet_lite0"), demo, cfg)
    # built-in weights have no file to checksum: the run records the state dict's fingerprint
    settings = pretrained.metrics["settings"]
    assert settings["weights_sha256"] is None and settings["state_dict_sha256"] == model_fingerprint(model)
    assert random_init.metrics["settings"]["state_dict_sha256"] != settings["state_dict_sha256"]
    save_result(pretrained, tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["state_dict_sha256"] == model_fingerprint(model)
    table = summary_table({"pretrained": pretrained.metrics, "random": random_init.metrics})
    assert table.loc["pretrained", ("medium", "mAP")] > table.loc["random", ("medium", "mAP")] + 30, table
    assert pretrained.metrics["easy"]["map"] > pretrained.metrics["hard"]["map"]  # the difficulty labels mean it
    assert pretrained.per_query.shape == (demo.n_queries, 3)
    assert pretrained.scores.shape == (demo.n_queries, demo.n_db)


def test_reranking_and_dba_plug_into_a_run_and_are_recorded(demo):
    cfg = ExtractConfig(image_size=192, scales=(1.0,))
    model = create_model("gem", backbone="efficientnet_lite0", pretrained=True)
    plain = evaluate_model(model, demo, cfg, progress=False)
    reranked = rescore(plain, demo, rerank="superglobal", rerank_params={"M": 20}, dba={"k": 2, "alpha": 3.0})
    assert reranked.metrics["settings"]["seconds"]["extract"] == plain.metrics["settings"]["seconds"]["extract"]
    settings = reranked.metrics["settings"]
    assert settings["rerank"] == {"method": "superglobal", "params": {"M": 20, "K": 9, "beta": 0.15, "stable": True}}
    assert settings["dba"] == {"k": 2, "alpha": 3.0} and plain.metrics["settings"]["rerank"] is None
    # The recorded scores are the reranked ranking: recomputing it from the descriptors gives the same APs.
    searched = alpha_dba(plain.database, k=2, alpha=3.0)
    direct = superglobal_rerank(plain.queries, searched, M=20)
    expected = evaluate(demo.gnd, ranks=direct.ranks)
    np.testing.assert_allclose(reranked.per_query["medium"].to_numpy() / 100, expected["medium"]["aps"], atol=1e-12)
    assert not np.allclose(reranked.per_query["medium"], plain.per_query["medium"])
    again = evaluate_model(model, demo, cfg, progress=False, rerank="superglobal", rerank_params={"M": 20})
    assert again.metrics["settings"]["rerank"]["params"]["M"] == 20
    np.testing.assert_array_equal(rescore(again, demo).per_query, plain.per_query)  # back to no reranking
    with pytest.raises(ValueError, match="Unknown reranker"):
        rescore(plain, demo, rerank="qe")


def test_plus_distractor_features_from_sharded_extraction(demo, tmp_path):
    cfg = ExtractConfig(image_size=192, scales=(1.0,))
    model = create_model("gem", backbone="efficientnet_lite0", pretrained=True)
    distractors = Distractors.from_list(_distractor_root(tmp_path, 12))
    extract_sharded(model, distractors.paths, tmp_path / "feats", cfg, chunk_size=5, progress=False)
    with_images = evaluate_model(model, demo.with_distractors(distractors), cfg, progress=False)
    with_features = evaluate_model(model, demo, cfg, progress=False, distractor_features=tmp_path / "feats")
    assert with_features.metrics["dataset"] == with_images.metrics["dataset"] == f"{demo.name}+r1m"
    assert with_features.metrics["settings"]["n_db"] == demo.n_db + 12
    assert with_features.metrics["settings"]["distractor_features"]["n"] == 12
    # fp16 storage of the distractors is the only difference
    np.testing.assert_allclose(with_features.scores, with_images.scores, atol=2e-3)
    np.testing.assert_allclose(with_features.per_query, with_images.per_query, atol=0.5)
    reranked = rescore(with_features, demo, rerank="superglobal", rerank_params={"M": 20})
    dense = np.concatenate([with_features.database.parts[0], np.asarray(with_features.database.parts[1], np.float32)])
    direct = evaluate(demo.gnd, ranks=superglobal_rerank(with_features.queries, dense, M=20).ranks)
    np.testing.assert_allclose(reranked.per_query["hard"].to_numpy() / 100, direct["hard"]["aps"], atol=1e-12)
    with pytest.raises(ValueError, match="other settings .image_size."):
        evaluate_model(
            model, demo, ExtractConfig(image_size=160, scales=(1.0,)), distractor_features=tmp_path / "feats"
        )
    with pytest.raises(ValueError, match="other model weights"):
        evaluate_model(
            create_model("gem", backbone="efficientnet_lite0"), demo, cfg, distractor_features=tmp_path / "feats"
        )
    with pytest.raises(ValueError, match="not run over distractor features"):
        rescore(with_features, demo, dba={"k": 2, "alpha": 3.0})


def test_faiss_flat_search_gives_the_exact_metrics_and_rerankers_compose_with_every_search(demo):
    cfg = ExtractConfig(image_size=192, scales=(1.0,))
    exact = evaluate_model(create_model("gem", backbone="efficientnet_lite0", pretrained=True), demo, cfg)
    assert exact.metrics["settings"]["search"] == {"method": "exact", "params": {}} and exact.ranks is None
    flat = rescore(exact, demo, search="faiss-flat")  # default shortlist 1000 > n_db: the whole ranking
    assert flat.metrics["settings"]["search"] == {"method": "faiss-flat", "params": {"shortlist": 1000}}
    assert flat.scores is None and flat.ranks.shape == (demo.n_queries, demo.n_db)
    np.testing.assert_array_equal(flat.ranks, np.argsort(-exact.scores, axis=1, kind="stable"))
    np.testing.assert_array_equal(flat.per_query, exact.per_query)
    assert {p: flat.metrics[p] for p in ("easy", "medium", "hard")} == {
        p: exact.metrics[p] for p in ("easy", "medium", "hard")
    }
    # a shortlist shorter than the database: the metrics of the truncated exact ranking, AP never above the full
    short = rescore(exact, demo, search="faiss-flat", search_params={"shortlist": 10})
    truncated = evaluate(demo.gnd, ranks=np.argsort(-exact.scores, axis=1, kind="stable")[:, :10].T)
    np.testing.assert_allclose(short.per_query["hard"].to_numpy() / 100, truncated["hard"]["aps"], atol=1e-12)
    assert (short.per_query.fillna(0) <= exact.per_query.fillna(0) + 1e-9).all().all()
    assert (short.per_query["medium"] < exact.per_query["medium"]).any()
    assert rescore(short, demo).metrics["settings"]["search"]["params"] == {"shortlist": 10}  # search kept
    ivf = {"nlist": 4, "m": 16, "nbits": 4, "nprobe": 4}  # all lists scanned: the whole database
    for method, params in (("superglobal", {"M": 20}), ("alpha_qe", {"k": 2, "alpha": 3.0})):
        reference = rescore(exact, demo, rerank=method, rerank_params=params)
        assert not np.array_equal(reference.per_query, exact.per_query)
        for search, search_params in (("faiss-flat", None), ("ivfpq", ivf)):
            got = rescore(exact, demo, search=search, search_params=search_params, rerank=method, rerank_params=params)
            np.testing.assert_array_equal(got.per_query, reference.per_query)
            assert got.metrics["settings"]["rerank"]["method"] == method
            assert got.metrics["settings"]["search"]["method"] == search


def test_ivfpq_over_stacked_distractors_records_its_recall_against_exact_search(tmp_path, one_faiss_thread):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 32)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    q, test_db = clustered(rng, 6, 32, centres, spread=1.0), clustered(rng, 800, 32, centres, spread=1.0)
    np.save(tmp_path / "d.npy", clustered(rng, 5000, 32, centres, spread=1.0).astype(np.float16))
    distractors = np.load(tmp_path / "d.npy", mmap_mode="r")
    params = {"shortlist": 150, "nlist": 16, "m": 8, "nbits": 6, "nprobe": 2, "train_size": 3000}
    ranking = search_database(q, StackedDatabase(test_db, distractors), search="ivfpq", search_params=params)
    assert ranking.search["params"] == params | {"seed": 0} and ranking.scores is None
    dense = np.concatenate([test_db, distractors.astype(np.float32)])
    exact = knn(q, dense, 100)[1]
    # the same seeded index built over the dense copy gives the approximate order
    index_order = search_index(
        build_index(dense, "ivfpq", **{k: v for k, v in params.items() if k != "shortlist"}), q, 150
    )[1]
    recall = ranking.search["recall@100"]
    assert recall == {
        "k": 100,
        "ranking": recall_at_k(ranking.ids, exact),
        "index_order": recall_at_k(index_order, exact),
    }
    print(f"IVF-PQ recall@100: {recall['index_order']:.3f} in index order, {recall['ranking']:.3f} re-scored")
    assert 0.3 < recall["index_order"] < recall["ranking"] < 1.0  # approximate, and re-scoring helps
    scores = np.take_along_axis(dense @ q.T, ranking.ids.T, axis=0)  # the shortlist is ranked by exact scores
    assert (np.diff(scores, axis=0) <= 1e-6).all()
    with pytest.raises(ValueError, match="fewer than shortlist=5000 ids .* raise nprobe"):
        search_database(q, dense, search="ivfpq", search_params=params | {"shortlist": 5000, "nprobe": 1})
    with pytest.raises(ValueError, match="shortlist must be at least 100"):
        search_database(q, dense, search="ivfpq", search_params=params | {"shortlist": 50})
