"""Epoch-aware, DDP-sharded, resumable index samplers for training.

The samplers draw each epoch's order from ``numpy.random.default_rng([seed, epoch])``, the same on every replica,
and give each replica a disjoint, equal-size share of it. Call ``set_epoch(epoch)`` with the same value on every
rank before each epoch: SpCa's ``set_epoch`` never ran (it tested ``DataLoader.sampler`` while a ``batch_sampler``
was set) and, had it run, used ``epoch + 1 + rank``, which breaks the sharding (``spca-training.md`` bug 5).
Pass the sampler as ``DataLoader(sampler=...)`` so ``loader.sampler`` is this object.

Resuming mid-epoch: save ``sampler.state_dict(consumed)``, with ``consumed`` the number of indices this replica's
training loop has *used* in the current epoch (counted from the start of the epoch, so prefetched but unused batches
are replayed). After ``load_state_dict`` the remaining indices of that epoch come in the same order; the global batch
is ``per-replica batch x num_replicas``. ``len(sampler)`` is what the next iteration yields.
"""

from __future__ import annotations

import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = [
    "DOMAIN_SAMPLING",
    "TUPLE_SIZE",
    "ClassBalancedSampler",
    "DomainBatchSampler",
    "ShuffledSampler",
    "TupleSampler",
    "read_predictions",
]


class _EpochSampler(Sampler[int], ABC):
    """Shared epoch / start-index / state handling; subclasses implement :meth:`epoch_indices`."""

    def __init__(self, *, seed: int, num_replicas: int, rank: int) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_index = 0

    @property
    @abstractmethod
    def num_samples(self) -> int:
        """Indices per replica in a full epoch."""

    @abstractmethod
    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This replica's full index order for ``epoch``."""

    def set_epoch(self, epoch: int, start_index: int | None = None) -> None:
        """Select the epoch; ``start_index`` skips that many of this replica's indices.

        With ``start_index=None`` a position restored by :meth:`load_state_dict` is kept when ``epoch`` is the
        restored epoch (so the usual ``for epoch ...: set_epoch(epoch)`` loop resumes correctly); another epoch
        starts at 0.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        if start_index is None:
            start_index = self.start_index if epoch == self.epoch else 0
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start_index must be in [0, {self.num_samples}], got {start_index}")
        self.epoch = epoch
        self.start_index = start_index

    def __len__(self) -> int:
        return self.num_samples - self.start_index

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_indices(self.epoch)[self.start_index :]
        yield from order.tolist()
        self.start_index = 0  # a resume offset applies to one pass

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """The position after ``consumed`` indices of this epoch (counted from its start) and the settings that
        must match on resume. Identical on every replica."""
        if not 0 <= consumed <= self.num_samples:
            raise ValueError(f"consumed must be in [0, {self.num_samples}], got {consumed}")
        return {"epoch": self.epoch, "start_index": consumed, **self._config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch at the saved position; settings that changed raise ValueError."""
        changed = {k: (state.get(k), v) for k, v in self._config().items() if state.get(k) != v}
        if changed:
            raise ValueError(f"sampler state does not match this sampler (saved, now): {changed}")
        self.set_epoch(int(state["epoch"]), int(state["start_index"]))

    def _config(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_replicas": self.num_replicas}


class ShuffledSampler(_EpochSampler):
    """A new random permutation of ``range(n)`` every epoch, sharded like ``DistributedSampler``.

    Replica ``rank`` takes positions ``rank, rank + R, ...`` of the permutation. With ``drop_last=False`` the
    permutation is padded with its own first ``(-n) % R`` indices so that all shares are equal (those few indices
    are seen twice in the epoch); with ``drop_last=True`` the last ``n % R`` are dropped instead.
    """

    def __init__(self, n: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0, drop_last: bool = False) -> None:
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        self.n = n
        self.drop_last = drop_last
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank)

    @property
    def num_samples(self) -> int:
        """``ceil(n / R)``, or ``floor(n / R)`` with ``drop_last``."""
        r = self.num_replicas
        return self.n // r if self.drop_last else -(-self.n // r)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This replica's strided share of the epoch's (padded or truncated) permutation."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        total = self.num_samples * self.num_replicas
        if total > self.n:
            perm = np.resize(perm, total)  # repeats from the start
        return perm[self.rank : total : self.num_replicas]

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "n": self.n, "drop_last": self.drop_last}


class ClassBalancedSampler(_EpochSampler):
    """P x K sampling: every batch holds ``classes_per_batch`` (P) distinct classes with ``samples_per_class`` (K)
    images each, laid out as P runs of K consecutive indices; use ``DataLoader(batch_size=sampler.batch_size)``.

    An epoch has ``num_batches`` global batches (default ``len(labels) // (P K)``, rounded down to a multiple of
    ``num_replicas``); replica ``rank`` takes batches ``rank, rank + R, ...``, so batches are never shared and the
    global batch is ``P K R``. Classes are visited in a fresh random order each epoch, cycling through all classes
    before any repeats (so each class gets about ``num_batches P / C`` slots). Within a slot the K images are drawn
    uniformly without replacement, or **with replacement** when the class has fewer than K images.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        *,
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        num_batches: int | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        p, k = classes_per_batch, samples_per_class
        if p < 1 or k < 1:
            raise ValueError(f"classes_per_batch and samples_per_class must be >= 1, got {p}, {k}")
        self._order = np.argsort(self.labels, kind="stable")
        self.classes, self._starts, self._sizes = np.unique(
            self.labels[self._order], return_index=True, return_counts=True
        )
        if len(self.classes) < p:
            raise ValueError(f"classes_per_batch={p} but the labels have only {len(self.classes)} classes")
        self.classes_per_batch = p
        self.samples_per_class = k
        wanted = len(self.labels) // (p * k) if num_batches is None else num_batches
        self.num_batches = wanted - wanted % num_replicas
        if self.num_batches < 1:
            raise ValueError(f"{wanted} batches of {p}x{k} cannot give every one of {num_replicas} replicas one")
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank)

    @property
    def batch_size(self) -> int:
        """Per-replica batch size P K."""
        return self.classes_per_batch * self.samples_per_class

    @property
    def num_samples(self) -> int:
        """This replica's batches times P K."""
        return self.num_batches // self.num_replicas * self.batch_size

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """All replicas' batches of ``epoch``: ``(num_batches, P K)`` dataset indices."""
        rng = np.random.default_rng([self.seed, epoch])
        slots = self._class_stream(rng)  # (num_batches * P,) class positions
        pos = _draw_within(rng, self._sizes[slots], self.samples_per_class)
        idx = self._order[self._starts[slots][:, None] + pos]
        return idx.reshape(self.num_batches, self.batch_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This replica's batches (``rank, rank + R, ...``), flattened."""
        return self.epoch_batches(epoch)[self.rank :: self.num_replicas].reshape(-1)

    def _class_stream(self, rng: np.random.Generator) -> np.ndarray:
        """Concatenated class permutations, each reordered so that no batch straddling two permutations repeats a
        class (classes already in the open batch move to the end of the next permutation)."""
        p, n_classes = self.classes_per_batch, len(self.classes)
        needed = self.num_batches * p
        chunks: list[np.ndarray] = []
        total = 0
        while total < needed:
            perm = rng.permutation(n_classes)
            tail = total % p
            if tail:
                clash = np.isin(perm, chunks[-1][-tail:])
                perm = np.concatenate([perm[~clash], perm[clash]])
            chunks.append(perm)
            total += n_classes
        return np.concatenate(chunks)[:needed]

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "n": len(self.labels),
            "labels_crc32": zlib.crc32(self.labels.tobytes()),
            "classes_per_batch": self.classes_per_batch,
            "samples_per_class": self.samples_per_class,
            "num_batches": self.num_batches,
        }


DOMAIN_SAMPLING = ("dataset_size", "balanced", "round_robin")
"""Strategies of :class:`DomainBatchSampler` (UnED ``sampling_utils.py``; its ``specialist_top_steps`` is not
offered)."""


class DomainBatchSampler(_EpochSampler):
    """Batches of one domain each, the domain of each optimiser step chosen by a strategy of the UnED baselines
    (nikosips/Universal-Image-Embeddings ``sampling_utils.py``, ``give_ds_indices_per_step``):

    * ``"dataset_size"``: domain d gets ``floor(S n_d / N)`` of the epoch's S steps, the last domain the rest, in
      random order;
    * ``"balanced"``: every domain gets ``floor(S / D)`` steps, the last domain the rest, in random order;
    * ``"round_robin"``: step t of the run (counted over epochs) goes to domain ``t mod D``.

    Within a domain, images come from consecutive random permutations of its images (a fresh one when one runs
    out, so a small domain cycles and a batch may straddle two permutations). One step's global batch is
    ``batch_size x num_replicas`` images of its domain; replica ``rank`` takes the ``rank``-th slice of
    ``batch_size``, so all replicas (and all micro-batches of an accumulated step) see the same domain. An epoch has
    ``num_batches`` steps (default ``N // (batch_size R)``, the official ``steps_per_epoch``).

    Differences from the official sampler: it draws the whole run's schedule once (``jax.random.PRNGKey(0)``) and
    streams each domain through a 256-image shuffle buffer; here each epoch's schedule and orders come from
    ``numpy.random.default_rng([seed, epoch])``, so a run is resumable at any step and the same on any layout.
    """

    def __init__(
        self,
        domains: Sequence[int] | np.ndarray,
        *,
        batch_size: int,
        strategy: str = "dataset_size",
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        num_batches: int | None = None,
    ) -> None:
        self.domains = np.asarray(domains, dtype=np.int64).reshape(-1)
        if strategy not in DOMAIN_SAMPLING:
            raise ValueError(f"domain sampling strategy must be one of {DOMAIN_SAMPLING}, got {strategy!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not len(self.domains) or self.domains.min() < 0:
            raise ValueError("domains must hold one domain index >= 0 per image")
        self.strategy = strategy
        self.batch_size = batch_size
        self._order = np.argsort(self.domains, kind="stable")
        self.present, self._starts, self.sizes = np.unique(
            self.domains[self._order], return_index=True, return_counts=True
        )
        self.num_batches = len(self.domains) // (batch_size * num_replicas) if num_batches is None else num_batches
        if self.num_batches < 1:
            raise ValueError(
                f"{len(self.domains)} images cannot fill one step of {batch_size} x {num_replicas} replicas"
            )
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank)

    @property
    def num_samples(self) -> int:
        """Steps times this replica's ``batch_size``."""
        return self.num_batches * self.batch_size

    def epoch_domains(self, epoch: int) -> np.ndarray:
        """``(num_batches,)``: the domain (a value of ``domains``) of every step of ``epoch``."""
        return self.present[self._schedule(np.random.default_rng([self.seed, epoch]), epoch)]

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """All replicas' batches of ``epoch``: ``(num_batches, batch_size R)`` dataset indices."""
        rng = np.random.default_rng([self.seed, epoch])
        steps = self._schedule(rng, epoch)
        width = self.batch_size * self.num_replicas
        out = np.empty((self.num_batches, width), dtype=np.int64)
        for k, (start, size) in enumerate(zip(self._starts, self.sizes, strict=True)):
            rows = np.flatnonzero(steps == k)
            need = len(rows) * width
            stream = np.concatenate([rng.permutation(size) for _ in range(-(-need // size))])[:need]
            out[rows] = self._order[start + stream].reshape(len(rows), width)
        return out

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This replica's slice of every step's batch, step after step."""
        b = self.batch_size
        return self.epoch_batches(epoch)[:, self.rank * b : (self.rank + 1) * b].reshape(-1)

    def _schedule(self, rng: np.random.Generator, epoch: int) -> np.ndarray:
        """The position (in ``present``) of each step's domain."""
        n_steps, n_domains = self.num_batches, len(self.present)
        if self.strategy == "round_robin":
            return (epoch * n_steps + np.arange(n_steps)) % n_domains
        share = self.sizes / self.sizes.sum() if self.strategy == "dataset_size" else np.full(n_domains, 1 / n_domains)
        counts = np.floor(n_steps * share).astype(np.int64)
        counts[-1] = n_steps - counts[:-1].sum()
        return rng.permutation(np.repeat(np.arange(n_domains), counts))

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "n": len(self.domains),
            "domains_crc32": zlib.crc32(self.domains.tobytes()),
            "batch_size": self.batch_size,
            "strategy": self.strategy,
            "num_batches": self.num_batches,
        }


TUPLE_SIZE = 8
"""Images per tuple of CFCD's sampler: anchor, positive, 6 negatives (``DATA_LOADER.TUPLE_SIZE``)."""


class TupleSampler(_EpochSampler):
    """CFCD's tuple sampler (``bassyess/CFCD`` ``datasets/distributed_tuple_hem_sampler.py``), with optional hard
    negatives: runs of ``tuple_size`` (S) consecutive indices ``[anchor, positive, S - 2 negatives]``, the positive of
    the anchor's class and every negative of another class; use a per-process batch that is a multiple of S.

    Images are drawn without replacement from per-class pools shuffled at the start of a *round*; a round ends when
    no class has 2 images left, and a new one starts from full pools (an epoch spans one or two rounds). Each tuple:

    * anchor class uniform among the classes with >= 2 unused images (classes with fewer than 2 images, or without
      S - 2 images outside them, never anchor); anchor and positive are two of its unused images;
    * with ``predictions`` (each image's predicted class, e.g. a stage-1 model's arg-max; :func:`read_predictions`):
      if the anchor is correctly predicted, each negative slot takes with probability :attr:`P_FALSE_POSITIVE` (0.5)
      a *false positive of the anchor's class* (an image of another class predicted as it); if the anchor is
      predicted as c' != c, the positive is a correctly predicted image of c when one is left, and each slot takes a
      false positive of c with probability :attr:`P_FALSE_POSITIVE_MISSED` (0.33), otherwise with probability
      :attr:`P_CONFUSED_CLASS` (0.5) an image of c';
    * the slots left take one image each from distinct random classes other than the anchor's (cycling through them
      only when fewer classes than slots are left); a tuple that cannot be completed ends the round.

    An epoch has ``num_tuples`` tuples (default ``len(labels) // S``, rounded down to a multiple of ``num_replicas``)
    drawn from ``numpy.random.default_rng([seed, epoch])``; replica ``rank`` takes tuples ``rank, rank + R, ...``,
    so shares are disjoint whole tuples. The predictions are fixed for the run, as in CFCD.

    Differences from the official sampler: it draws with Python's ``random`` seeded ``seed + epoch`` (so the orders
    differ), gives each rank a contiguous block of tuples, has ``ceil(n / (R S)) R`` tuples per epoch, lets any class
    with 2 images anchor, and, its main bug, only runs with more than one GPU: a single-GPU run falls back to a plain
    shuffled loader, whose batches are not tuples at all. This sampler always forms tuples.
    """

    P_FALSE_POSITIVE = 0.5
    P_FALSE_POSITIVE_MISSED = 0.33
    P_CONFUSED_CLASS = 0.5

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        *,
        tuple_size: int = TUPLE_SIZE,
        predictions: Sequence[int] | np.ndarray | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        num_tuples: int | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if tuple_size < 3:
            raise ValueError(f"tuple_size must be >= 3 (anchor, positive, negatives), got {tuple_size}")
        if len(self.labels) and self.labels.min() < 0:
            raise ValueError("labels must be non-negative")
        self.tuple_size = tuple_size
        self.predictions: np.ndarray | None = None
        if predictions is not None:
            self.predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
            if len(self.predictions) != len(self.labels) or (len(self.labels) and self.predictions.min() < 0):
                raise ValueError(
                    f"predictions must hold one class >= 0 per image ({len(self.labels)}), got "
                    f"{len(self.predictions)} values"
                )
        counts = np.bincount(self.labels) if len(self.labels) else np.zeros(0, dtype=np.int64)
        self._anchor_classes = np.flatnonzero((counts >= 2) & (len(self.labels) - counts >= tuple_size - 2))
        if not len(self._anchor_classes):
            raise ValueError(
                f"no class can anchor a {tuple_size}-tuple: one needs >= 2 images and >= {tuple_size - 2} images of "
                f"other classes"
            )
        wanted = len(self.labels) // tuple_size if num_tuples is None else num_tuples
        self.num_tuples = wanted - wanted % num_replicas
        if self.num_tuples < 1:
            raise ValueError(f"{wanted} tuples of {tuple_size} cannot give every one of {num_replicas} replicas one")
        self._cache: tuple[int, np.ndarray] | None = None
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank)

    @property
    def num_samples(self) -> int:
        """This replica's tuples times S."""
        return self.num_tuples // self.num_replicas * self.tuple_size

    def epoch_tuples(self, epoch: int) -> np.ndarray:
        """All replicas' tuples of ``epoch``: ``(num_tuples, S)`` dataset indices (the last epoch's is cached)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        uniform = _Uniforms(rng)
        out: list[int] = []
        draw: _TupleRound | None = None
        while len(out) < self.num_tuples * self.tuple_size:
            if draw is None or not draw.anchors:
                draw = _TupleRound(self, rng)
            one = draw.tuple(uniform)
            if one is None:
                draw = None  # the round ran out of negatives: start a new one
                continue
            out.extend(one)
        tuples = np.asarray(out, dtype=np.int64).reshape(self.num_tuples, self.tuple_size)
        self._cache = (epoch, tuples)
        return tuples

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This replica's tuples (``rank, rank + R, ...``), flattened."""
        return self.epoch_tuples(epoch)[self.rank :: self.num_replicas].reshape(-1)

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "n": len(self.labels),
            "labels_crc32": zlib.crc32(self.labels.tobytes()),
            "tuple_size": self.tuple_size,
            "num_tuples": self.num_tuples,
            "predictions_crc32": None if self.predictions is None else zlib.crc32(self.predictions.tobytes()),
        }


class _Uniforms:
    """Python floats in [0, 1) from a numpy generator, drawn in blocks (one scalar call per draw is slow)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.block, self.k = rng, [], 0

    def __call__(self) -> float:
        if self.k == len(self.block):
            self.block, self.k = self.rng.random(4096).tolist(), 0
        self.k += 1
        return self.block[self.k - 1]


class _ClassSet:
    """A set of class ids with O(1) removal and uniform choice (swap-remove over a list)."""

    def __init__(self, members: Sequence[int], size: int) -> None:
        self.items = list(members)
        self.pos = [-1] * size
        for k, c in enumerate(self.items):
            self.pos[c] = k

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, c: int) -> bool:
        return self.pos[c] >= 0

    def discard(self, c: int) -> None:
        k = self.pos[c]
        if k < 0:
            return
        last = self.items.pop()
        if last != c:
            self.items[k], self.pos[last] = last, k
        self.pos[c] = -1

    def choice(self, u: float) -> int:
        return self.items[min(int(u * len(self.items)), len(self.items) - 1)]


class _Pools:
    """Image indices grouped by a key (class, or predicted class), each group in random order; pops skip images
    already used elsewhere in the round."""

    def __init__(self, rng: np.random.Generator, images: np.ndarray, keys: np.ndarray, size: int) -> None:
        order = np.lexsort((rng.random(len(images)), keys))
        self.items = images[order].tolist()
        ends = np.cumsum(np.bincount(keys, minlength=size))
        self.start = (ends - np.bincount(keys, minlength=size)).tolist()
        self.top = ends.tolist()

    def pop(self, key: int, used: bytearray) -> int | None:
        k, s = self.top[key], self.start[key]
        while k > s and used[self.items[k - 1]]:
            k -= 1
        self.top[key] = max(k - 1, s)
        return self.items[k - 1] if k > s else None


class _TupleRound:
    """One round of :class:`TupleSampler`: full per-class pools, consumed tuple by tuple."""

    def __init__(self, sampler: TupleSampler, rng: np.random.Generator) -> None:
        self.s = sampler
        labels, pred = sampler.labels, sampler.predictions
        size = int(max(labels.max(), -1 if pred is None else pred.max())) + 1
        self.label = labels.tolist()
        self.used = bytearray(len(labels))
        counts = np.bincount(labels, minlength=size)
        self.avail = counts.tolist()
        self.pools = _Pools(rng, np.arange(len(labels)), labels, size)
        self.anchors = _ClassSet(sampler._anchor_classes.tolist(), size)
        self.nonempty = _ClassSet(np.flatnonzero(counts).tolist(), size)
        if pred is not None:
            self.pred = pred.tolist()
            correct = np.flatnonzero(pred == labels)
            wrong = np.flatnonzero(pred != labels)
            self.true_positives = _Pools(rng, correct, labels[correct], size)
            self.false_positives = _Pools(rng, wrong, pred[wrong], size)  # keyed by the class they are taken for

    def take(self, i: int) -> int:
        self.used[i] = 1
        c = self.label[i]
        self.avail[c] -= 1
        if self.avail[c] < 2:
            self.anchors.discard(c)
            if self.avail[c] == 0:
                self.nonempty.discard(c)
        return i

    def take_from(self, pools: _Pools, key: int) -> int | None:
        i = pools.pop(key, self.used)
        return None if i is None else self.take(i)

    def tuple(self, u: _Uniforms) -> list[int] | None:
        """The next tuple, or None when the round cannot complete one."""
        s = self.s
        negatives = s.tuple_size - 2
        c = self.anchors.choice(u())
        a = self.take_from(self.pools, c)
        ns: list[int] = []
        if s.predictions is None:
            p = self.take_from(self.pools, c)
        else:
            confused = self.pred[a]
            if confused == c:
                p = self.take_from(self.pools, c)
            else:
                p = self.take_from(self.true_positives, c)
                if p is None:
                    p = self.take_from(self.pools, c)
            for _ in range(negatives):
                if confused == c:
                    n = self.take_from(self.false_positives, c) if u() < s.P_FALSE_POSITIVE else None
                else:
                    n = self.take_from(self.false_positives, c) if u() < s.P_FALSE_POSITIVE_MISSED else None
                    if n is None and u() < s.P_CONFUSED_CLASS and self.avail[confused] > 0:
                        n = self.take_from(self.pools, confused)
                if n is not None:
                    ns.append(n)
        classes = self._random_classes(u, c, negatives - len(ns))
        while len(ns) < negatives and classes:
            left = []
            for nc in classes:
                ns.append(self.take_from(self.pools, nc))  # type: ignore[arg-type]
                if self.avail[nc] > 0:
                    left.append(nc)
                if len(ns) == negatives:
                    break
            classes = left
        if len(ns) < negatives:
            return None
        return [a, p, *ns]  # type: ignore[list-item]

    def _random_classes(self, u: _Uniforms, exclude: int, k: int) -> list[int]:
        """``k`` distinct random classes with unused images, other than ``exclude`` (all of them if fewer)."""
        if k <= 0:
            return []
        others = len(self.nonempty) - (exclude in self.nonempty)
        if others <= k:
            return [c for c in self.nonempty.items if c != exclude]
        chosen: list[int] = []
        while len(chosen) < k:
            c = self.nonempty.choice(u())
            if c != exclude and c not in chosen:
                chosen.append(c)
        return chosen


def read_predictions(
    path: str | os.PathLike, paths: Sequence[str | os.PathLike], labels: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """Each image's predicted class from a CFCD predictions file, in the order of ``paths``.

    Format (CFCD ``core/trainer.py`` ``infer_epoch`` writes it, ``datasets/commondataset.py`` reads it as
    ``landmark_scores.txt``): one line per image, ``<image path> <true class> <predicted class> <score>``,
    whitespace-separated (the path may contain spaces; the last three fields are split off). Paths are compared
    after ``os.path.normpath``; every image of ``paths`` must be listed. Classes must be in the training set's label
    space: with ``labels`` the true classes are checked against it (a ValueError on the first mismatch).
    """
    table: dict[str, tuple[int, int]] = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").rsplit(maxsplit=3)
            if len(fields) != 4:
                raise ValueError(f"{path}:{number}: expected '<path> <true> <predicted> <score>', got {line!r}")
            table[os.path.normpath(fields[0])] = (int(fields[1]), int(fields[2]))
    keys = [os.path.normpath(os.fspath(p)) for p in paths]
    missing = [k for k in keys if k not in table]
    if missing:
        raise ValueError(f"{path} lists no prediction for {len(missing)} image(s), e.g. {missing[:3]}")
    true = np.array([table[k][0] for k in keys], dtype=np.int64)
    if labels is not None:
        bad = np.flatnonzero(true != np.asarray(labels, dtype=np.int64).reshape(-1))
        if len(bad):
            raise ValueError(
                f"{path}: true class {true[bad[0]]} of {keys[bad[0]]} differs from its label "
                f"{np.asarray(labels)[bad[0]]} ({len(bad)} mismatches): the file uses another label space"
            )
    return np.array([table[k][1] for k in keys], dtype=np.int64)


def _draw_within(rng: np.random.Generator, sizes: np.ndarray, k: int) -> np.ndarray:
    """``(len(sizes), k)`` positions in ``[0, size)`` per row: distinct when ``size >= k`` (Floyd's algorithm,
    vectorised over rows), with replacement otherwise."""
    out = np.empty((len(sizes), k), dtype=np.int64)
    for i in range(k):
        j = sizes - k + i  # Floyd: draw t in [0, j]; if taken, take j
        t = rng.integers(0, np.maximum(j, 0) + 1)
        taken = (out[:, :i] == t[:, None]).any(axis=1)
        out[:, i] = np.where(taken, j, t)
    small = sizes < k
    if small.any():
        out[small] = rng.integers(0, sizes[small][:, None], size=(int(small.sum()), k))
    return out
