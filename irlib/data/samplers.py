"""Epoch-aware, DDP-sharded, resumable index samplers for training.

Both samplers draw each epoch's order from ``numpy.random.default_rng([seed, epoch])``, the same on every replica,
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

import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["ClassBalancedSampler", "ShuffledSampler"]


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
