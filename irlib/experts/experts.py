"""Specialist embeddings (experts), the domains each one serves, and their database indexes.

An :class:`Expert` is one embedding of a UnED benchmark's images (a trained model's descriptors, or a head on another
expert's descriptors) with the domains it specialises in. An :class:`ExpertSet` says which expert serves each domain:
the most specialised one covering it, or the fallback expert where none does. An :class:`ExpertIndex` holds every
expert's database descriptors side by side, built once, and searches one expert's columns or a weighted mixture of
several (``Σ_e w_e ⟨f_e(q), f_e(x)⟩``), exactly, ties by the lower database id (:func:`irlib.eval.search.exact_top_k`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irlib.data.uned import DOMAINS
from irlib.eval.search import exact_top_k


@dataclass(frozen=True, eq=False)
class Expert:
    """One embedding of the benchmark's images and the UnED domains it specialises in.

    Attributes:
        name: unique within its :class:`ExpertSet`.
        domains: the domains it serves; empty for a generalist (a universal model used as fallback or baseline).
        queries: ``(n_queries, D)`` descriptors of the benchmark's queries, in query order.
        database: ``(N, D)`` descriptors of the benchmark's database (the merged UnED index), in database order.
        train: ``(n_train, D)`` descriptors of the router-training images (the gating router needs them), or None.
        parameters: parameters this expert adds to those of ``requires``.
        embed_ms: CPU milliseconds to embed one query on top of ``requires`` (measured), None where unknown.
        requires: experts whose descriptors this one is computed from (a head on a shared backbone).
        info: what a run records of it (model config, whitening settings, ...).
    """

    name: str
    domains: tuple[str, ...]
    queries: np.ndarray
    database: np.ndarray
    train: np.ndarray | None = None
    parameters: int = 0
    embed_ms: float | None = None
    requires: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "requires", tuple(self.requires))
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"expert {self.name!r}: domains must be distinct names from {DOMAINS}, got {self.domains}")
        for part in ("queries", "database", "train"):
            array = getattr(self, part)
            if array is None:
                continue
            array = np.asarray(array)
            if array.ndim != 2 or array.shape[1] != np.shape(self.database)[-1]:
                raise ValueError(
                    f"expert {self.name!r}: {part} must be (n, D) with the database's D = {np.shape(self.database)[-1]}"
                    f", got shape {array.shape}"
                )
            object.__setattr__(self, part, array)
        if self.parameters < 0 or (self.embed_ms is not None and self.embed_ms < 0):
            raise ValueError(f"expert {self.name!r}: parameters and embed_ms must be non-negative")

    @property
    def dim(self) -> int:
        """Descriptor size D."""
        return int(self.database.shape[1])


class ExpertSet:
    """Experts of one benchmark: ordered with the domain experts (``routable``) first, then the generalists.

    The expert of a domain is the covering expert with the fewest domains (a single-domain expert before a
    domain-group one); two equally specialised experts of one domain are ambiguous and refused. A domain no expert
    covers is served by ``fallback`` (e.g. the universal model), and is an error without one. The fallback also
    serves queries a router sends away (:meth:`irlib.experts.routers.Router.decide`).
    """

    def __init__(self, experts: Sequence[Expert], fallback: str | None = None) -> None:
        names = [e.name for e in experts]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"experts need distinct names, got {names}")
        ordered = [e for e in experts if e.domains] + [e for e in experts if not e.domains]
        self._experts = {e.name: e for e in ordered}
        if fallback is not None and fallback not in self._experts:
            raise ValueError(f"fallback expert {fallback!r} is not one of the experts {names}")
        self.fallback = fallback
        self._check_shapes(ordered)
        for e in ordered:
            missing = [r for r in e.requires if r not in self._experts]
            if missing:
                raise ValueError(f"expert {e.name!r} requires {missing}, which are not experts of this set")
            if e.name in self.closure(e.requires):
                raise ValueError(f"expert {e.name!r} requires itself (through {list(e.requires)})")
        self._of_domain: dict[str, str] = {}
        for d in DOMAINS:
            covering = [e for e in ordered if d in e.domains]
            if not covering:
                continue
            fewest = min(len(e.domains) for e in covering)
            best = [e.name for e in covering if len(e.domains) == fewest]
            if len(best) > 1:
                raise ValueError(f"domain {d!r} has equally specialised experts {best}: which serves it is ambiguous")
            self._of_domain[d] = best[0]

    @staticmethod
    def _check_shapes(experts: Sequence[Expert]) -> None:
        for part in ("queries", "database", "train"):
            rows = {e.name: len(getattr(e, part)) for e in experts if getattr(e, part) is not None}
            if len(set(rows.values())) > 1:
                raise ValueError(f"experts describe different numbers of {part} images: {rows}")

    @property
    def names(self) -> list[str]:
        """Expert names: the routable ones first."""
        return list(self._experts)

    @property
    def routable(self) -> list[str]:
        """Experts covering at least one domain, the ones a router chooses among."""
        return [n for n, e in self._experts.items() if e.domains]

    def __getitem__(self, name: str) -> Expert:
        return self._experts[self._known(name)]

    def _known(self, name: str) -> str:
        if name not in self._experts:
            raise KeyError(f"no expert {name!r}; experts: {self.names}")
        return name

    def __iter__(self) -> Iterator[Expert]:
        return iter(self._experts.values())

    def __len__(self) -> int:
        return len(self._experts)

    def position(self, name: str) -> int:
        """The expert's column in routing weights ``(n, len(self))``."""
        return self.names.index(self._known(name))

    def expert_of(self, domain: str) -> str:
        """The expert serving ``domain``: its most specialised expert, else the fallback."""
        domain = str(domain)
        if domain in self._of_domain:
            return self._of_domain[domain]
        if self.fallback is None:
            raise ValueError(
                f"domain {domain!r} has no expert (experts cover {sorted(self._of_domain)}) and no fallback expert "
                f"is named"
            )
        return self.fallback

    def targets(self, domains: Sequence[str] | np.ndarray) -> np.ndarray:
        """``(n,)`` int64 position of the expert serving each of ``domains`` (a routing's target)."""
        position = {d: self.position(self.expert_of(d)) for d in np.unique(np.asarray(domains, dtype=str))}
        return np.array([position[d] for d in np.asarray(domains, dtype=str)], dtype=np.int64)

    def closure(self, names: Sequence[str]) -> list[str]:
        """``names`` and every expert they require, directly or not, in set order."""
        needed: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack += self[name].requires
        return [n for n in self.names if n in needed]

    def parameters(self, names: Sequence[str]) -> int:
        """Parameters of the experts ``names`` with what they require, each counted once."""
        return sum(self[n].parameters for n in self.closure(names))

    def embed_ms(self, names: Sequence[str]) -> float | None:
        """CPU ms to embed one query with the experts ``names`` and what they require (None if one is unknown)."""
        times = [self[n].embed_ms for n in self.closure(names)]
        return None if any(t is None for t in times) else float(sum(times))


class ExpertIndex:
    """Every expert's database descriptors, built once: one float32 ``(N, Σ D_e)`` array, expert after expert in
    :attr:`ExpertSet.names` order, each expert's index a view of its columns."""

    def __init__(self, experts: ExpertSet) -> None:
        self.names = experts.names
        dims = [experts[n].dim for n in self.names]
        self.offsets = np.cumsum([0, *dims])
        self.database = np.concatenate([np.asarray(experts[n].database, dtype=np.float32) for n in self.names], axis=1)

    def _columns(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def view(self, name: str) -> np.ndarray:
        """``(N, D_e)`` database descriptors of one expert (a view, no copy)."""
        return self.database[:, self._columns(name)]

    def nbytes(self, names: Sequence[str]) -> int:
        """Bytes of the indexes of experts ``names``."""
        return int(sum(self.view(n).nbytes for n in set(names)))

    def search(self, name: str, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``depth`` ``(scores, ids)`` of ``queries (n, D_e)`` in one expert's index, best first."""
        return exact_top_k(queries, self.view(name), depth)

    def search_routed(
        self, weights: np.ndarray, queries: Sequence[np.ndarray], depth: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``depth`` ``(scores, ids)`` of routed queries: ``weights (n, E)`` over the experts (rows summing to
        1), ``queries`` each expert's ``(n, D_e)`` query descriptors (only the used rows are read).

        A one-hot row searches its expert's index alone; any other row scores database item x by
        ``Σ_e w_e ⟨f_e(q), f_e(x)⟩``, the inner product of the weighted query columns with the stacked index over
        the span of experts it weighs (experts in between weigh 0), so the mixture is exact and copies nothing.
        """
        weights = np.asarray(weights, dtype=np.float32)
        n = len(weights)
        if weights.shape != (n, len(self.names)) or len(queries) != len(self.names):
            raise ValueError(f"need weights (n, {len(self.names)}) and one query array per expert {self.names}")
        if n and (weights.min() < 0 or not np.allclose(weights.sum(1), 1, atol=1e-4)):
            raise ValueError("routing weights must be non-negative rows summing to 1")
        depth = min(depth, len(self.database))
        scores = np.full((n, depth), -np.inf, dtype=np.float32)
        ids = np.full((n, depth), -1, dtype=np.int64)
        hard = weights.max(1) == 1
        choice = weights.argmax(1)
        for e, name in enumerate(self.names):
            rows = np.flatnonzero(hard & (choice == e))
            if rows.size:
                scores[rows], ids[rows] = self.search(name, np.asarray(queries[e])[rows], depth)
        rows = np.flatnonzero(~hard)
        if rows.size:
            used = np.flatnonzero((weights[rows] > 0).any(0))
            span = range(int(used.min()), int(used.max()) + 1)
            mixed = np.concatenate(
                [weights[rows, e, None] * np.asarray(queries[e], dtype=np.float32)[rows] for e in span], axis=1
            )
            columns = slice(int(self.offsets[span.start]), int(self.offsets[span.stop]))
            scores[rows], ids[rows] = exact_top_k(mixed, self.database[:, columns], depth)
        return scores, ids
