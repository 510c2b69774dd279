"""Routers: what each one decides, how the learned ones train, and when a query falls back."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from irlib.experts import ROUTERS, DomainSupport, ExpertSet, RouterInputs, RouterTraining
from irlib.experts.routers import (
    ClassifierRouter,
    ConfidenceRouter,
    GatingRouter,
    OracleRouter,
    mixture_retrieval_loss,
)


@pytest.fixture(scope="module")
def experts(separable) -> ExpertSet:
    return ExpertSet(separable.experts, fallback="universal")


def _query_inputs(separable, experts: ExpertSet) -> RouterInputs:
    return RouterInputs(embedding=experts["universal"].queries, domains=separable.knn.query_domains)


def test_the_registry_names_every_router():
    assert ROUTERS.names() == ["classifier", "confidence", "gating", "oracle"]
    assert ROUTERS.get("gating")(soft=True).options()["soft"] is True
    with pytest.raises(ValueError, match="Unknown router 'gate'.*Did you mean 'gating'"):
        ROUTERS.get("gate")


def test_oracle_sends_each_query_to_its_domains_expert_and_needs_the_domains(separable, experts):
    oracle = OracleRouter()
    oracle.fit(experts)
    decision = oracle.decide(_query_inputs(separable, experts), far=np.ones(len(separable.knn.query_domains), bool))
    np.testing.assert_array_equal(decision.choice, experts.targets(separable.knn.query_domains))
    assert not decision.fallback.any()  # the oracle knows the domain: "far" does not apply
    with pytest.raises(ValueError, match="true domains"):
        oracle.route(RouterInputs(embedding=experts["universal"].queries))
    with pytest.raises(RuntimeError, match="not fitted"):
        OracleRouter().route(_query_inputs(separable, experts))


def test_one_classifier_step_changes_every_trainable_parameter(separable, experts):
    router = ClassifierRouter(steps=1)
    torch.manual_seed(router.seed)
    initial = torch.nn.Linear(separable.training.embedding.shape[1], 3).state_dict()
    router.fit(experts, separable.training, progress=False)
    for name, value in router.net.state_dict().items():
        assert not torch.equal(value, initial[name]), name
    assert router.parameters == 64 * 3 + 3


def test_classifier_routes_separable_domains_to_their_experts(separable, experts):
    router = ClassifierRouter()
    router.fit(experts, separable.training, progress=False)
    assert router.losses[-1] < router.losses[0] / 5
    routing = router.route(_query_inputs(separable, experts))
    assert (routing.weights.argmax(1) == experts.targets(separable.knn.query_domains)).mean() >= 0.95
    assert np.all((routing.confidence > 1 / 3) & (routing.confidence <= 1))


def test_classifier_sends_a_predicted_domain_without_expert_to_the_fallback(separable):
    partial = ExpertSet([e for e in separable.experts if e.name != "gldv2-expert"], fallback="universal")
    router = ClassifierRouter()
    router.fit(partial, separable.training, progress=False)
    choice = router.route(_query_inputs(separable, partial)).weights.argmax(1)
    gldv2 = separable.knn.query_domains == "gldv2"
    assert (np.array(partial.names)[choice[gldv2]] == "universal").mean() >= 0.95
    with pytest.raises(ValueError, match="domain 'gldv2' has no expert"):
        ClassifierRouter().fit(ExpertSet([e for e in partial if e.domains]), separable.training, progress=False)


def test_mixture_loss_is_the_softmax_cross_entropy_over_each_items_positives():
    weights = torch.tensor([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]])
    sims = torch.tensor(
        [
            [[1.0, 0.2, 0.4], [0.2, 1.0, -0.6], [0.4, -0.6, 1.0]],
            [[1.0, 0.8, 0.0], [0.8, 1.0, 0.2], [0.0, 0.2, 1.0]],
        ]
    )
    labels = torch.tensor([7, 7, 3])  # item 2 has no positive: it only serves as a negative
    mixed = torch.einsum("ie,eij->ij", weights, sims) / 0.1
    expected = [-torch.log_softmax(mixed[0, [1, 2]], 0)[0], -torch.log_softmax(mixed[1, [0, 2]], 0)[0]]
    loss = mixture_retrieval_loss(weights, sims, labels, temperature=0.1)
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    alone = mixture_retrieval_loss(weights, sims, torch.tensor([1, 2, 3]))
    assert alone.item() == 0 and alone.requires_grad is False


def test_one_gating_step_changes_every_trainable_parameter_and_leaves_the_experts_alone(separable, experts):
    frozen = {e.name: e.train.copy() for e in experts}
    router = GatingRouter(hidden=16, steps=1)
    router.fit(experts, separable.training, progress=False)
    trained = copy.deepcopy(router.net.state_dict())
    torch.manual_seed(router.seed)
    initial = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).state_dict()
    for name, value in trained.items():
        assert not torch.equal(value, initial[name]), name
    assert router.parameters == 64 * 16 + 16 + 16 * 3 + 3
    for e in experts:
        np.testing.assert_array_equal(e.train, frozen[e.name])


def test_gating_learns_to_weigh_each_domains_expert_highest(separable, experts):
    router = GatingRouter()
    router.fit(experts, separable.training, progress=False)
    assert np.mean(router.losses[-20:]) < router.losses[0]
    routing = router.route(_query_inputs(separable, experts))
    assert routing.weights[:, experts.position("universal")].max() == 0  # only routable experts are mixed
    np.testing.assert_allclose(routing.weights.sum(1), 1, rtol=1e-5)
    assert (routing.weights.argmax(1) == experts.targets(separable.knn.query_domains)).mean() >= 0.95
    soft = GatingRouter(soft=True)
    soft.fit(experts, separable.training, progress=False)
    decision = soft.decide(_query_inputs(separable, experts))
    np.testing.assert_allclose(decision.weights, routing.weights, rtol=1e-6)  # same seed: the same gate
    assert soft.searches_all and not router.searches_all


def test_gating_needs_every_routable_experts_training_descriptors(separable, experts):
    training = RouterTraining(
        separable.training.embedding, separable.training.domains, separable.training.labels, experts={}
    )
    with pytest.raises(ValueError, match="every routable expert's training descriptors"):
        GatingRouter().fit(experts, training, progress=False)


def test_confidence_measures_on_hand_made_scores():
    margin = ConfidenceRouter(measure="margin")
    entropy = ConfidenceRouter(measure="entropy", k=3, temperature=1.0)
    scores = np.array([[0.9, 0.5, 0.4], [0.7, 0.7, 0.7]])
    np.testing.assert_allclose(margin.confidences(scores), [0.4, 0.0], atol=1e-7)
    p = np.exp([0.9, 0.5, 0.4]) / np.exp([0.9, 0.5, 0.4]).sum()
    np.testing.assert_allclose(entropy.confidences(scores), [1 + (p * np.log(p)).sum() / np.log(3), 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="'margin' or 'entropy'"):
        ConfidenceRouter(measure="variance")


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(2, 8)), elements=st.floats(-1, 1)))
def test_confidences_are_ordered_and_bounded(scores):
    scores = -np.sort(-scores, axis=1)
    assert (ConfidenceRouter(measure="margin").confidences(scores) >= 0).all()
    entropy = ConfidenceRouter(measure="entropy", k=8).confidences(scores)
    assert ((entropy >= -1e-6) & (entropy <= 1 + 1e-6)).all()


def test_confidence_router_picks_the_expert_with_the_most_confident_scores(experts):
    scores = {name: np.array([[0.9, 0.1], [0.5, 0.4]]) for name in experts.routable}
    scores["inshop-expert"] = np.array([[0.9, 0.8], [0.9, 0.1]])
    router = ConfidenceRouter(min_confidence=0.3)
    router.fit(experts)
    decision = router.decide(RouterInputs(np.zeros((2, 64)), expert_scores=scores))
    assert [experts.names[c] for c in decision.choice] == ["cars-expert", "inshop-expert"]
    np.testing.assert_allclose(decision.confidence, [0.8, 0.8])
    with pytest.raises(ValueError, match="top-k scores of every routable expert"):
        router.route(RouterInputs(np.zeros((2, 64)), expert_scores={"cars-expert": scores["cars-expert"]}))


def test_low_confidence_and_far_queries_fall_back_and_need_a_fallback(separable, experts):
    inputs = _query_inputs(separable, experts)
    plain = ClassifierRouter()
    plain.fit(experts, separable.training, progress=False)
    confidence = plain.route(inputs).confidence
    router = ClassifierRouter(min_confidence=float(np.median(confidence)))
    router.fit(experts, separable.training, progress=False)  # the same seed: the same classifier
    decision = router.decide(inputs)
    low = confidence < np.median(confidence)
    assert 0 < low.sum() < len(low)
    np.testing.assert_array_equal(decision.fallback, low)
    assert (decision.choice[low] == experts.position("universal")).all()
    assert (decision.weights[low].argmax(1) == experts.position("universal")).all()
    far = np.zeros(len(low), dtype=bool)
    far[:3] = True
    assert router.decide(inputs, far).fallback[:3].all()
    no_fallback = ExpertSet(separable.experts)
    with pytest.raises(ValueError, match="min_confidence needs a fallback expert"):
        ClassifierRouter(min_confidence=0.5).fit(no_fallback, separable.training, progress=False)
    unsafe = ClassifierRouter()
    unsafe.fit(no_fallback, separable.training, progress=False)
    with pytest.raises(ValueError, match="3 queries must fall back"):
        unsafe.decide(inputs, far)


def test_domain_support_marks_embeddings_far_from_every_training_domain(separable):
    support = DomainSupport(separable.training, quantile=0.0)
    assert support.threshold == pytest.approx(support(separable.training.embedding).min())
    rng = np.random.default_rng(0)
    stray = rng.standard_normal((20, 64))
    stray -= stray @ support.means.T @ np.linalg.pinv(support.means.T)  # orthogonal to every domain mean
    assert support.far(stray).all()
    assert support.far(separable.training.embedding).sum() == 0
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\)"):
        DomainSupport(separable.training, quantile=1.0)
