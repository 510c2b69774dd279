"""Routers: which expert(s) embed a query and whose index it searches (:data:`ROUTERS`).

A router maps per-query inputs (:class:`RouterInputs`) to a :class:`Routing`: weights over the experts of an
:class:`~irlib.experts.experts.ExpertSet` (one-hot for a hard choice) and a confidence per query.
:meth:`Router.decide` makes it the searched :class:`Decision`: the argmax expert (or the soft mixture, for a router
built with ``soft=True``), replaced by the set's fallback expert where the confidence is below ``min_confidence`` or
the query is far from every training domain (:class:`DomainSupport`).

* ``"classifier"``: a linear softmax domain classifier on the shared embedding; the expert of the predicted domain.
* ``"confidence"``: every expert searches its own index; the one whose top-k scores are most confident wins: margin
  ``s_1 − s_2``, or ``1 − H(softmax(s / T)) / log k`` (``measure="entropy"``).
* ``"gating"``: a small gating network on the shared embedding gives softmax weights ``w_e(q)``; database item x
  scores ``Σ_e w_e(q) ⟨f_e(q), f_e(x)⟩`` (a mixture of experts, Jacobs et al., Neural Computation 1991), trained end
  to end with a retrieval loss on those mixed scores while the experts stay frozen.
* ``"oracle"``: the expert of the query's true domain, the upper bound of routing (UnED's specialist models
  evaluated on their own domains, Ypsilantis et al., ICCV 2023).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from irlib.data.samplers import ClassBalancedSampler
from irlib.experts.experts import ExpertSet
from irlib.losses.functional import label_masks
from irlib.registry import Registry


@dataclass(frozen=True, eq=False)
class RouterTraining:
    """The training-split images a router learns from.

    Attributes:
        embedding: ``(n, D_r)`` shared (router) embedding of each image.
        domains: ``(n,)`` UnED domain name of each image.
        labels: ``(n,)`` int class labels, unique across domains.
        experts: expert name -> ``(n, D_e)`` its descriptors of the images (the gating router needs every routable
            expert's).
    """

    embedding: np.ndarray
    domains: np.ndarray
    labels: np.ndarray
    experts: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        n = len(self.embedding)
        sizes = {"domains": len(self.domains), "labels": len(self.labels)} | {
            f"experts[{k!r}]": len(v) for k, v in self.experts.items()
        }
        wrong = {k: v for k, v in sizes.items() if v != n}
        if np.ndim(self.embedding) != 2 or wrong:
            raise ValueError(
                f"router training data: embedding must be (n, D) and every field n = {n} long, got {wrong}"
            )


@dataclass(frozen=True, eq=False)
class RouterInputs:
    """What routers may read of the queries.

    Attributes:
        embedding: ``(n, D_r)`` shared embedding of each query.
        domains: ``(n,)`` true domain names (the oracle reads them), or None.
        expert_scores: expert name -> ``(n, k)`` its top-k scores of each query, best first, the query's own entry
            excluded where it is in the index (the confidence router reads them), or None.
    """

    embedding: np.ndarray
    domains: np.ndarray | None = None
    expert_scores: Mapping[str, np.ndarray] | None = None


@dataclass(frozen=True, eq=False)
class Routing:
    """``weights (n, E)`` over the experts in :attr:`ExpertSet.names` order (rows summing to 1) and ``confidence
    (n,)`` (higher = surer; its scale depends on the router)."""

    weights: np.ndarray
    confidence: np.ndarray


@dataclass(frozen=True, eq=False)
class Decision:
    """How each query is served.

    Attributes:
        weights: ``(n, E)`` searched weights: one-hot rows for a hard choice, a distribution for a soft mixture.
        choice: ``(n,)`` position of the chosen (argmax) expert, the fallback's where the query fell back.
        confidence: ``(n,)`` the router's confidence.
        fallback: ``(n,)`` bool, the query was sent to the fallback expert (low confidence or far from every domain).
    """

    weights: np.ndarray
    choice: np.ndarray
    confidence: np.ndarray
    fallback: np.ndarray


class DomainSupport:
    """How near a query lies to the training domains in the shared embedding: the cosine of its embedding with the
    nearest domain's mean training embedding. A query whose value is below the ``quantile`` of the training images'
    own values is far from every domain (a nearest-mean out-of-distribution test)."""

    def __init__(self, training: RouterTraining, quantile: float) -> None:
        if not 0 <= quantile < 1:
            raise ValueError(f"the far-from-every-domain quantile must be in [0, 1), got {quantile}")
        self.domains = list(np.unique(training.domains))
        means = np.stack([training.embedding[training.domains == d].mean(0) for d in self.domains])
        self.means = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        self.quantile = quantile
        self.threshold = float(np.quantile(self(training.embedding), quantile))

    def __call__(self, embedding: np.ndarray) -> np.ndarray:
        """``(n,)`` cosine of each ``(n, D_r)`` embedding with its nearest domain mean."""
        z = np.asarray(embedding, dtype=np.float32)
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return (z @ self.means.T).max(1)

    def far(self, embedding: np.ndarray) -> np.ndarray:
        """``(n,)`` bool: the query is far from every training domain."""
        return self(embedding) < self.threshold


class Router(ABC):
    """Routes queries among the experts of the set it was fitted on.

    Class attributes: ``kind``, its :data:`ROUTERS` name; what serving a query costs: ``needs_embedding`` (it reads
    the shared embedding) and ``searches_all`` (every routable expert embeds and searches each query); ``soft``
    (searched as a mixture, not the argmax expert).
    """

    kind = ""
    needs_embedding = True
    searches_all = False
    soft = False

    def __init__(self, *, min_confidence: float | None = None) -> None:
        self.min_confidence = min_confidence
        self._experts: ExpertSet | None = None

    def fit(self, experts: ExpertSet, training: RouterTraining | None = None, *, progress: bool = True) -> None:
        """Learn what the router needs from ``training`` (most need nothing) for ``experts``."""
        if self.min_confidence is not None and experts.fallback is None:
            raise ValueError(f"{type(self).__name__}: min_confidence needs a fallback expert in the expert set")
        self._experts = experts

    @property
    def experts(self) -> ExpertSet:
        if self._experts is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(experts, training) first")
        return self._experts

    @abstractmethod
    def route(self, inputs: RouterInputs) -> Routing:
        """Weights over the experts and a confidence, per query."""

    @property
    def parameters(self) -> int:
        """Trainable parameters the router adds."""
        return 0

    def options(self) -> dict[str, Any]:
        """What a run records of the router."""
        return {"router": self.kind, "min_confidence": self.min_confidence}

    def decide(self, inputs: RouterInputs, far: np.ndarray | None = None) -> Decision:
        """What is searched: the argmax expert (or, for a soft router, the mixture), replaced by the fallback expert
        where the confidence is below ``min_confidence`` or ``far`` ``(n,)`` marks the query far from every domain."""
        routing = self.route(inputs)
        n, n_experts = routing.weights.shape
        fallback = np.zeros(n, dtype=bool)
        if self.min_confidence is not None:
            fallback |= routing.confidence < self.min_confidence
        if far is not None:
            fallback |= np.asarray(far, dtype=bool)
        if fallback.any() and self.experts.fallback is None:
            raise ValueError(f"{fallback.sum()} queries must fall back, but the expert set names no fallback expert")
        choice = routing.weights.argmax(1)
        weights = routing.weights.astype(np.float32) if self.soft else _one_hot(choice, n_experts)
        if fallback.any():
            choice[fallback] = self.experts.position(self.experts.fallback)
            weights[fallback] = _one_hot(choice[fallback], n_experts)
        return Decision(weights, choice, routing.confidence, fallback)


ROUTERS: Registry[Callable[..., Router]] = Registry("router")
"""Router name -> class, built with its options (``ROUTERS.get("gating")(hidden=64, soft=True)``)."""


def _register(name: str) -> Callable[[type[Router]], type[Router]]:
    """Register a router class under ``name``, which it also keeps as ``kind``."""

    def add(cls: type[Router]) -> type[Router]:
        cls.kind = name
        return ROUTERS.register(name, cls)

    return add


def _one_hot(choice: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[choice]


@_register("oracle")
class OracleRouter(Router):
    """The expert of each query's true domain (the fallback for a domain no expert covers); it never falls back
    otherwise, and needs no embedding."""

    needs_embedding = False

    def route(self, inputs: RouterInputs) -> Routing:
        if inputs.domains is None:
            raise ValueError("the oracle router needs the queries' true domains (RouterInputs.domains)")
        target = self.experts.targets(inputs.domains)
        return Routing(_one_hot(target, len(self.experts)), np.ones(len(target), dtype=np.float32))

    def decide(self, inputs: RouterInputs, far: np.ndarray | None = None) -> Decision:
        """The true domain's expert, whatever ``far`` says."""
        return super().decide(inputs, None)


@_register("confidence")
class ConfidenceRouter(Router):
    """Every routable expert searches its own index; the one whose top-k scores are most confident wins.

    ``measure="margin"``: ``s_1 − s_2``; ``"entropy"``: ``1 − H(p) / log k`` with ``p = softmax(s_{1..k} / T)``,
    ``T = temperature`` (1 for k equal scores, 0 for one dominant score). Scores of different experts are compared
    as they are: the measure assumes their similarities are on one scale (cosines of unit descriptors).
    """

    needs_embedding = False
    searches_all = True

    def __init__(
        self, *, measure: str = "margin", k: int = 5, temperature: float = 0.05, min_confidence: float | None = None
    ) -> None:
        super().__init__(min_confidence=min_confidence)
        if measure not in ("margin", "entropy"):
            raise ValueError(f"confidence measure must be 'margin' or 'entropy', got {measure!r}")
        if k < 2 or temperature <= 0:
            raise ValueError(f"need k >= 2 scores and a positive temperature, got k={k}, temperature={temperature}")
        self.measure, self.k, self.temperature = measure, k, temperature

    def options(self) -> dict[str, Any]:
        return super().options() | {"measure": self.measure, "k": self.k, "temperature": self.temperature}

    def confidences(self, scores: np.ndarray) -> np.ndarray:
        """``(n, k') -> (n,)`` confidence of top-k scores (best first, ``k' >= 2``; the first ``k`` are used)."""
        s = np.asarray(scores, dtype=np.float64)[:, : self.k]
        if s.shape[1] < 2:
            raise ValueError(f"the confidence router needs at least 2 scores per query, got {s.shape[1]}")
        if self.measure == "margin":
            return (s[:, 0] - s[:, 1]).astype(np.float32)
        p = torch.softmax(torch.from_numpy(s / self.temperature), dim=1).numpy()
        entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(1)
        return (1 - entropy / np.log(s.shape[1])).astype(np.float32)

    def route(self, inputs: RouterInputs) -> Routing:
        routable = self.experts.routable
        if inputs.expert_scores is None or any(e not in inputs.expert_scores for e in routable):
            raise ValueError(f"the confidence router needs the top-k scores of every routable expert {routable}")
        conf = np.stack([self.confidences(inputs.expert_scores[e]) for e in routable], axis=1)
        best = conf.argmax(1)
        positions = np.array([self.experts.position(e) for e in routable])
        return Routing(_one_hot(positions[best], len(self.experts)), conf.max(1))


class _TrainedRouter(Router):
    """A router with a torch module trained by AdamW on batches of training images."""

    def __init__(
        self,
        *,
        steps: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        seed: int,
        min_confidence: float | None,
    ) -> None:
        super().__init__(min_confidence=min_confidence)
        if steps < 1 or batch_size < 2 or lr <= 0 or weight_decay < 0:
            raise ValueError(
                f"need steps >= 1, batch_size >= 2, lr > 0 and weight_decay >= 0; got {steps}, {batch_size}, {lr}, "
                f"{weight_decay}"
            )
        self.steps, self.batch_size, self.lr, self.weight_decay, self.seed = steps, batch_size, lr, weight_decay, seed
        self.net: nn.Module | None = None
        self.losses: list[float] = []

    def options(self) -> dict[str, Any]:
        return super().options() | {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
        }

    @property
    def parameters(self) -> int:
        return 0 if self.net is None else sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def _train(self, loss: Callable[[np.ndarray], Tensor], batches: np.ndarray, desc: str, progress: bool) -> None:
        """One AdamW step on ``loss(batch indices)`` per row of ``batches (steps, B)``."""
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.net.train()
        for batch in tqdm(batches, desc=desc, unit="step", disable=not progress):
            value = loss(batch)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            self.losses.append(value.item())
        self.net.eval()

    def _probabilities(self, embedding: np.ndarray) -> np.ndarray:
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(experts, training) first")
        with torch.no_grad():
            return torch.softmax(self.net(torch.as_tensor(embedding, dtype=torch.float32)), dim=1).numpy()


@_register("classifier")
class ClassifierRouter(_TrainedRouter):
    """A linear softmax classifier of the training images' domains on the shared embedding (cross-entropy, batches
    with every domain equally often); a query goes to the expert of its most probable domain, with that probability
    as confidence."""

    def __init__(
        self,
        *,
        steps: int = 200,
        batch_size: int = 256,
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        seed: int = 0,
        min_confidence: float | None = None,
    ) -> None:
        super().__init__(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            min_confidence=min_confidence,
        )
        self.domains: list[str] = []

    def fit(self, experts: ExpertSet, training: RouterTraining | None = None, *, progress: bool = True) -> None:
        super().fit(experts, training, progress=progress)
        if training is None:
            raise ValueError("the classifier router learns from training images: pass RouterTraining")
        self.domains = [str(d) for d in np.unique(training.domains)]
        self._expert_of = np.array([experts.position(experts.expert_of(d)) for d in self.domains])
        domain = np.searchsorted(self.domains, training.domains)
        torch.manual_seed(self.seed)
        self.net = nn.Linear(training.embedding.shape[1], len(self.domains))
        z = torch.as_tensor(training.embedding, dtype=torch.float32)
        y = torch.as_tensor(domain, dtype=torch.int64)
        per_domain = max(1, self.batch_size // len(self.domains))
        batches = ClassBalancedSampler(
            domain,
            classes_per_batch=len(self.domains),
            samples_per_class=per_domain,
            seed=self.seed,
            num_batches=self.steps,
        ).epoch_batches(0)
        self._train(lambda b: F.cross_entropy(self.net(z[b]), y[b]), batches, "domain classifier", progress)

    def route(self, inputs: RouterInputs) -> Routing:
        p = self._probabilities(inputs.embedding)
        return Routing(_one_hot(self._expert_of[p.argmax(1)], len(self.experts)), p.max(1))


def mixture_retrieval_loss(weights: Tensor, similarities: Tensor, labels: Tensor, temperature: float = 0.05) -> Tensor:
    """Softmax cross-entropy of mixed scores over each batch item's positives.

    ``weights (B, E)`` gate each item's experts, ``similarities (E, B, B)`` are each expert's cosines between the
    items; item i scores item j by ``S_ij = Σ_e w_ie sim_e[i, j]`` and the loss is the mean over items with a
    positive of ``−log Σ_{j ∈ pos(i)} softmax_j(S_i / T)`` over ``j ≠ i``.
    """
    pos, _ = label_masks(labels)
    scores = torch.einsum("ie,eij->ij", weights, similarities) / temperature
    scores = scores.masked_fill(torch.eye(len(labels), dtype=torch.bool, device=scores.device), -torch.inf)
    anchors = pos.any(1)
    terms = torch.logsumexp(scores, 1) - torch.logsumexp(scores.masked_fill(~pos, -torch.inf), 1)
    return terms[anchors].mean() if anchors.any() else weights.sum() * 0


@_register("gating")
class GatingRouter(_TrainedRouter):
    """A gating network on the shared embedding whose softmax weighs the routable experts: linear, as the gates of
    Jacobs et al. (1991) and Shazeer et al. (ICLR 2017), or ``Linear(D_r, hidden) → ReLU → Linear(hidden, E)`` with
    ``hidden > 0``; trained with :func:`mixture_retrieval_loss` at ``temperature`` on P x K batches of training
    images (``per_class`` images of each class).

    The experts are frozen on purpose: they are trained specialists; only the gate learns, from their descriptors of
    the training images (so their gradients are never needed). ``soft=True`` searches the mixture at test time;
    otherwise each query goes to its argmax expert. The confidence is the largest weight.
    """

    def __init__(
        self,
        *,
        hidden: int = 0,
        steps: int = 300,
        batch_size: int = 128,
        per_class: int = 4,
        temperature: float = 0.1,
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        soft: bool = False,
        seed: int = 0,
        min_confidence: float | None = None,
    ) -> None:
        super().__init__(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            min_confidence=min_confidence,
        )
        if hidden < 0 or per_class < 2 or temperature <= 0:
            raise ValueError(
                f"need hidden >= 0, per_class >= 2, temperature > 0; got {hidden}, {per_class}, {temperature}"
            )
        self.hidden, self.per_class, self.temperature, self.soft = hidden, per_class, temperature, soft

    @property
    def searches_all(self) -> bool:  # type: ignore[override]
        """A soft mixture embeds and searches every routable expert."""
        return self.soft

    def options(self) -> dict[str, Any]:
        return super().options() | {
            "hidden": self.hidden,
            "per_class": self.per_class,
            "temperature": self.temperature,
            "soft": self.soft,
        }

    def fit(self, experts: ExpertSet, training: RouterTraining | None = None, *, progress: bool = True) -> None:
        super().fit(experts, training, progress=progress)
        routable = experts.routable
        if training is None or any(e not in training.experts for e in routable):
            raise ValueError(f"the gating router learns from every routable expert's training descriptors {routable}")
        self._positions = np.array([experts.position(e) for e in routable])
        torch.manual_seed(self.seed)
        d = training.embedding.shape[1]
        self.net = (
            nn.Sequential(nn.Linear(d, self.hidden), nn.ReLU(), nn.Linear(self.hidden, len(routable)))
            if self.hidden
            else nn.Linear(d, len(routable))
        )
        z = torch.as_tensor(training.embedding, dtype=torch.float32)
        f = [F.normalize(torch.as_tensor(training.experts[e], dtype=torch.float32), dim=1) for e in routable]
        labels = torch.as_tensor(training.labels, dtype=torch.int64)
        n_classes = len(np.unique(training.labels))
        batches = ClassBalancedSampler(
            training.labels,
            classes_per_batch=min(n_classes, max(1, self.batch_size // self.per_class)),
            samples_per_class=self.per_class,
            seed=self.seed,
            num_batches=self.steps,
        ).epoch_batches(0)

        def loss(batch: np.ndarray) -> Tensor:
            batch = np.unique(batch)  # a class smaller than per_class is drawn with repeats: keep one of each
            sims = torch.stack([x[batch] @ x[batch].T for x in f])  # frozen experts: constants of the graph
            return mixture_retrieval_loss(torch.softmax(self.net(z[batch]), 1), sims, labels[batch], self.temperature)

        self._train(loss, batches, "gating network", progress)

    def route(self, inputs: RouterInputs) -> Routing:
        p = self._probabilities(inputs.embedding)
        weights = np.zeros((len(p), len(self.experts)), dtype=np.float32)
        weights[:, self._positions] = p
        return Routing(weights, p.max(1))
