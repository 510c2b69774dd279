"""Helpers shared by the loss tests: the exact AP the surrogates approximate and small random batches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def exact_ap(scores: Tensor, pos: Tensor, valid: Tensor | None = None) -> Tensor:
    """Non-interpolated AP per query by a plain loop: rank the valid items by decreasing score and average the
    precision at each positive. ``(Q, N) -> (Q,)`` float64, NaN for a query without positives."""
    valid = torch.ones_like(pos) if valid is None else valid
    out = []
    for q in range(scores.shape[0]):
        order = sorted((j for j in range(scores.shape[1]) if valid[q, j]), key=lambda j: -float(scores[q, j]))
        hits, total = 0, 0.0
        for rank, j in enumerate(order, start=1):
            if pos[q, j]:
                hits += 1
                total += hits / rank
        out.append(total / hits if hits else math.nan)
    return torch.tensor(out, dtype=torch.float64)


def random_batch(seed: int, batch: int = 10, dim: int = 6, classes: int = 3) -> tuple[Tensor, Tensor]:
    """``(embeddings (B, D) float64 unit rows, labels (B,))`` from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1)
    return x, torch.randint(0, classes, (batch,), generator=g)


def batch_ap_inputs(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(sim, pos, valid)`` of a batch as the ranking losses build it: each item queries all the others."""
    sim = x @ x.T
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(labels), dtype=torch.bool)
    return sim, same & off, off


def min_gap(scores: Tensor, valid: Tensor) -> float:
    """Smallest difference between two valid scores of one query (inf with fewer than two)."""
    gaps = []
    for s, v in zip(scores, valid, strict=True):
        values = s[v].sort().values
        if len(values) > 1:
            gaps.append(float(values.diff().min()))
    return min(gaps, default=math.inf)


def assert_finite_grads(*tensors: Tensor) -> None:
    """Every ``tensor.grad`` exists and is finite."""
    for t in tensors:
        assert t.grad is not None and torch.isfinite(t.grad).all(), t.grad


def loop_triplets(dist: Tensor, labels: Tensor, miner: str, margin: float = 0.0) -> set[tuple[int, int, int]]:
    """The triplets ``(a, p, n)`` each built-in miner should select, by plain loops."""
    n = len(labels)
    valid = [
        (a, p, q)
        for a in range(n)
        for p in range(n)
        for q in range(n)
        if p != a and labels[p] == labels[a] and labels[q] != labels[a]
    ]
    if miner == "all":
        return set(valid)
    if miner == "semihard":
        return {(a, p, q) for a, p, q in valid if dist[a, p] < dist[a, q] < dist[a, p] + margin}
    hard = set()
    for a in range(n):
        ps = [p for p in range(n) if p != a and labels[p] == labels[a]]
        qs = [q for q in range(n) if labels[q] != labels[a]]
        if ps and qs:
            hard.add((a, max(ps, key=lambda p: float(dist[a, p])), min(qs, key=lambda q: float(dist[a, q]))))
    return hard
