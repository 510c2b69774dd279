"""Shortlist attention: a BatchFormer's trained encoder over [query; shortlist] at test time reorders only each
query's top M and keeps the tail; a pair's score depends on the rest of the shortlist (batch-dependent, recorded so);
the pipeline finds the attention in the model and refuses a model without one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from irlib.data.revisited import RevisitedDataset
from irlib.eval import rerank
from irlib.eval.extract import ExtractConfig
from irlib.eval.pipeline import evaluate_model, rescore, save_result, search_database
from irlib.eval.rerank import (
    BATCH_DEPENDENT_RERANKERS,
    RERANKERS,
    BatchAttention,
    batch_attention,
    initial_ranks,
    rerank_scores,
    reranker_inputs,
    reranker_params,
    shortlist_attention_rerank,
)
from irlib.eval.revisited import evaluate
from irlib.models import create_model
from tests.eval.conftest import clustered

M = 12


CBA = "its Class Batch Attention reads every shortlisted image's backbone feature maps"


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """6 queries and 60 database images in 4 clusters, D = 32."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 32)).astype(np.float32)
    return clustered(rng, 6, 32, centres), clustered(rng, 60, 32, centres)


@pytest.fixture(scope="module")
def bf_model() -> torch.nn.Module:
    """A small BatchFormer (GeM on ResNet-18, whitened to D = 32), random weights, in eval mode."""
    torch.manual_seed(0)
    return create_model("batchformer", backbone="resnet18", whitening=32).eval()


def test_identity_attention_keeps_the_initial_ranking_and_only_the_head_moves(data, monkeypatch):
    Q, X = data
    r0 = initial_ranks(Q, X)
    same = shortlist_attention_rerank(Q, X, attend=lambda sets: sets, M=M, ranks=r0)
    np.testing.assert_array_equal(same.ranks, r0)
    assert same.scores.shape == (6, M) and (np.diff(same.scores, axis=1) <= 0).all()
    np.testing.assert_allclose(same.details["attended"], same.details["global"], atol=1e-6)
    # An attention that negates the database rows reverses the head exactly; the tail is kept
    calls = []

    def negate(sets: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(sets.shape))
        return torch.cat([sets[:, :1], -sets[:, 1:]], dim=1)

    monkeypatch.setattr(rerank, "_CHUNK_ELEMENTS", 2 * (M + 1) * (32 + M + 1))  # two queries per chunk
    flipped = shortlist_attention_rerank(Q, X, attend=negate, M=M, ranks=r0)
    assert calls == [(2, M + 1, 32)] * 3  # [query; its M shortlisted rows], chunks of queries
    np.testing.assert_array_equal(flipped.ranks[:M], r0[:M][::-1])
    np.testing.assert_array_equal(flipped.ranks[M:], r0[M:])
    # lam weighs the initial score: lam·(q·x) + (1 − lam)·(q̂·x̂); lam = 1 is the initial order
    mixed = shortlist_attention_rerank(Q, X, attend=negate, M=M, lam=0.25, ranks=r0)
    expected = 0.25 * mixed.details["global"] - 0.75 * mixed.details["global"]
    np.testing.assert_allclose(mixed.details["attended"], -mixed.details["global"], atol=1e-6)
    np.testing.assert_allclose(np.sort(mixed.scores, axis=1)[:, ::-1], np.sort(expected, axis=1)[:, ::-1], atol=1e-6)
    np.testing.assert_array_equal(shortlist_attention_rerank(Q, X, attend=negate, M=M, lam=1.0).ranks, r0)
    # M beyond the ranking reranks it all
    assert shortlist_attention_rerank(Q, X[:5], attend=negate, M=M).scores.shape == (6, 5)


def test_a_pairs_score_depends_on_the_rest_of_the_shortlist(bf_model):
    """The property that makes the reranker batch-dependent: the same query and database image, another shortlist."""
    rng = np.random.default_rng(1)
    Q, X = unit(rng.standard_normal((1, 32))), unit(rng.standard_normal((60, 32)))
    attend = batch_attention(bf_model).attend
    top = initial_ranks(Q, X)[0, 0]  # the query's best database image, at shortlist position 0 whatever M

    def score(M: int, X: np.ndarray = X) -> float:
        out = shortlist_attention_rerank(Q, X, attend=attend, M=M)
        return float(out.details["attended"][0, list(initial_ranks(Q, X)[:M, 0]).index(top)])

    alone = score(5)
    assert abs(alone - score(12)) > 1e-3 and abs(alone - score(40)) > 1e-3  # more images in the shortlist
    # the database changed: a new image that enters the shortlist changes the pair's score; one that stays
    # outside it does not (the dependence is on the shortlist, not on the whole database)
    near, far = unit(Q[0] + X[initial_ranks(Q, X)[1, 0]]), -Q[0]
    assert abs(alone - score(5, np.vstack([X, near[None]]))) > 1e-3
    assert score(5, np.vstack([X, far[None]])) == alone
    assert "shortlist_attention" in BATCH_DEPENDENT_RERANKERS
    assert "BATCH-DEPENDENT" in shortlist_attention_rerank.__doc__


def test_the_attention_is_the_models_encoder_in_eval_mode_on_many_sets(data, bf_model):
    Q, X = data
    attention = batch_attention(bf_model)
    assert isinstance(attention, BatchAttention) and attention.module is bf_model
    sets = torch.from_numpy(
        np.stack([np.vstack([Q[i : i + 1], X[i * M : (i + 1) * M]]) for i in range(3)])
    )  # (3, M+1, D)
    with torch.no_grad():
        one_by_one = torch.stack([bf_model.attend(s) for s in sets])
    torch.testing.assert_close(attention.attend(sets), one_by_one)
    bf_model.train()  # dropout 0.5 in training: the reranker still attends in eval mode and restores the flag
    try:
        torch.testing.assert_close(attention.attend(sets), one_by_one)
        assert bf_model.batchformer.training
    finally:
        bf_model.eval()


def test_registered_with_json_parameters_and_clear_errors(data, bf_model):
    Q, X = data
    assert RERANKERS.get("shortlist_attention") is shortlist_attention_rerank
    assert reranker_params("shortlist_attention", {"M": 50}) == {"M": 50, "lam": 0.0}
    with pytest.raises(ValueError, match="unknown parameter"):  # the attention comes from the model, not params
        reranker_params("shortlist_attention", {"attend": "x"})
    with pytest.raises(ValueError, match=r"pass irlib\.eval\.rerank\.batch_attention\(model\)"):
        rerank_scores("shortlist_attention", Q @ X.T, Q, X, {"M": 5})
    with pytest.raises(ValueError, match="learned reranking reads local descriptors.*got BatchAttention"):
        reranker_inputs("learned", batch_attention(bf_model))  # another reranker's inputs
    assert reranker_inputs("superglobal", batch_attention(bf_model)) is None  # a reranker that reads none
    with pytest.raises(ValueError, match="lam must be finite and in"):
        shortlist_attention_rerank(Q, X, attend=lambda s: s, lam=1.5)
    with pytest.raises(ValueError, match="attend must map"):
        shortlist_attention_rerank(Q, X, attend=lambda s: s[:, :1])


@pytest.mark.parametrize(
    ("kwargs", "name", "why"),
    [
        ({"method": "gem"}, "'gem'", "it has no batch attention"),
        (
            {"method": "compose", "batch_attention": "batch_transformer"},
            r"'compose\[gem\+batch_transformer/w32\]'",
            CBA,
        ),
        ({"method": "batch_transformer"}, "'batch_transformer'", CBA),
    ],
)
def test_a_model_without_descriptor_level_batch_attention_is_refused(tiny_revisited, kwargs, name, why):
    model = create_model(backbone="resnet18", whitening=32, **kwargs)
    with pytest.raises(ValueError, match=f"model {name} has none: {why}"):
        batch_attention(model)
    with pytest.raises(ValueError, match=f"model {name} has none"):  # before any extraction
        evaluate_model(model, RevisitedDataset.from_dir(tiny_revisited), progress=False, rerank="shortlist_attention")


def test_evaluate_model_finds_a_composed_batchformer_and_equals_the_reranker(tiny_revisited, tmp_path):
    torch.manual_seed(3)
    model = create_model("compose", backbone="resnet18", whitening=32, batch_attention="batchformer").eval()
    dataset = RevisitedDataset.from_dir(tiny_revisited)
    cfg = ExtractConfig(image_size=64, scales=(1.0,))
    params = {"M": 10}
    result = evaluate_model(
        model, dataset, cfg, cache_dir=tmp_path, progress=False, rerank="shortlist_attention", rerank_params=params
    )
    record = result.metrics["settings"]["rerank"]
    assert record == {
        "method": "shortlist_attention",
        "params": {"M": 10, "lam": 0.0},
        "batch_dependent": True,
        "batch_attention": {"model": "compose[gem+batchformer/w32]", "module": "BatchFormer"},
    }
    save_result(result, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["rerank"]["batch_dependent"] is True
    # the same as the reranker called on the same descriptors with the model's attention
    direct = shortlist_attention_rerank(result.queries, result.database, attend=batch_attention(model).attend, **params)
    assert (direct.ranks != initial_ranks(result.queries, result.database)).any()  # it did reorder
    np.testing.assert_array_equal(np.argsort(-result.scores, axis=1, kind="stable"), direct.ranks.T)
    expected = evaluate(dataset.gnd, ranks=direct.ranks)
    assert [result.metrics[p]["map"] for p in ("easy", "medium", "hard")] == [
        round(float(expected[p]["map"]) * 100, 4) for p in ("easy", "medium", "hard")
    ]
    # rescore takes the attention as rerank_inputs; a shortlist search reranks the same way
    plain = evaluate_model(model, dataset, cfg, cache_dir=tmp_path, progress=False)
    assert plain.metrics["settings"]["rerank"] is None
    again = rescore(
        plain, dataset, rerank="shortlist_attention", rerank_params=params, rerank_inputs=batch_attention(model)
    )
    assert again.metrics["settings"]["rerank"] == record and again.metrics["medium"] == result.metrics["medium"]
    with pytest.raises(ValueError, match="shortlist_attention reranking reads a model's descriptor-level"):
        rescore(plain, dataset, rerank="shortlist_attention")
    flat = search_database(
        result.queries,
        result.database,
        search="faiss-flat",
        search_params={"shortlist": 6},
        rerank="shortlist_attention",
        rerank_params=params,
        rerank_inputs=batch_attention(model),
    )
    np.testing.assert_array_equal(flat.ids, direct.ranks.T)
    assert flat.rerank["batch_dependent"] is True
