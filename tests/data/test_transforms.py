"""Tests for the training augmentation presets and the evaluation transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from irlib.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Lighting,
    eval_transform,
    list_transform_presets,
    train_transform,
)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))


def test_spca_preset_components() -> None:
    steps = train_transform("spca", 64).transforms
    assert [type(t) for t in steps] == [
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.RandomApply,
        T.ToTensor,
        T.Normalize,
    ]
    crop, flip, jitter, _, norm = steps
    assert crop.size == (64, 64) and crop.scale == (0.2, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation == T.InterpolationMode.BILINEAR
    assert flip.p == 0.5
    assert jitter.p == 0.8 and len(jitter.transforms) == 1
    cj = jitter.transforms[0]
    assert isinstance(cj, T.ColorJitter)
    assert (cj.brightness, cj.contrast, cj.saturation, cj.hue) == ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
    assert tuple(norm.mean) == IMAGENET_MEAN and tuple(norm.std) == IMAGENET_STD


def test_other_presets_components() -> None:
    dolg = train_transform("dolg", 32).transforms
    assert [type(t) for t in dolg] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, Lighting, T.Normalize]
    assert dolg[0].scale == (0.08, 1.0) and dolg[3].alpha_std == 0.1
    assert [type(t) for t in train_transform("cvnet", 32).transforms] == [type(t) for t in dolg]
    delg = train_transform("delg", 32).transforms
    assert [type(t) for t in delg] == [T.RandomResizedCrop, T.ToTensor, T.Normalize]  # DELF: no flip
    assert delg[0].scale == (0.1, 1.0)
    uned = train_transform("uned", 224).transforms  # UnED: squash to 256 x 256, random 224 crop, flip
    assert [type(t) for t in uned] == [T.Resize, T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert uned[0].size == (256, 256) and uned[1].size == (224, 224)


@pytest.mark.parametrize("preset", ["spca", "dolg", "cvnet", "delg", "uned"])
def test_output_shape_and_dtype(image: Image.Image, preset: str) -> None:
    torch.manual_seed(0)
    x = train_transform(preset, 48)(image)
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_eval_transform_is_deterministic(image: Image.Image) -> None:
    tf = eval_transform(32)
    assert [type(t) for t in tf.transforms] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert tf.transforms[0].size == 36 and tf.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    a, b = tf(image), tf(image)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)


def test_presets_listed_and_unknown_rejected() -> None:
    assert set(list_transform_presets()) == {"spca", "dolg", "cvnet", "delg", "uned"}
    with pytest.raises(ValueError, match="unknown transform preset 'simclr'; known: spca, dolg, cvnet, delg, uned"):
        train_transform("simclr")
    with pytest.raises(ValueError, match="image_size"):
        train_transform("spca", 0)


def test_normalisation_from_data_config(image: Image.Image) -> None:
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "channel_order": "RGB"}
    norm = train_transform("spca", 16, data_config=config).transforms[-1]
    assert tuple(norm.mean) == (0.5, 0.5, 0.5) and tuple(norm.std) == (0.25, 0.25, 0.25)
    x = eval_transform(16, mean=(0.0,) * 3, std=(1.0,) * 3)(image)
    assert 0.0 <= x.min() and x.max() <= 1.0
    with pytest.raises(ValueError, match="not both"):
        train_transform("spca", 16, data_config=config, mean=(0.5,) * 3)
    with pytest.raises(ValueError, match="RGB input"):
        eval_transform(16, data_config={**config, "channel_order": "BGR"})
    with pytest.raises(ValueError, match="3 values"):
        eval_transform(16, mean=(0.5,), std=(1.0,))


def test_lighting_shifts_each_channel_by_a_constant() -> None:
    x = torch.rand(3, 5, 6)
    assert torch.equal(Lighting(0.0)(x), x)
    torch.manual_seed(1)
    y = Lighting(0.1)(x)
    shift = (y - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift)) and shift.abs().max() > 0
