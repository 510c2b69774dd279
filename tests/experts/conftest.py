"""Demo-like UnED data for the expert tests, built so that domains are separable.

:func:`separable_uned` writes a small UnED info-file set in the official layout (3 domains: cars searches its own
test split, inshop and gldv2 a separate index with index-only classes; images are never read) and draws descriptors
for it. Every embedding gives each domain and each class its own random unit direction; an item's descriptor is
``normalize(1.5 · domain + class + noise · ε / √D)``, ``ε`` standard normal. The domain direction, shared by all of a
domain's images, makes the domains linearly separable in the shared (universal) embedding, whose noise is 1.6 on every
domain; a domain's expert has noise 1.0 on its own domain and 3.0 on the others, so it beats the universal model there
and loses elsewhere. Experts have different sizes (48, 32, 24; the universal 64).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from irlib.data.uned import UnEDKnn, uned_knn
from irlib.experts import Expert, RouterTraining

DOMAINS3 = ("cars", "inshop", "gldv2")
EXPERT_DIMS = {"cars": 48, "inshop": 32, "gldv2": 24}
UNIVERSAL_DIM = 64
DOMAIN_WEIGHT, UNIVERSAL_NOISE, OWN_NOISE, OTHER_NOISE = 1.5, 1.6, 1.0, 3.0
TRAIN_LABEL_OFFSET = 100_000
"""Training classes get labels of their own, far from the benchmark's."""


@dataclass
class SeparableUnED:
    """The benchmark, the experts (``universal`` then one per domain, ``<domain>-expert``) and the router-training
    data of :func:`separable_uned`."""

    knn: UnEDKnn
    experts: list[Expert]
    training: RouterTraining


def _write_info(root: Path, test_classes: int, train_classes: int, views: int, index_only: int) -> None:
    """UnED info files: cars' test split is its own index; inshop and gldv2 have one query view per test class in
    ``test.json`` and the other views, plus ``index_only`` classes, in ``index.json``."""
    for d in DOMAINS3:
        folder = root / "info_files" / d
        folder.mkdir(parents=True)
        train = [{"path": f"{d}/tr_{c}_{v}.jpg", "class_id": c} for c in range(train_classes) for v in range(views)]
        splits: dict[str, list[dict]] = {"train": train}
        test = [{"path": f"{d}/te_{c}_{v}.jpg", "class_id": c} for c in range(test_classes) for v in range(views)]
        if d == "cars":
            splits["test"] = test
        else:
            splits["test"] = [e for e in test if e["path"].endswith("_0.jpg")]
            extra = [
                {"path": f"{d}/ix_{c}_{v}.jpg", "class_id": c}
                for c in range(test_classes, test_classes + index_only)
                for v in range(views)
            ]
            splits["index"] = [e for e in test if not e["path"].endswith("_0.jpg")] + extra
        for split, rows in splits.items():
            (folder / f"{split}.json").write_text(json.dumps(rows))


class _Embedding:
    """One embedding's random domain and class directions; draws unit descriptors of items."""

    def __init__(self, rng: np.random.Generator, dim: int, noise: dict[str, float]) -> None:
        self.rng, self.dim, self.noise = rng, dim, noise
        self.directions: dict[object, np.ndarray] = {}

    def _direction(self, key: object) -> np.ndarray:
        if key not in self.directions:
            v = self.rng.standard_normal(self.dim)
            self.directions[key] = v / np.linalg.norm(v)
        return self.directions[key]

    def draw(self, domains: np.ndarray, labels: list) -> np.ndarray:
        out = np.empty((len(domains), self.dim), dtype=np.float32)
        for i, (d, y) in enumerate(zip(domains, labels, strict=True)):
            eps = self.rng.standard_normal(self.dim) * self.noise[d] / np.sqrt(self.dim)
            v = DOMAIN_WEIGHT * self._direction(("domain", d)) + self._direction(("class", d, y)) + eps
            out[i] = v / np.linalg.norm(v)
        return out


def separable_uned(
    root: Path,
    *,
    test_classes: int = 40,
    train_classes: int = 16,
    views: int = 4,
    index_only: int = 4,
    seed: int = 0,
) -> SeparableUnED:
    """Write the info files under ``root`` and draw every embedding's descriptors (see the module docstring)."""
    _write_info(root, test_classes, train_classes, views, index_only)
    knn = uned_knn(root, DOMAINS3)
    train_domains = np.repeat(np.array(DOMAINS3), train_classes * views)
    train_labels = TRAIN_LABEL_OFFSET + np.repeat(np.arange(3 * train_classes), views)
    rng = np.random.default_rng(seed)
    plans = {"universal": (UNIVERSAL_DIM, dict.fromkeys(DOMAINS3, UNIVERSAL_NOISE), ())}
    for d in DOMAINS3:
        plans[f"{d}-expert"] = (EXPERT_DIMS[d], {o: OWN_NOISE if o == d else OTHER_NOISE for o in DOMAINS3}, (d,))
    experts = []
    for name, (dim, noise, domains) in plans.items():
        embedding = _Embedding(rng, dim, noise)
        database = embedding.draw(knn.index_domains, knn.index_labels)
        queries = embedding.draw(knn.query_domains, knn.query_labels)
        inside = knn.query_in_index >= 0
        queries[inside] = database[knn.query_in_index[inside]]
        train = embedding.draw(train_domains, list(train_labels))
        experts.append(Expert(name, domains, queries, database, train, parameters=dim * 10, embed_ms=1.0))
    training = RouterTraining(
        embedding=experts[0].train,
        domains=train_domains,
        labels=train_labels,
        experts={e.name: e.train for e in experts},
    )
    return SeparableUnED(knn, experts, training)


@pytest.fixture(scope="module")
def separable(tmp_path_factory: pytest.TempPathFactory) -> SeparableUnED:
    return separable_uned(tmp_path_factory.mktemp("separable_uned"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: with other jobs on the 2 cores, the routers' small training steps ran 10-50x slower with
    two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
