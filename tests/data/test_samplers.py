"""Tests for the epoch-aware, DDP-sharded, resumable samplers."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from irlib.data.samplers import ClassBalancedSampler, DomainBatchSampler, ShuffledSampler


def _shares(make, world: int, epoch: int) -> list[list[int]]:
    out = []
    for rank in range(world):
        s = make(rank)
        s.set_epoch(epoch)
        out.append(list(s))
        assert len(out[-1]) == len(s) == s.num_samples
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 120),
    world=st.integers(1, 4),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 1000),
    drop_last=st.booleans(),
)
def test_shuffled_shards_cover_every_index(n: int, world: int, seed: int, epoch: int, drop_last: bool) -> None:
    shares = _shares(
        lambda r: ShuffledSampler(n, seed=seed, num_replicas=world, rank=r, drop_last=drop_last), world, epoch
    )
    assert len({len(s) for s in shares}) == 1  # equal shares: no rank waits on another
    counts = Counter(i for s in shares for i in s)
    assert set(counts) <= set(range(n))
    if drop_last:
        assert all(c == 1 for c in counts.values()) and len(counts) == n - n % world
    else:
        assert set(counts) == set(range(n)) and sum(counts.values()) - n == (-n) % world
    if n % world == 0:
        assert sorted(i for s in shares for i in s) == list(range(n))  # exactly once per epoch


def test_two_replicas_partition_exactly() -> None:
    a, b = _shares(lambda r: ShuffledSampler(10, seed=5, num_replicas=2, rank=r), 2, epoch=3)
    assert len(a) == len(b) == 5 and sorted(a + b) == list(range(10))


def test_shuffled_new_order_each_epoch_and_reproducible() -> None:
    s = ShuffledSampler(50, seed=1)
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        orders.append(list(s))
    assert orders[0] != orders[1] != orders[2] and sorted(orders[1]) == list(range(50))
    again = ShuffledSampler(50, seed=1)
    again.set_epoch(1)
    assert list(again) == orders[1]
    other = ShuffledSampler(50, seed=2)
    other.set_epoch(1)
    assert list(other) != orders[1]


@pytest.mark.parametrize("world", [1, 2])
def test_shuffled_resume_mid_epoch(world: int) -> None:
    full = _shares(lambda r: ShuffledSampler(37, seed=4, num_replicas=world, rank=r), world, epoch=2)
    for rank in range(world):
        s = ShuffledSampler(37, seed=4, num_replicas=world, rank=rank)
        s.set_epoch(2)
        consumed = len(list(islice(iter(s), 7)))
        state = s.state_dict(consumed)
        fresh = ShuffledSampler(37, seed=4, num_replicas=world, rank=rank)
        fresh.load_state_dict(state)
        fresh.set_epoch(2)  # the usual per-epoch call keeps the restored position
        assert len(fresh) == len(full[rank]) - 7
        assert list(fresh) == full[rank][7:]
        assert len(fresh) == len(full[rank])  # the offset applied to one pass
        fresh.set_epoch(3)
        assert len(list(fresh)) == len(full[rank])


def test_resume_rejects_changed_settings_and_bad_positions() -> None:
    state = ShuffledSampler(20, seed=1).state_dict(5)
    with pytest.raises(ValueError, match="num_replicas"):
        ShuffledSampler(20, seed=1, num_replicas=2).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        ShuffledSampler(20, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="consumed"):
        ShuffledSampler(20).state_dict(21)
    s = ShuffledSampler(20)
    with pytest.raises(ValueError, match="start_index"):
        s.set_epoch(0, start_index=21)
    with pytest.raises(ValueError, match="rank"):
        ShuffledSampler(20, num_replicas=2, rank=2)


def test_dataloader_uses_the_sampler_across_epochs() -> None:
    ds = TensorDataset(torch.arange(12))
    s = ShuffledSampler(12, seed=0)
    loader = DataLoader(ds, sampler=s, batch_size=4)
    assert loader.sampler is s  # set_epoch reaches the real sampler (SpCa bug 5)
    seen = []
    for epoch in range(2):
        s.set_epoch(epoch)
        seen.append(torch.cat([b[0] for b in loader]).tolist())
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(12)) and seen[0] != seen[1]


# ----------------------------------------------------------------------------------------- class-balanced

LABELS = np.array([0] * 9 + [1] * 5 + [2] * 2 + [3] * 1 + [4] * 6 + [5] * 4 + [6] * 3)


def _check_batches(batches: np.ndarray, labels: np.ndarray, p: int, k: int) -> None:
    sizes = np.bincount(labels)
    for batch in batches:
        groups = batch.reshape(p, k)
        classes = labels[groups]
        assert (classes == classes[:, :1]).all()  # K consecutive indices of one class
        assert len(set(classes[:, 0].tolist())) == p  # P distinct classes
        for g, c in zip(groups, classes[:, 0], strict=True):
            if sizes[c] >= k:
                assert len(set(g.tolist())) == k  # without replacement when the class is big enough


def test_pk_batch_composition_and_small_classes() -> None:
    s = ClassBalancedSampler(LABELS, classes_per_batch=3, samples_per_class=4, seed=0, num_batches=20)
    assert s.batch_size == 12 and len(s) == 240
    batches = s.epoch_batches(0)
    _check_batches(batches, LABELS, 3, 4)
    assert np.array_equal(np.array(list(s)).reshape(20, 12), batches)
    groups = batches.reshape(-1, 4)
    small = groups[LABELS[groups[:, 0]] == 3]  # the one-image class is drawn with replacement
    assert len(small) and (small == np.flatnonzero(LABELS == 3)[0]).all()
    stream = LABELS[groups[:, 0]]
    assert sorted(stream[:7].tolist()) == list(range(7))  # every class before any repeats


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=2, max_size=10),
    p=st.integers(1, 4),
    k=st.integers(1, 4),
    world=st.integers(1, 3),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 100),
)
def test_pk_property(sizes: list[int], p: int, k: int, world: int, seed: int, epoch: int) -> None:
    labels = np.repeat(np.arange(len(sizes)) * 3, sizes)  # non-contiguous ids are fine
    p = min(p, len(sizes))
    num_batches = 4 * world
    make = lambda r: ClassBalancedSampler(  # noqa: E731
        labels, classes_per_batch=p, samples_per_class=k, seed=seed, num_replicas=world, rank=r, num_batches=num_batches
    )
    shares = _shares(make, world, epoch)
    all_batches = make(0).epoch_batches(epoch)
    _check_batches(all_batches, labels, p, k)
    # Each replica gets whole, disjoint batch slots: together they are exactly the epoch's batches.
    per_rank = [np.array(s).reshape(-1, p * k) for s in shares]
    assert all(len(b) == num_batches // world for b in per_rank)
    rebuilt = np.empty_like(all_batches)
    for r, b in enumerate(per_rank):
        rebuilt[r::world] = b
    assert np.array_equal(rebuilt, all_batches)


def test_pk_epochs_differ_seed_reproduces_and_resume() -> None:
    make = lambda r=0: ClassBalancedSampler(  # noqa: E731
        LABELS, classes_per_batch=2, samples_per_class=2, seed=9, num_replicas=2, rank=r
    )
    s = make()
    assert s.num_batches == len(LABELS) // 4 // 2 * 2 and len(s) == s.num_batches // 2 * 4
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1
    t = make()
    t.set_epoch(1)
    assert list(t) == e1
    state = t.state_dict(8)  # two batches used
    u = make()
    u.load_state_dict(state)
    u.set_epoch(1)
    assert list(u) == e1[8:]
    with pytest.raises(ValueError, match="labels_crc32"):
        ClassBalancedSampler(
            LABELS[::-1], classes_per_batch=2, samples_per_class=2, seed=9, num_replicas=2
        ).load_state_dict(state)


def test_pk_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="only 7 classes"):
        ClassBalancedSampler(LABELS, classes_per_batch=8, samples_per_class=1)
    with pytest.raises(ValueError, match="replicas"):
        ClassBalancedSampler(LABELS, classes_per_batch=7, samples_per_class=4, num_replicas=2)


# --- DomainBatchSampler (UnED's one domain per step) ----------------------------------------------------------------

UNED_LIKE = np.repeat([0, 1, 2], [600, 300, 100])  # per-image domains, sizes 6:3:1
DOMAIN_STEPS = 100  # 1000 images // (5 x 2 replicas)


def _domain_sampler(strategy: str, rank: int = 0, world: int = 2, seed: int = 0) -> DomainBatchSampler:
    return DomainBatchSampler(UNED_LIKE, batch_size=5, strategy=strategy, seed=seed, num_replicas=world, rank=rank)


@pytest.mark.parametrize(
    ("strategy", "steps"),
    [("dataset_size", [60, 30, 10]), ("balanced", [33, 33, 34])],  # floor(S share), the last domain the rest
)
def test_domain_steps_follow_the_strategy(strategy: str, steps: list[int]) -> None:
    sampler = _domain_sampler(strategy)
    assert sampler.num_batches == DOMAIN_STEPS
    for epoch in (0, 1):
        domains = sampler.epoch_domains(epoch)
        assert np.bincount(domains, minlength=3).tolist() == steps
        batches = sampler.epoch_batches(epoch)
        assert (UNED_LIKE[batches] == domains[:, None]).all()  # every image of a step is of the step's domain
    assert not np.array_equal(sampler.epoch_domains(0), sampler.epoch_domains(1))  # a new order every epoch


def test_round_robin_cycles_through_the_domains_across_epochs() -> None:
    sampler = DomainBatchSampler(UNED_LIKE, batch_size=3, strategy="round_robin", num_batches=10)
    run = np.concatenate([sampler.epoch_domains(e) for e in range(3)])
    assert run.tolist() == [t % 3 for t in range(30)]  # step t of the run -> domain t mod 3, whatever the epoch


def test_domain_batches_shard_one_domain_per_step_and_cycle_small_domains() -> None:
    shares = _shares(lambda r: _domain_sampler("balanced", rank=r), world=2, epoch=0)
    steps = [np.asarray(s).reshape(DOMAIN_STEPS, 5) for s in shares]
    assert (UNED_LIKE[steps[0]][:, 0] == UNED_LIKE[steps[1]][:, 0]).all()  # both replicas on the step's domain
    counts = Counter(shares[0] + shares[1])
    domain2 = [counts[i] for i in np.flatnonzero(UNED_LIKE == 2)]  # 34 steps x 10 images from 100: 3-4 times each
    assert sum(domain2) == 340 and min(domain2) >= 3 and max(domain2) <= 4
    domain1 = [counts[i] for i in np.flatnonzero(UNED_LIKE == 1)]  # 330 from 300: one permutation and 30 more
    assert sum(domain1) == 330 and min(domain1) >= 1 and max(domain1) <= 2
    assert max(counts[i] for i in np.flatnonzero(UNED_LIKE == 0)) == 1  # 330 images from 600: each at most once


def test_domain_sampler_is_reproducible_and_resumes_mid_epoch() -> None:
    a, b = _domain_sampler("dataset_size", seed=3), _domain_sampler("dataset_size", seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    full = list(a)
    assert full == list(b) and full != list(_domain_sampler("dataset_size", seed=4))
    state = a.state_dict(consumed=35)
    resumed = _domain_sampler("dataset_size", seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert list(resumed) == full[35:]
    with pytest.raises(ValueError, match="strategy"):
        _domain_sampler("balanced", seed=3).load_state_dict(state)


def test_domain_sampler_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="strategy must be one of"):
        DomainBatchSampler(UNED_LIKE, batch_size=4, strategy="uniform")
    with pytest.raises(ValueError, match="cannot fill one step"):
        DomainBatchSampler(UNED_LIKE[:7], batch_size=4, num_replicas=2)
