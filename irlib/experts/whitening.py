"""Cheap domain experts: a shared frozen embedding followed by a whitening learned on one domain's training images.

The learned whitening ``Lw`` of Radenović et al. (TPAMI 2018, §3.3; Mikolajczyk & Matas, ICCV 2007): centre on the
mean, whiten by the within-class covariance ``C_S^{-1/2}`` (the scatter of images around their class mean), then
rotate onto the principal axes of the whitened data, optionally keeping the leading ``dim``. A domain's training split
has far fewer images than dimensions, so ``C_S`` is shrunk towards a multiple of the identity (Ledoit & Wolf, J.
Multivariate Anal. 2004), ``(1 − α) C_S + α tr(C_S)/D · I``, which keeps it invertible.
"""

from __future__ import annotations

import time

import numpy as np

from irlib.experts.experts import Expert


def learn_whitening(
    x: np.ndarray, labels: np.ndarray, *, shrinkage: float = 0.3, dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (D,), projection (D, d))`` of the learned whitening of descriptors ``x (n, D)`` with class ``labels
    (n,)``; apply with :func:`apply_whitening`. Classes with one image add nothing to ``C_S``."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (len(x),):
        raise ValueError(f"need descriptors (n, D) and n labels, got {x.shape} and {labels.shape}")
    if not 0 < shrinkage <= 1:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
    if dim is not None and not 1 <= dim <= x.shape[1]:
        raise ValueError(f"dim must be in [1, {x.shape[1]}] or None, got {dim}")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if not (counts > 1).any():
        raise ValueError("learning a whitening needs a class with at least two images")
    class_means = np.zeros((len(counts), x.shape[1]))
    np.add.at(class_means, inverse, x)
    scatter = x - (class_means / counts[:, None])[inverse]
    within = scatter.T @ scatter / (counts[counts > 1].sum() - (counts > 1).sum())
    within = (1 - shrinkage) * within + shrinkage * np.trace(within) / len(within) * np.eye(len(within))
    values, vectors = np.linalg.eigh(within)
    whiten = (vectors / np.sqrt(values)) @ vectors.T
    mean = x.mean(0)
    whitened = (x - mean) @ whiten
    values, vectors = np.linalg.eigh(whitened.T @ whitened)
    rotation = vectors[:, np.argsort(values)[::-1][:dim]]
    return mean.astype(np.float32), (whiten @ rotation).astype(np.float32)


def apply_whitening(x: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """``(n, D) -> (n, d)`` float32: the L2-normalised ``(x − mean) @ projection``."""
    y = (np.asarray(x, dtype=np.float32) - mean) @ projection
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def whitened_expert(
    base: Expert,
    domain: str,
    train_domains: np.ndarray,
    train_labels: np.ndarray,
    *,
    shrinkage: float = 0.3,
    dim: int | None = None,
) -> Expert:
    """The expert of ``domain``: ``base``'s descriptors whitened as learned on ``base.train``'s images of that domain
    (``train_domains``, ``train_labels``: one per training image). Its cost is the whitening's mean and projection
    on top of ``base`` (which it requires); ``embed_ms`` is the measured time of the whitening per query."""
    if base.train is None:
        raise ValueError(f"expert {base.name!r} has no training descriptors to learn a whitening from")
    rows = np.asarray(train_domains) == domain
    if not rows.any():
        raise ValueError(f"no training image of domain {domain!r} to learn its whitening from")
    mean, projection = learn_whitening(base.train[rows], np.asarray(train_labels)[rows], shrinkage=shrinkage, dim=dim)
    t0 = time.perf_counter()
    queries = apply_whitening(base.queries, mean, projection)
    embed_ms = (time.perf_counter() - t0) * 1000 / max(len(queries), 1)
    return Expert(
        name=f"lw-{domain}",
        domains=(domain,),
        queries=queries,
        database=apply_whitening(base.database, mean, projection),
        train=apply_whitening(base.train, mean, projection),
        parameters=mean.size + projection.size,
        embed_ms=embed_ms,
        requires=(base.name,),
        info={"whitening": "lw", "base": base.name, "domain": domain, "shrinkage": shrinkage, "dim": dim},
    )
