"""Learned (AMES) reranking: reorders only each query's top M with λ·global + (1 − λ)·sigmoid(γ·logit), keeps the
tail, reads the local descriptors the pipeline provides, records what it used; bad inputs say what is wrong."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from irlib.data.revisited import RevisitedDataset
from irlib.eval.extract import ExtractConfig, FeatureCache, model_fingerprint
from irlib.eval.local_features import DatasetLocals, cached_positions, iter_positions, select_codes
from irlib.eval.pipeline import evaluate_model, search_database
from irlib.eval.rerank import RERANKERS, initial_ranks, learned_rerank, rerank_scores, reranker_params
from irlib.eval.rerank_comparison import compare_rerankers
from irlib.io import sha256_file
from irlib.models import create_model
from irlib.models.ames import AMES, AMESConfig, BinaryLocals, pack_codes, save_reranker
from tests.eval.conftest import clustered

CONFIG = AMESConfig(in_dim=128, model_dim=32, heads=2, layers=2, ffn=32, detector_hidden=8, n_query=6, n_db=4)


class ArrayLocals:
    """A :class:`irlib.eval.rerank.LocalDescriptors` over fixed arrays."""

    def __init__(self, queries: BinaryLocals, database: BinaryLocals) -> None:
        self._queries, self._database = queries, database

    def queries(self) -> BinaryLocals:
        return self._queries

    def database(self, ids: np.ndarray) -> BinaryLocals:
        return self._database.take(ids)

    def record(self) -> dict:
        return {"bytes_per_db_image": self._database.bytes_per_image}


def random_locals(n: int, width: int, seed: int, source: str) -> BinaryLocals:
    g = torch.Generator().manual_seed(seed)
    codes = torch.where(torch.rand(n, width, 128, generator=g) > 0.5, 1.0, -1.0)
    counts = torch.randint(1, width + 1, (n,), generator=g)
    return dataclasses.replace(pack_codes(codes, counts), source=source)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A reranker file (random weights, λ = 0.3, γ = 0.5 stored), descriptors and local descriptors of 5 queries and
    40 database images."""
    torch.manual_seed(0)
    model = AMES(CONFIG).eval()
    with torch.no_grad():
        for p in model.matcher.parameters():
            p.add_(0.5 * torch.randn_like(p))  # logits that vary from pair to pair
    path = tmp_path_factory.mktemp("reranker") / "reranker.pt"
    save_reranker(model, path, {"lam": 0.3, "gamma": 0.5})
    sha = sha256_file(path)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)).astype(np.float32)
    Q, X = clustered(rng, 5, 16, centres), clustered(rng, 40, 16, centres)
    return path, model, Q, X, random_locals(5, 6, 1, sha), random_locals(40, 4, 2, sha)


def test_learned_reranking_reorders_only_the_top_m_by_the_ames_score(setup):
    path, model, Q, X, ql, xl = setup
    r0 = initial_ranks(Q, X)
    out = learned_rerank(Q, X, reranker=str(path), M=12, ranks=r0, query_locals=ql, database_locals=xl)
    assert out.ranks.shape == r0.shape and out.scores.shape == (5, 12)
    np.testing.assert_array_equal(out.ranks[12:], r0[12:])  # the tail is kept
    np.testing.assert_array_equal(np.sort(out.ranks[:12], 0), np.sort(r0[:12], 0))
    assert (out.ranks[:12] != r0[:12]).any()  # and the head did move
    assert out.details["lam"] == np.float32(0.3) and out.details["gamma"] == np.float32(0.5)  # from the file
    # The logit of a pair is the reranker's on the two images' codes; the score is λ·q·x + (1 − λ)·sigmoid(γ·logit)
    q, j = 2, r0[7, 2]
    with torch.no_grad():
        codes_q, pad_q = ql.take(np.array([q])).tensors()
        codes_x, pad_x = xl.take(np.array([j])).tensors()
        logit = model(codes_q, pad_q, codes_x, pad_x).item()
    assert out.details["logits"][q, 7] == pytest.approx(logit, abs=1e-5)
    expected = 0.3 * float(Q[q] @ X[j]) + 0.7 / (1 + np.exp(-0.5 * logit))
    assert out.scores[q, list(out.ranks[:12, q]).index(j)] == pytest.approx(expected, abs=1e-6)
    assert (np.diff(out.scores, axis=1) <= 0).all()
    # λ = 1 keeps the descriptor order
    same = learned_rerank(Q, X, reranker=str(path), M=12, lam=1.0, gamma=1.0, query_locals=ql, database_locals=xl)
    np.testing.assert_array_equal(same.ranks, r0)


def test_registered_with_file_defaults_and_clear_errors(setup, tmp_path):
    path, _, Q, X, ql, xl = setup
    assert RERANKERS.get("learned") is learned_rerank
    assert reranker_params("learned", {"reranker": str(path)}) == {
        "reranker": str(path),
        "M": 100,
        "lam": 0.3,
        "gamma": 0.5,
    }
    with pytest.raises(ValueError, match="learned needs parameter"):
        reranker_params("learned", {})
    (tmp_path / "bad.pt").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"bad\.pt is not a readable AMES reranker file"):
        reranker_params("learned", {"reranker": str(tmp_path / "bad.pt")})
    with pytest.raises(ValueError, match="needs database_locals"):
        learned_rerank(Q, X, reranker=str(path), query_locals=ql)
    with pytest.raises(ValueError, match="made by another reranker"):
        learned_rerank(Q, X, reranker=str(path), query_locals=ql, database_locals=dataclasses.replace(xl, source="x"))
    with pytest.raises(ValueError, match="lam must be finite and in"):
        learned_rerank(Q, X, reranker=str(path), lam=1.5, query_locals=ql, database_locals=xl)


def test_score_matrices_and_shortlist_searches_read_the_provided_locals(setup):
    path, _, Q, X, ql, xl = setup
    provider = ArrayLocals(ql, xl)
    params = {"reranker": str(path), "M": 10}
    scores = X @ Q.T
    with pytest.raises(ValueError, match="pass local_descriptors"):
        rerank_scores("learned", scores.T, Q, X, params)
    reranked = rerank_scores("learned", scores.T, Q, X, params, provider)
    order = np.argsort(-reranked, axis=1, kind="stable")
    direct = learned_rerank(Q, X, **params, query_locals=ql, database_locals=xl).ranks.T
    np.testing.assert_array_equal(order, direct)  # the head, then the tail in its initial order
    exact = search_database(Q, X, rerank="learned", rerank_params=params, local_descriptors=provider)
    assert exact.rerank["params"] == {"reranker": str(path), "M": 10, "lam": 0.3, "gamma": 0.5}
    assert exact.rerank["local_descriptors"] == {"bytes_per_db_image": 4 * 16 + 2}
    flat = search_database(
        Q,
        X,
        search="faiss-flat",
        search_params={"shortlist": 30},
        rerank="learned",
        rerank_params=params,
        local_descriptors=provider,
    )
    np.testing.assert_array_equal(flat.ids, direct[:, :30])


@pytest.fixture
def tiny(tiny_revisited):
    """A tiny revisited set, a GeM model and a reranker file made for that model's features."""
    root = tiny_revisited
    torch.manual_seed(0)
    model = create_model("gem", backbone="efficientnet_lite0").eval()
    reranker = AMES(dataclasses.replace(CONFIG, in_dim=1280))
    path = root.parent / "reranker.pt"
    save_reranker(reranker, path, {"lam": 0.5, "gamma": 1.0, "backbone_fingerprint": model_fingerprint(model)})
    return RevisitedDataset.from_dir(root), model, reranker, path


def test_evaluate_model_extracts_caches_and_records_local_descriptors(tiny, tmp_path):
    dataset, model, reranker, path = tiny
    cfg = ExtractConfig(image_size=64, scales=(1.0, 0.5))
    result = evaluate_model(
        model,
        dataset,
        cfg,
        cache_dir=tmp_path,
        progress=False,
        rerank="learned",
        rerank_params={"reranker": str(path), "M": 4},
    )
    record = result.metrics["settings"]["rerank"]
    assert record["params"] == {"reranker": str(path), "M": 4, "lam": 0.5, "gamma": 1.0}
    local = record["local_descriptors"]
    assert local["reranker_sha256"] == sha256_file(path) and local["bytes_per_db_image"] == 4 * 16 + 2
    cached = sorted(p.name for p in tmp_path.glob("*-ames-*.npy"))
    assert len(cached) == 4  # codes and counts of the queries and of the database
    # The provider's codes are the reranker's n best positions of each image's multi-scale feature maps
    provider = DatasetLocals(model, dataset, path, cfg, cache_dir=tmp_path, progress=False)
    positions = list(iter_positions(model, dataset.db_paths, None, cfg, progress=False))
    expected = select_codes(reranker.eval(), iter(positions), 4)
    got = provider.database(np.arange(dataset.n_db))
    np.testing.assert_array_equal(got.codes, expected.codes)
    # 96 x 64 shrunk to 64 x 43: a 2 x 2 stride-32 map at scale 1 and 1 x 1 at scale 0.5
    assert positions[0].shape == (2 * 2 + 1 * 1, 1280)
    stored = cached_positions(model, dataset.db_paths, None, cfg, cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(stored.image(3), positions[3], atol=2e-3, rtol=1e-3)  # float16 storage
    key = FeatureCache.key(model_fingerprint(model), dataset.db_paths, None, cfg)
    assert (tmp_path / f"{key}-ames-{sha256_file(path)[:16]}-n4.npy").is_file()


def test_a_reranker_of_another_model_is_refused(tiny):
    dataset, _, _, path = tiny
    other = create_model("gem", backbone="efficientnet_lite0", pretrained=True)
    with pytest.raises(ValueError, match="trained on the feature maps of another retrieval model"):
        evaluate_model(
            other,
            dataset,
            ExtractConfig(image_size=64, scales=(1.0,)),
            progress=False,
            rerank="learned",
            rerank_params={"reranker": str(path)},
        )


def test_the_comparison_table_ranks_the_same_descriptors_four_ways(tiny, tmp_path):
    dataset, model, _, path = tiny
    cfg = ExtractConfig(image_size=64, scales=(1.0,))
    table = compare_rerankers(model, dataset, path, cfg, cache_dir=tmp_path, progress=False)
    assert list(table.index) == ["none", "alpha_qe", "superglobal", "learned"]
    assert table["db_bytes_per_image"].tolist() == [1280 * 4] * 3 + [1280 * 4 + 4 * 16 + 2]
    metrics = table.attrs["metrics"]
    assert metrics["none"]["settings"]["rerank"] is None
    assert metrics["superglobal"]["settings"]["rerank"]["params"]["M"] == 100
    assert metrics["learned"]["settings"]["rerank"]["local_descriptors"]["reranker_sha256"] == sha256_file(path)
    plain = evaluate_model(model, dataset, cfg, cache_dir=tmp_path, progress=False)
    assert table.loc["none", "medium"] == plain.metrics["medium"]["map"]
    learned = evaluate_model(
        model,
        dataset,
        cfg,
        cache_dir=tmp_path,
        progress=False,
        rerank="learned",
        rerank_params={"reranker": str(path), "M": 100},
    )
    assert table.loc["learned", ["easy", "medium", "hard"]].tolist() == [
        learned.metrics[p]["map"] for p in ("easy", "medium", "hard")
    ]
