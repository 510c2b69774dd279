"""The learned whitening (Lw) and the per-domain experts built from it."""

from __future__ import annotations

import numpy as np
import pytest

from irlib.experts import Expert, apply_whitening, learn_whitening, whitened_expert


def _classes(rng: np.random.Generator, n_classes: int, views: int, noise_scale: np.ndarray) -> tuple:
    """Class centres spread equally in every dimension, and within-class noise of the given per-dimension scale."""
    centres = rng.standard_normal((n_classes, len(noise_scale)))
    labels = np.repeat(np.arange(n_classes), views)
    return centres[labels] + rng.standard_normal((len(labels), len(noise_scale))) * noise_scale, labels


def test_whitened_within_class_covariance_is_the_identity():
    rng = np.random.default_rng(0)
    x, labels = _classes(rng, 200, 10, np.linspace(0.1, 3.0, 6))
    mean, projection = learn_whitening(x, labels, shrinkage=1e-9)
    y = (x - mean) @ projection
    scatter = y - np.stack([y[labels == c].mean(0) for c in range(200)])[labels]
    np.testing.assert_allclose(scatter.T @ scatter / (len(y) - 200), np.eye(6), atol=1e-6)
    assert mean.shape == (6,) and projection.shape == (6, 6)
    assert learn_whitening(x, labels, dim=2)[1].shape == (6, 2)


def test_whitening_suppresses_nuisance_directions_and_helps_retrieval_of_unseen_classes():
    """Within-class noise dominates half of the dimensions: nearest neighbours of raw descriptors follow the noise,
    those of whitened ones (learned on other classes) the class; the less shrinkage, the more suppressed."""
    rng = np.random.default_rng(1)
    scale = np.r_[np.full(8, 3.0), np.full(8, 0.2)]
    train, train_labels = _classes(rng, 30, 4, scale)
    test, test_labels = _classes(rng, 30, 4, scale)

    def r1(x: np.ndarray) -> float:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = x @ x.T - 2 * np.eye(len(x))
        return float((test_labels[sim.argmax(1)] == test_labels).mean())

    raw, mild, full = (
        r1(test),
        *(r1(apply_whitening(test, *learn_whitening(train, train_labels, shrinkage=s))) for s in (0.3, 0.01)),
    )
    assert raw < 0.2 and raw + 0.2 < mild < full and full > 0.9


@pytest.mark.parametrize(
    ("labels", "kwargs", "message"),
    [
        (np.arange(10), {}, "a class with at least two images"),
        (np.zeros(10), {"shrinkage": 0.0}, r"shrinkage must be in \(0, 1\]"),
        (np.zeros(10), {"dim": 5}, r"dim must be in \[1, 4\]"),
        (np.zeros(9), {}, "n labels"),
    ],
)
def test_bad_whitening_input_is_refused(labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        learn_whitening(np.random.default_rng(0).standard_normal((10, 4)), labels, **kwargs)


def test_a_whitened_expert_serves_its_domain_on_top_of_its_base():
    rng = np.random.default_rng(2)
    x, labels = _classes(rng, 6, 4, np.ones(5))
    domains = np.repeat(["cars", "sop"], 12)
    base = Expert("universal", (), x[:3], x, train=x, parameters=100, embed_ms=2.0)
    expert = whitened_expert(base, "sop", domains, labels, shrinkage=0.5, dim=3)
    mean, projection = learn_whitening(x[12:], labels[12:], shrinkage=0.5, dim=3)
    np.testing.assert_allclose(expert.database, apply_whitening(x, mean, projection), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(expert.queries, axis=1), 1, rtol=1e-6)
    assert (expert.name, expert.domains, expert.requires, expert.dim) == ("lw-sop", ("sop",), ("universal",), 3)
    assert expert.parameters == 5 + 5 * 3 and expert.embed_ms >= 0
    with pytest.raises(ValueError, match="no training image of domain 'met'"):
        whitened_expert(base, "met", domains, labels)
    with pytest.raises(ValueError, match="no training descriptors"):
        whitened_expert(Expert("bare", (), x[:3], x), "sop", domains, labels)
