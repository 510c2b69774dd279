"""End to end on generated demo data: the offline-pretrained model retrieves far better than a random one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irlib.data.revisited import Distractors, RevisitedDataset
from irlib.data.synthetic import DemoConfig, make_demo_data
from irlib.eval.extract import ExtractConfig
from irlib.eval.pipeline import evaluate_model, rescore, summary_table
from irlib.eval.rerank import alpha_dba, superglobal_rerank
from irlib.eval.revisited import evaluate
from irlib.eval.shards import extract_sharded
from irlib.models import create_model
from tests.data.test_revisited import _distractor_root


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> RevisitedDataset:
    config = DemoConfig(n_test_landmarks=4, views_per_landmark=10, n_distractors=10, n_train_landmarks=2)
    root = make_demo_data(tmp_path_factory.mktemp("demo"), config, progress=False)
    return RevisitedDataset.from_dir(root / "demo")


def test_pretrained_beats_random_init_by_far(demo):
    cfg = ExtractConfig(image_size=256, scales=(1.0,))
    pretrained = evaluate_model(create_model("gem", backbone="efficientnet_lite0", pretrained=True), demo, cfg)
    torch.manual_seed(0)
    random_init = evaluate_model(create_model("gem", backbone="efficientnet_lite0"), demo, cfg)
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
    with pytest.raises(ValueError, match="unknown reranker"):
        rescore(plain, demo, rerank="qe")


def test_plus_distractor_features_from_sharded_extraction(demo, tmp_path):
    cfg = ExtractConfig(image_size=192, scales=(1.0,))
    model = create_model("gem", backbone="efficientnet_lite0", pretrained=True)
    distractors = Distractors.from_list(_distractor_root(tmp_path, 12))
    extract_sharded(model, distractors.paths, tmp_path / "feats", cfg, chunk_size=5, progress=False)
    with_images = evaluate_model(model, demo.with_distractors(distractors), cfg, progress=False)
    with_features = evaluate_model(model, demo, cfg, progress=False, distractor_features=tmp_path / "feats")
    assert with_features.metrics["dataset"] == with_images.metrics["dataset"] == f"{demo.name}+1m"
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
