"""CFCD's tuple sampler: tuple structure, hard negatives from predictions, determinism, DDP shards, resume."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from irlib.data.samplers import TUPLE_SIZE, TupleSampler, read_predictions


def _labels(classes: int = 12, per_class: int = 20) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)[np.random.default_rng(7).permutation(classes * per_class)]


def _tuples(sampler: TupleSampler, epoch: int = 0) -> np.ndarray:
    sampler.set_epoch(epoch)
    out = np.asarray(list(sampler)).reshape(-1, sampler.tuple_size)
    assert len(out) * sampler.tuple_size == len(sampler) == sampler.num_samples
    return out


def _assert_tuples(tuples: np.ndarray, labels: np.ndarray) -> None:
    lab = labels[tuples]
    assert (lab[:, 0] == lab[:, 1]).all(), "positive of another class"
    assert (tuples[:, 0] != tuples[:, 1]).all(), "the anchor is its own positive"
    assert (lab[:, 2:] != lab[:, :1]).all(), "negative of the anchor's class"


@pytest.mark.parametrize("size", [TUPLE_SIZE, 4])
def test_every_tuple_is_anchor_positive_and_negatives_of_other_classes(size: int) -> None:
    labels = _labels()
    s = TupleSampler(labels, tuple_size=size, seed=3)
    assert s.num_tuples == len(labels) // size and s.tuple_size == size
    for epoch in range(5):
        tuples = _tuples(s, epoch)
        _assert_tuples(tuples, labels)
        # drawn without replacement within a round (one round covers most of the epoch): few repeats
        assert len(np.unique(tuples)) >= 0.9 * tuples.size


def test_random_negatives_come_from_distinct_classes() -> None:
    labels = _labels(classes=40, per_class=10)
    tuples = _tuples(TupleSampler(labels, seed=0))
    # only at the end of a round, with fewer than 6 classes left, does a class give two negatives
    for row in labels[tuples[: len(tuples) // 2, 2:]]:
        assert len(set(row.tolist())) == len(row)


def test_small_class_sets_still_fill_every_slot() -> None:
    labels = np.array([0] * 10 + [1] * 3 + [2] * 3)  # 6 negatives from 2 other classes: classes repeat in a tuple
    s = TupleSampler(labels, num_tuples=6, seed=1)
    for epoch in range(3):
        _assert_tuples(_tuples(s, epoch), labels)


def test_same_seed_and_epoch_same_tuples_otherwise_different() -> None:
    labels = _labels()
    a, b = TupleSampler(labels, seed=5), TupleSampler(labels, seed=5)
    assert np.array_equal(_tuples(a, 2), _tuples(b, 2))
    assert not np.array_equal(_tuples(a, 2), _tuples(a, 3))
    assert not np.array_equal(_tuples(a, 2), _tuples(TupleSampler(labels, seed=6), 2))
    assert np.array_equal(_tuples(a, 2), _tuples(TupleSampler(labels, seed=5), 2))  # after another epoch was cached


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_shards_are_disjoint_whole_tuples_of_equal_size(world: int) -> None:
    labels = _labels()
    whole = TupleSampler(labels, seed=2, num_replicas=world).epoch_tuples(4)
    shares = [_tuples(TupleSampler(labels, seed=2, num_replicas=world, rank=r), 4) for r in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(whole) % world == 0
    assert sorted(map(tuple, np.concatenate(shares))) == sorted(map(tuple, whole))
    for r, share in enumerate(shares):
        assert np.array_equal(share, whole[r::world])
        _assert_tuples(share, labels)


def test_resume_mid_epoch_continues_with_the_same_tuples() -> None:
    labels = _labels()
    s = TupleSampler(labels, seed=4, num_replicas=2, rank=1)
    full = _tuples(s, 3).reshape(-1).tolist()
    s.set_epoch(3)
    consumed = len(list(islice(iter(s), 16)))
    fresh = TupleSampler(labels, seed=4, num_replicas=2, rank=1)
    fresh.load_state_dict(s.state_dict(consumed))
    assert len(fresh) == len(full) - 16 and list(fresh) == full[16:]
    with pytest.raises(ValueError, match="tuple_size"):
        TupleSampler(labels, seed=4, num_replicas=2, rank=1, tuple_size=4).load_state_dict(s.state_dict(consumed))
    with pytest.raises(ValueError, match="predictions_crc32"):
        TupleSampler(labels, seed=4, num_replicas=2, rank=1, predictions=labels).load_state_dict(s.state_dict(0))


def _hard_setup() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12 classes x 20 images; 40 images of classes 4-11 are predicted as class 0 (its false positives); class 1's
    even-numbered images are predicted as class 2 (misclassified anchors)."""
    labels = np.repeat(np.arange(12), 20)
    predictions = labels.copy()
    rng = np.random.default_rng(0)
    false_positives = rng.choice(np.flatnonzero(labels >= 4), 40, replace=False)
    predictions[false_positives] = 0
    class1 = np.flatnonzero(labels == 1)
    predictions[class1[::2]] = 2
    return labels, predictions, false_positives


def _slots(labels: np.ndarray, predictions: np.ndarray | None, epochs: int = 60):
    """For 60 epochs: negatives of tuples anchored on class 0; (anchor, positive, negatives) of misclassified
    class-1 anchors."""
    s = TupleSampler(labels, predictions=predictions, seed=11)
    class0, missed = [], []
    for epoch in range(epochs):
        tuples = _tuples(s, epoch)
        _assert_tuples(tuples, labels)
        class0 += tuples[labels[tuples[:, 0]] == 0, 2:].reshape(-1).tolist()
        if predictions is not None:
            missed += [t for t in tuples if labels[t[0]] == 1 and predictions[t[0]] == 2]
    return class0, missed


def test_hard_negatives_are_false_positives_of_the_anchor_class_about_half_the_time() -> None:
    labels, predictions, false_positives = _hard_setup()
    fp = set(false_positives.tolist())
    random_class0, _ = _slots(labels, None)
    by_chance = np.mean([n in fp for n in random_class0])
    assert by_chance < 0.25  # 40 of the 220 images of other classes
    class0, _ = _slots(labels, predictions)
    share = np.mean([n in fp for n in class0])
    # half of the slots, plus the random negatives that happen to be false positives
    assert abs(share - (0.5 + 0.5 * by_chance)) < 0.08, (share, by_chance)


def test_misclassified_anchors_get_a_correct_positive_and_negatives_of_the_confused_class() -> None:
    labels, predictions, _ = _hard_setup()
    _, missed = _slots(labels, predictions)
    assert len(missed) > 20
    for t in missed:  # a correctly predicted positive while class 1 has some left
        assert predictions[t[1]] == 1 or not any(predictions[t[1:]] == 1)
    confused = np.mean([labels[n] == 2 for t in missed for n in t[2:]])
    # no false positive of class 1 exists: each slot is class 2 with probability 0.5 (+ ~1/10 random picks)
    assert 0.4 < confused < 0.65, confused


def test_read_predictions_parses_the_official_format(tmp_path) -> None:
    path = tmp_path / "landmark_scores.txt"
    path.write_text("./a/x.jpg 3 3 0.99\nb/with space.jpg 1 3 0.5\n\nc.jpg 2 0 1.0\n")
    assert read_predictions(path, ["c.jpg", "a/x.jpg", "b/with space.jpg"]).tolist() == [0, 3, 3]
    assert read_predictions(path, ["a/x.jpg", "c.jpg"], labels=[3, 2]).tolist() == [3, 0]
    with pytest.raises(ValueError, match="no prediction for 1 image"):
        read_predictions(path, ["a/x.jpg", "d.jpg"])
    with pytest.raises(ValueError, match="another label space"):
        read_predictions(path, ["a/x.jpg", "c.jpg"], labels=[3, 5])
    path.write_text("a.jpg 1 2\n")
    with pytest.raises(ValueError, match=":1: expected"):
        read_predictions(path, ["a.jpg"])


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="no class can anchor"):
        TupleSampler([0, 1, 2, 3, 4, 5, 6, 7])  # no class with 2 images
    with pytest.raises(ValueError, match="no class can anchor"):
        TupleSampler([0, 0, 1, 1, 2])  # too few images of other classes for 6 negatives
    with pytest.raises(ValueError, match="tuple_size"):
        TupleSampler(_labels(), tuple_size=2)
    with pytest.raises(ValueError, match="one class >= 0 per image"):
        TupleSampler(_labels(), predictions=[0, 1])
    with pytest.raises(ValueError, match="replicas one"):
        TupleSampler(_labels(), num_replicas=4, num_tuples=3)
