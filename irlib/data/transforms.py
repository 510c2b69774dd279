"""Training augmentation presets of the reference methods and a deterministic evaluation transform.

All transforms take an RGB PIL image and return a normalised ``(3, S, S)`` float32 tensor in **RGB** order: irlib
models flip channels themselves when their weights are BGR (pycls family), so the BGR loading of DOLG/CVNet is not
reproduced here. Normalisation defaults to the ImageNet statistics; pass a model's ``data_config`` (or ``mean`` and
``std``) to match its backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import transforms as T

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Lighting",
    "eval_transform",
    "list_transform_presets",
    "train_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# AlexNet PCA lighting on ImageNet, RGB order (fb.resnet.torch, used by pycls).
_EIG_VALS = (0.2175, 0.0188, 0.0045)
_EIG_VECS = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


class Lighting:
    """AlexNet-style PCA lighting noise on a ``(3, H, W)`` RGB tensor in [0, 1] (pycls ``transforms.lighting``):
    adds ``eigvecs @ (alpha * eigvals)`` with ``alpha ~ N(0, alpha_std^2)`` per image, without clamping."""

    def __init__(self, alpha_std: float = 0.1) -> None:
        self.alpha_std = alpha_std
        self.eigvals = torch.tensor(_EIG_VALS)
        self.eigvecs = torch.tensor(_EIG_VECS)

    def __call__(self, img: Tensor) -> Tensor:
        if self.alpha_std == 0:
            return img
        alpha = torch.randn(3) * self.alpha_std
        rgb = self.eigvecs @ (alpha * self.eigvals)
        return img + rgb.to(img.dtype)[:, None, None]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha_std={self.alpha_std})"


def _spca(size: int, norm: T.Normalize) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.ToTensor(),
            norm,
        ]
    )


def _pycls(size: int, norm: T.Normalize) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            Lighting(0.1),
            norm,
        ]
    )


def _delg(size: int, norm: T.Normalize) -> T.Compose:
    return T.Compose([T.RandomResizedCrop(size, scale=(0.1, 1.0), ratio=(3 / 4, 4 / 3)), T.ToTensor(), norm])


def _uned(size: int, norm: T.Normalize) -> T.Compose:
    """Universal-Image-Embeddings ``datasets.py`` (lines 31-32, 76-84): squash to (size + 32)², random crop, flip."""
    return T.Compose(
        [
            T.Resize((size + 32, size + 32), interpolation=T.InterpolationMode.BILINEAR),
            T.RandomCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            norm,
        ]
    )


_PRESETS: dict[str, tuple[Callable[[int, T.Normalize], T.Compose], str]] = {
    "spca": (
        _spca,
        "SpCa/Token: RandomResizedCrop(scale 0.2-1), flip, ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8",
    ),
    "dolg": (
        _pycls,
        "DOLG (pycls): RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3), flip, PCA lighting 0.1",
    ),
    "cvnet": (
        _pycls,
        "CVNet: training code unreleased; the DOLG/pycls recipe of its lineage (unverified)",
    ),
    "delg": (
        _delg,
        "DELG (DELF TF2): ImageNet-style crop (area 0.1-1, ratio 3/4-4/3), no flip, no colour jitter",
    ),
    "uned": (
        _uned,
        "UnED baselines: resize to 256 x 256 (aspect not kept), random 224 crop, flip (at image_size 224)",
    ),
}


def list_transform_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {name: desc for name, (_, desc) in _PRESETS.items()}


def train_transform(
    preset: str = "spca",
    image_size: int = 512,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    data_config: Mapping[str, Any] | None = None,
) -> T.Compose:
    """The training augmentation of ``preset`` producing ``image_size`` x ``image_size`` crops.

    Presets (``spca-training.md`` §2.5, ``superglobal-cvnet-dolg.md`` §3.5/§4.3, DELF ``googlelandmarks.py``):

    * ``spca``: ``RandomResizedCrop(image_size, scale=(0.2, 1))``, ``RandomHorizontalFlip()``,
      ``RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)``, ``ToTensor()``, ``Normalize``. SpCa's default
      size is 1024, Token's 512.
    * ``dolg``: pycls ``random_sized_crop`` (area 0.08-1, aspect 3/4-4/3; cv2 bilinear there, PIL bilinear with
      antialiasing here; pycls falls back to a scaled centre crop, torchvision to a centre crop), horizontal flip
      0.5, then AlexNet PCA lighting (std 0.1) on [0, 1] pixels before normalisation, as pycls orders it. DOLG's
      yaml says 224 px but the released weights were trained at 512 (DOLG #3).
    * ``cvnet``: CVNet's training code is not public; the paper's 512 x 512 crops are recalled, not verified. This
      preset is the ``dolg`` recipe of the pycls/DELG-pytorch lineage CVNet descends from, a choice, not CVNet's.
    * ``delg``: DELF ``_ImageNetCrop``: ``sample_distorted_bounding_box`` with area 0.08-1 and
      ``min_object_covered=0.1`` of the whole image (so area 0.1-1), aspect 3/4-4/3, resized with TF's ``area``
      method (bilinear with antialiasing here); ``random_reflection`` is False, so no flip. DELF trains at 321 px
      by default and scales pixels to [-1, 1] (``mean=std=(128/255,)*3``); the default here is the model's stats.

    Normalisation: ``data_config`` (``{"mean", "std"}`` on [0, 1] RGB, as irlib models expose) or ``mean``/``std``;
    default ImageNet. Unknown presets raise ValueError listing the known ones.
    """
    if preset not in _PRESETS:
        raise ValueError(f"unknown transform preset {preset!r}; known: {', '.join(_PRESETS)}")
    return _PRESETS[preset][0](_check_size(image_size), _normalize(mean, std, data_config))


def eval_transform(
    image_size: int = 512,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    data_config: Mapping[str, Any] | None = None,
) -> T.Compose:
    """Deterministic validation transform (SpCa's val): ``Resize(int(image_size * 8 / 7), bicubic)`` of the shorter
    side, ``CenterCrop(image_size)``, ``ToTensor``, ``Normalize`` (statistics as in :func:`train_transform`)."""
    size = _check_size(image_size)
    return T.Compose(
        [
            T.Resize(int(size * 8 / 7), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            _normalize(mean, std, data_config),
        ]
    )


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


def _normalize(
    mean: Sequence[float] | None, std: Sequence[float] | None, data_config: Mapping[str, Any] | None
) -> T.Normalize:
    if data_config is not None:
        if mean is not None or std is not None:
            raise ValueError("pass either data_config or mean/std, not both")
        if str(data_config.get("channel_order", "RGB")).upper() != "RGB":
            raise ValueError(f"data_config must describe RGB input, got {data_config.get('channel_order')!r}")
        mean, std = data_config["mean"], data_config["std"]
    mean = tuple(float(m) for m in (IMAGENET_MEAN if mean is None else mean))
    std = tuple(float(s) for s in (IMAGENET_STD if std is None else std))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each (std > 0), got {mean}, {std}")
    return T.Normalize(mean, std)
