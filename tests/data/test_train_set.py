"""Tests for TrainSet: numeric label map, save/load, missing files, validation split, DataLoader use."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from irlib.data.images import ImageLoadError
from irlib.data.train_set import LABEL_MAP_FORMAT, TrainSet, read_label_map


def _write_images(root: Path, rels: list[str], size: tuple[int, int] = (12, 10)) -> None:
    for i, rel in enumerate(rels):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (i * 20 % 256, 50, 100)).save(path)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, list[str], list[int]]:
    rels = ["a/x0.jpg", "a/x1.jpg", "b/y0.jpg", "b/y1.jpg", "c/z0.jpg", "c/z1.jpg"]
    labels = [100, 9, 10, 9, 100, 10]
    _write_images(tmp_path, rels)
    return tmp_path, rels, labels


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)


def test_label_map_sorts_numerically_not_lexicographically(tiny) -> None:
    root, rels, labels = tiny
    ds = TrainSet(rels, labels, root=root, name="tiny")
    assert ds.label_map == {9: 0, 10: 1, 100: 2}
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [2, 0, 1, 0, 2, 1]
    assert ds.num_classes == 3
    assert ds.original_ids.tolist() == [9, 10, 100]
    assert ds.class_counts().tolist() == [2, 2, 2]


def test_getitem_paths_and_dataloader(tiny) -> None:
    root, rels, labels = tiny
    ds = TrainSet(rels, labels, root=root, transform=_to_tensor)
    x, y = ds[0]
    assert x.shape == (3, 10, 12) and y == 2 and isinstance(y, int)
    assert isinstance(TrainSet(rels, labels, root=root)[1][0], Image.Image)
    assert len(ds.paths) == 6 and ds.paths[2] == root / "b/y0.jpg"
    assert list(ds.paths) == [root / r for r in rels]
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 10, 12) and yb.tolist() == [2, 0, 1, 0]
    copy = pickle.loads(pickle.dumps(ds))  # what DataLoader workers receive
    assert copy.labels.tolist() == ds.labels.tolist() and torch.equal(copy[3][0], ds[3][0])
    assert ds.paths[1:3] == [root / "a/x1.jpg", root / "b/y0.jpg"]


def test_corrupt_image_error_names_file_and_dataset(tiny) -> None:
    root, rels, labels = tiny
    (root / rels[0]).write_bytes(b"not a jpeg")
    ds = TrainSet(rels, labels, root=root, name="tiny")
    with pytest.raises(ImageLoadError, match=r"x0\.jpg.*'tiny'"):
        ds[0]


def test_label_map_round_trip_keeps_labels(tiny) -> None:
    root, rels, labels = tiny
    ds = TrainSet(rels, labels, root=root, name="tiny", info={"source": "test"})
    path = root / "run" / "label_map.json"
    ds.save_label_map(path)
    obj = json.loads(path.read_text())
    assert obj["format"] == LABEL_MAP_FORMAT and obj["original_ids"] == [9, 10, 100] and obj["num_classes"] == 3
    mapping, info = read_label_map(path)
    assert mapping == ds.label_map and info == {"source": "test"}
    # A resumed run over a subset in another order (class 9 absent) keeps the saved labels and num_classes.
    resumed = TrainSet([rels[4], rels[2]], [100, 10], root=root, label_map=path)
    assert resumed.labels.tolist() == [2, 1] and resumed.num_classes == 3
    assert TrainSet([rels[0]], [100], root=root, label_map={9: 0, 10: 1, 100: 2}).labels.tolist() == [2]
    with pytest.raises(ValueError, match="not in the label map"):
        TrainSet([rels[0]], [7], root=root, label_map=path)
    with pytest.raises(ValueError, match="0..C-1"):
        TrainSet([rels[0]], [9], root=root, label_map={9: 1})
    (root / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an irlib label map"):
        read_label_map(root / "bad.json")


def test_missing_files_error_or_skip(tiny) -> None:
    root, rels, labels = tiny
    (root / "a/x0.jpg").unlink()
    (root / "a/x1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 6 images .*x0\.jpg.*on_missing='skip'"):
        TrainSet(rels, labels, root=root, name="tiny")
    with pytest.warns(UserWarning, match="skipped 3 missing images"):
        ds = TrainSet(rels + ["nodir/q.jpg"], labels + [5], root=root, on_missing="skip")
    assert sorted(ds.dropped) == sorted([root / "a/x0.jpg", root / "a/x1.jpg", root / "nodir/q.jpg"])
    assert len(ds) == 4 and [p.name for p in ds.paths] == ["y0.jpg", "y1.jpg", "z0.jpg", "z1.jpg"]
    # The map comes from the listing, so class 5 (all of its files missing) keeps its label.
    assert ds.label_map == {5: 0, 9: 1, 10: 2, 100: 3}
    assert ds.labels.tolist() == [2, 1, 3, 2] and ds.missing_files() == []
    (root / "c/z1.jpg").unlink()
    assert ds.missing_files() == [root / "c/z1.jpg"]
    with pytest.raises(ValueError, match="on_missing"):
        TrainSet(rels, labels, root=root, on_missing="ignore")  # type: ignore[arg-type]


def test_split_validation_is_off_by_default_and_per_class(tiny) -> None:
    root, _, _ = tiny
    labels = [1] * 10 + [2] * 3 + [3]
    rels = [f"s/{i}.jpg" for i in range(len(labels))]
    _write_images(root, rels, (4, 4))
    ds = TrainSet(rels, labels, root=root, name="s")
    assert len(ds) == 14  # nothing held out unless asked
    train, val = ds.split_validation(0.2, seed=3)
    assert val.class_counts().tolist() == [2, 0, 0]  # floor(0.2 n), and every class keeps a training image
    assert train.class_counts().tolist() == [8, 3, 1]
    assert train.num_classes == val.num_classes == 3 and train.label_map == ds.label_map
    assert set(map(str, train.paths)).isdisjoint(map(str, val.paths))
    assert (train.name, val.name) == ("s:train", "s:val")
    again = ds.split_validation(0.2, seed=3)[1]
    assert list(again.paths) == list(val.paths)
    assert ds.split_validation(0.0)[1].__len__() == 0
    with pytest.raises(ValueError, match="fraction"):
        ds.split_validation(1.0)


@pytest.fixture(scope="module")
def empty_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 empty files: enough for sets that are split but never decoded."""
    root = tmp_path_factory.mktemp("empty")
    for i in range(100):
        (root / f"f{i}.jpg").touch()
    return root


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    fraction=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**16),
)
def test_split_validation_property(empty_files: Path, sizes: list[int], fraction: float, seed: int) -> None:
    labels = np.repeat(np.arange(len(sizes)) * 7, sizes)
    rels = [f"f{i}.jpg" for i in range(len(labels))]
    ds = TrainSet(rels, labels, root=empty_files)
    train, val = ds.split_validation(fraction, seed)
    expected = np.minimum(np.floor(fraction * np.array(sizes)).astype(int), np.array(sizes) - 1)
    assert val.class_counts().tolist() == expected.tolist()
    assert sorted(map(str, list(train.paths) + list(val.paths))) == sorted(str(empty_files / r) for r in rels)
    assert (np.bincount(train.labels, minlength=len(sizes)) >= 1).all()
