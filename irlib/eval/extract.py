"""Multi-scale global descriptors for image lists and revisited datasets, with an on-disk cache.

The default pipeline is revisitop/cirtorch's test code (Radenović et al., TPAMI 2018): images are shrunk with
Pillow's ``thumbnail`` (never enlarged) so their longer side is at most ``image_size``; a query is cropped to its
box first and shrunk to ``image_size * max(crop) / max(full image)``, so the crop keeps the scale it has in the
resized full image; the normalised tensor is resized by each scale (bilinear), each scale's descriptor is
L2-normalised, the scales are averaged and the mean L2-normalised. The universal benchmarks resize otherwise
(``ExtractConfig.resize``): ILIAS sets the longer side to exactly 512 px, UnED the shorter side to 224 px and crops
the centre square. Images are files or members of tar shards (:class:`~irlib.data.images.TarMember`).

Each method's official test pipeline is a named preset (:data:`PRESETS`, :func:`preset`): the numbers of a
released checkpoint move by tenths of mAP with the resize implementation, crop rounding and scale set, so every
field is recorded with the results. Images of equal size are batched together.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from irlib.data.images import ImageRef, TarMember, as_image_ref, load_image
from irlib.data.revisited import CROP_MODES, RevisitedDataset, crop_query
from irlib.io import save_npy, write_json
from irlib.models.base import RetrievalModel, to_channels_last
from irlib.models.pooling import mean_of_scales

SQRT2 = math.sqrt(2)
DEFAULT_SCALES: tuple[float, ...] = (1 / SQRT2, 1.0, SQRT2)
_RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}
SCALE_RESIZES: tuple[str, ...] = ("tensor-bilinear", "cv2-area-linear", "cv2-linear")
RESIZES: tuple[str, ...] = ("thumbnail", "long-side", "short-side-crop")
EXIF_TRANSPOSES: tuple[str, ...] = ("never", "files", "always")


@dataclass(frozen=True)
class ExtractConfig:
    """Extraction settings; every field that changes the descriptors is recorded with results and cache keys.

    Attributes:
        image_size: the side that ``resize`` sets; ``None`` keeps the original size (``thumbnail`` only).
        scales: resize factors of the multi-scale pyramid.
        scale_resize: how each scale is made: ``"tensor-bilinear"`` resizes the normalised tensor
            (``F.interpolate``, cirtorch/SpCa); ``"cv2-area-linear"`` resizes the uint8 image with OpenCV,
            ``INTER_AREA`` down and ``INTER_LINEAR`` up (CVNet); ``"cv2-linear"`` resizes the float image with
            ``INTER_LINEAR`` (DOLG); see :func:`scale_image`.
        min_scale_side: skip a scale whose shorter side would fall below this many pixels (SpCa: 36).
        crop_queries: crop queries to their box (the revisited protocol does).
        crop_mode: ``"round"`` (revisitop, Pillow) or ``"trunc"`` (CVNet/SuperGlobal/DOLG).
        interpolation: Pillow filter of the ``thumbnail`` and ``long-side`` resizes.
        resize: ``"thumbnail"``: Pillow ``thumbnail`` to a longer side of at most ``image_size`` (shrink only; a
            query crop is shrunk by the factor of its full image), as cirtorch. ``"long-side"``: Pillow ``resize``
            to a longer side of exactly ``image_size``, enlarging too (ILIAS ``LargeSideResize``, see
            :func:`long_side_resize`). ``"short-side-crop"``: the shorter side to ``image_size`` by bilinear
            interpolation without antialiasing, then the centre square (UnED, see :func:`short_side_center_crop`).
            The last two resize a query crop itself to ``image_size``.
        exif_transpose: apply the EXIF orientation: ``"never"`` (revisitop), ``"always"``, or ``"files"``: image
            files are transposed, tar-shard members are not (ILIAS: core images go through ``ImageOps.exif_transpose``,
            the YFCC100M shards through webdataset's decoder, which does not transpose).
        fp16: store descriptors as float16 (computed in float32).
        preset: the name of the preset these settings came from, if any (recorded only).
        batch_size: images of equal size per forward pass; ``None``: 1 on CPU (larger CPU batches measured
            slower, see ``benchmarks/README.md``), 16 on GPU.
        num_workers: DataLoader processes decoding images.
        channels_last: run convolutions in NHWC memory format (about 1.5x faster on CPU with oneDNN).
        device: ``"cpu"``, ``"cuda"`` ... ; ``None`` picks CUDA when available.
    """

    image_size: int | None = 1024
    scales: tuple[float, ...] = DEFAULT_SCALES
    scale_resize: str = "tensor-bilinear"
    min_scale_side: int = 0
    crop_queries: bool = True
    crop_mode: str = "round"
    interpolation: str = "lanczos"
    resize: str = "thumbnail"
    exif_transpose: str = "never"
    fp16: bool = False
    preset: str | None = None
    batch_size: int | None = None
    num_workers: int = 0
    channels_last: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 (or None), got {self.image_size}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.scale_resize not in SCALE_RESIZES:
            raise ValueError(f"scale_resize must be one of {SCALE_RESIZES}, got {self.scale_resize!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {tuple(_RESAMPLE)}, got {self.interpolation!r}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {self.resize!r}")
        if self.resize != "thumbnail" and self.image_size is None:
            raise ValueError(f"resize={self.resize!r} needs an image_size")
        if self.exif_transpose not in EXIF_TRANSPOSES:
            raise ValueError(f"exif_transpose must be one of {EXIF_TRANSPOSES}, got {self.exif_transpose!r}")
        if (self.batch_size is not None and self.batch_size < 1) or self.num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    def settings(self) -> dict[str, Any]:
        """The fields that determine the descriptors (not speed knobs), JSON-ready."""
        d = asdict(self)
        for speed_only in ("batch_size", "num_workers", "channels_last", "device"):
            d.pop(speed_only)
        d["scales"] = list(self.scales)
        return d

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def resolved_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 1 if self.resolved_device().type == "cpu" else 16


# Scale lists as each official code writes them (CVNet and DOLG use 4-decimal literals).
PRESETS: dict[str, ExtractConfig] = {
    # revisitop/cirtorch test code: PIL crop (rounded), thumbnail to 1024 (crop rescaled), tensor scales.
    "revisitop": ExtractConfig(preset="revisitop", image_size=1024, scales=(1.0, 1 / SQRT2, 0.5)),
    # CVNet test/dataset.py: int-truncated crop, original size, cv2 INTER_AREA down / INTER_LINEAR up per scale.
    "cvnet": ExtractConfig(
        preset="cvnet", image_size=None, scales=(0.7071, 1.0, 1.4142), scale_resize="cv2-area-linear", crop_mode="trunc"
    ),
    # SuperGlobal: the same input at one scale; its scales (and S-GeM) live inside the model.
    "superglobal": ExtractConfig(preset="superglobal", image_size=None, scales=(1.0,), crop_mode="trunc"),
    # DOLG evaler/process.py: int-truncated crop, original size, 5 scales by cv2 INTER_LINEAR on the float image.
    "dolg": ExtractConfig(
        preset="dolg",
        image_size=None,
        scales=(0.3535, 0.5, 0.7071, 1.0, 1.4142),
        scale_resize="cv2-linear",
        crop_mode="trunc",
    ),
    # SpCa/Token (deleted train.py test()): cirtorch loading at 1024, scales 1, sqrt2, 1/sqrt2, skip sides < 36.
    "spca": ExtractConfig(preset="spca", image_size=1024, scales=(1.0, SQRT2, 1 / SQRT2), min_scale_side=36),
    # ILIAS feature_extraction/extract.py defaults: RESIZE_LARGE at --resolution 512 (lines 355-367; models.sh uses
    # 384 for some models), one scale (line 56, --multiscale False), full queries (--masking/--crop_resize False,
    # lines 386-397), fp16 storage (--store_fp16, lines 428-433). transforms.py:71-78, 105-121: LargeSideResize is
    # img.resize to a longer side of 512 with Pillow's default filter (bicubic), CenterPadding(min_size=0) pads
    # nothing. generators.py:319-323 EXIF-transposes the core images; the shards' webdataset decode does not.
    "ilias": ExtractConfig(
        preset="ilias",
        image_size=512,
        scales=(1.0,),
        crop_queries=False,
        interpolation="bicubic",
        resize="long-side",
        exif_transpose="files",
        fp16=True,
    ),
    # UnED universal_embedding/datasets.py:87-98, 121-142 (_process_test_split, used for kNN evaluation and
    # descriptor extraction, lines 231-236, 270-272): shorter side to IMAGE_SIZE = 224 (line 32) by tf.image.resize
    # BILINEAR, the longer one int-truncated, centre 224 x 224 crop; one scale; decode_jpeg without EXIF.
    "uned": ExtractConfig(preset="uned", image_size=224, scales=(1.0,), crop_queries=False, resize="short-side-crop"),
}


def preset(name: str, **overrides: Any) -> ExtractConfig:
    """The official test pipeline of a method, optionally with speed knobs or other fields changed."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def scale_image(img: np.ndarray, scale: float, mode: str) -> np.ndarray:
    """Resize an ``(H, W, 3)`` image by ``scale`` with OpenCV as CVNet or DOLG do (no call at scale 1).

    ``"cv2-area-linear"`` (CVNet ``test/dataset.py``): the uint8 image, ``INTER_AREA`` when shrinking and
    ``INTER_LINEAR`` when enlarging, sizes rounded by OpenCV (``fx = fy = scale``). ``"cv2-linear"`` (DOLG
    ``evaler/process.py``): the image converted to float32 first (no uint8 rounding), ``INTER_LINEAR`` to
    ``(round(W * scale), round(H * scale))``.
    """
    if scale == 1.0:
        return img
    if mode == "cv2-area-linear":
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        return cv2.resize(img, (0, 0), fx=scale, fy=scale, interpolation=interpolation)
    if mode == "cv2-linear":
        h, w = img.shape[:2]
        size = (round(w * scale), round(h * scale))
        return cv2.resize(img.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    raise ValueError(f"unknown image-level scale mode {mode!r}")


def long_side_resize(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Resize to a longer side of exactly ``size`` (enlarging too), the other side ``int``-truncated as ilias
    ``feature_extraction/src/datasets/transforms.py:113-121`` (``LargeSideResize``) computes it."""
    w, h = img.size
    ar = h / w
    new_h = max(1, int(size * ar) if ar <= 1 else size)
    new_w = max(1, int(size / ar) if ar > 1 else size)
    return img.resize((new_w, new_h), resample)


def short_side_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """``(size, size, 3)`` float32 centre crop of an ``(H, W, 3)`` image resized to a shorter side of ``size``.

    As UnED ``universal_embedding/datasets.py:87-142``: the longer side becomes ``int(long / short * size)``, the
    resize is ``tf.image.resize`` bilinear (half-pixel centres, no antialiasing: ``F.interpolate`` with
    ``align_corners=False``) on the float image (no uint8 rounding), the crop offset is ``(long - short) // 2``.
    """
    h, w = img.shape[:2]
    new_h, new_w = (size, int(w / h * size)) if h <= w else (int(h / w * size), size)
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, top : top + size, left : left + size].permute(1, 2, 0).numpy()


class _Images(Dataset):
    """Decoded, cropped, shrunk and normalised images: item ``i`` is ``(i, [(3, h, w) float tensor, ...])``,
    one tensor, or one per scale when scales are made from the uint8 image (``cv2-*``)."""

    def __init__(
        self,
        paths: Sequence[ImageRef],
        boxes: Sequence[Sequence[float] | None] | None,
        cfg: ExtractConfig,
        mean: Sequence[float],
        std: Sequence[float],
        dataset: str | None,
    ) -> None:
        self.paths, self.boxes, self.cfg, self.dataset = list(paths), boxes, cfg, dataset
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, list[torch.Tensor]]:
        img = self.load(i)
        if self.cfg.scale_resize == "tensor-bilinear":
            return i, [self.normalise(img)]
        return i, [self.normalise(scale_image(img, s, self.cfg.scale_resize)) for s in self.cfg.scales]

    def load(self, i: int) -> np.ndarray:
        """The image as ``(H, W, 3)`` RGB after cropping and resizing: uint8, float32 for ``short-side-crop``."""
        ref, cfg = self.paths[i], self.cfg
        transpose = cfg.exif_transpose == "always" or (cfg.exif_transpose == "files" and not isinstance(ref, TarMember))
        img = load_image(ref, dataset=self.dataset, exif_transpose=transpose)
        full_side = max(img.size)
        box = self.boxes[i] if self.boxes is not None else None
        if box is not None:
            img = crop_query(img, box, cfg.crop_mode)  # type: ignore[arg-type]
        if cfg.image_size is None:
            return np.asarray(img)
        if cfg.resize == "long-side":
            return np.asarray(long_side_resize(img, cfg.image_size, _RESAMPLE[cfg.interpolation]))
        if cfg.resize == "short-side-crop":
            return short_side_center_crop(np.asarray(img), cfg.image_size)
        side = cfg.image_size * max(img.size) / full_side
        img.thumbnail((side, side), _RESAMPLE[cfg.interpolation])
        return np.asarray(img)

    def normalise(self, img: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std


def _same_size_batches(
    items: Iterator[tuple[int, list[torch.Tensor]]], batch_size: int
) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """Regroup a stream of images into batches of equal size; a bounded number wait for partners."""
    pending: dict[tuple, list[tuple[int, list[torch.Tensor]]]] = {}
    n_pending = 0

    def release(shape: tuple) -> tuple[list[int], list[torch.Tensor]]:
        nonlocal n_pending
        ready = pending.pop(shape)
        n_pending -= len(ready)
        return [j for j, _ in ready], [torch.stack(parts) for parts in zip(*(t for _, t in ready), strict=True)]

    for i, xs in items:
        shape = tuple(tuple(x.shape) for x in xs)
        pending.setdefault(shape, []).append((i, xs))
        n_pending += 1
        if len(pending[shape]) == batch_size:
            yield release(shape)
        elif n_pending >= 4 * batch_size:
            yield release(max(pending, key=lambda k: len(pending[k])))
    while pending:
        yield release(next(iter(pending)))


def multiscale_descriptor(
    model: nn.Module,
    xs: Sequence[torch.Tensor],
    scales: Sequence[float] | None = None,
    *,
    min_side: int = 0,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """``(B, D)`` L2-normalised mean of per-scale L2-normalised descriptors.

    With ``scales``, ``xs`` is one ``(B, 3, H, W)`` normalised batch resized here to each scale (bilinear, as
    cirtorch; a scale whose shorter side would be below ``min_side`` is skipped, and scale 1 is used when all are).
    Without, ``xs`` holds one batch per scale, already resized.
    """
    if scales is not None:
        (x,) = xs
        h, w = x.shape[-2:]
        used = [s for s in scales if min(int(h * s), int(w * s)) >= min_side] or [1.0]
        xs = [x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) for s in used]
    return mean_of_scales(model(x.contiguous(memory_format=memory_format)) for x in xs)


def extract_descriptors(
    model: RetrievalModel,
    paths: Sequence[str | os.PathLike | TarMember],
    *,
    boxes: Sequence[Sequence[float] | None] | None = None,
    cfg: ExtractConfig = ExtractConfig(),
    dataset: str | None = None,
    desc: str = "extract",
    progress: bool = True,
    out: np.ndarray | None = None,
    done: np.ndarray | None = None,
) -> np.ndarray:
    """Descriptors ``(len(paths), D)`` (float32, or float16 with ``cfg.fp16``) of images (files or tar members),
    cropped to ``boxes``.

    The model maps ``(B, 3, H, W)`` images normalised with ``model.data_config`` (``mean``/``std``, RGB) to
    ``(B, D)`` descriptors, ``D = model.feat_dim``. With ``out`` and ``done`` (a boolean mask per image, set batch
    by batch), only the images not done are extracted, into ``out``: an extraction that fails keeps what it had
    finished (:class:`FeatureCache` saves it).
    """
    if boxes is not None and len(boxes) != len(paths):
        raise ValueError(f"{len(boxes)} boxes for {len(paths)} images")
    data_config = model.data_config
    device = cfg.resolved_device()
    was_training = model.training
    model.eval().to(device)
    nhwc = cfg.channels_last and to_channels_last(model)
    memory_format = torch.channels_last if nhwc else torch.contiguous_format
    images = _Images([as_image_ref(p) for p in paths], boxes, cfg, data_config["mean"], data_config["std"], dataset)
    if out is None:
        out = np.empty((len(paths), model.feat_dim), dtype=np.float16 if cfg.fp16 else np.float32)
    if done is None:
        done = np.zeros(len(paths), dtype=bool)
    todo = np.flatnonzero(~done).tolist()
    loader = DataLoader(images, batch_size=None, sampler=todo, num_workers=cfg.num_workers)
    # Only the forward passes run in inference mode: parameters moved or re-laid out inside it would become
    # inference tensors, and the model could not be trained (or explained with gradients) afterwards.
    with tqdm(total=len(todo), desc=desc, unit="img", disable=not progress) as bar, torch.inference_mode():
        for idx, xs in _same_size_batches(iter(loader), cfg.resolved_batch_size()):
            d = multiscale_descriptor(
                model,
                [x.to(device) for x in xs],
                cfg.scales if cfg.scale_resize == "tensor-bilinear" else None,
                min_side=cfg.min_scale_side,
                memory_format=memory_format,
            )
            out[idx] = d.float().cpu().numpy()
            done[idx] = True
            bar.update(len(idx))
    model.train(was_training)
    return out


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's class, parameter and buffer names and bytes: the identity of its weights."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _image_states(paths: Sequence[str | os.PathLike | TarMember]) -> np.ndarray:
    """Each image's ``"size|mtime_ns"`` (``"missing"`` when absent): what tells a changed file. A tar member's is its
    shard's, followed by ``"|offset|size"`` of the member (each shard is looked at once)."""
    shards: dict[Path, str] = {}

    def state(path: Path) -> str:
        st = path.stat() if path.exists() else None
        return f"{st.st_size}|{st.st_mtime_ns}" if st else "missing"

    states = []
    for p in paths:
        if isinstance(p, TarMember):
            if p.shard not in shards:
                shards[p.shard] = state(p.shard)
            states.append(f"{shards[p.shard]}|{p.offset}|{p.size}")
        else:
            states.append(state(Path(p)))
    return np.array(states)


def _image_names(paths: Sequence[str | os.PathLike | TarMember]) -> list[str]:
    """The absolute names of images in cache keys: resolved paths, or ``<resolved shard>::<member name>``."""
    shards: dict[Path, Path] = {}
    names = []
    for p in paths:
        if isinstance(p, TarMember):
            if p.shard not in shards:
                shards[p.shard] = p.shard.resolve()
            names.append(f"{shards[p.shard]}::{p.name}")
        else:
            names.append(str(Path(p).resolve()))
    return names


class FeatureCache:
    """Descriptors on disk under ``root/<key>.npy`` with ``<key>.json`` describing them.

    The key hashes the model weights, the descriptor-defining settings and the images (path, size, mtime, box), so
    changing any of them extracts anew. An extraction that fails keeps its finished rows under a ``partial-`` key
    (:meth:`keep`, :meth:`resume`).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def key(
        weights: str,
        paths: Sequence[ImageRef],
        boxes: Sequence[Sequence[float] | None] | None,
        cfg: ExtractConfig,
        *,
        partial: bool = False,
    ) -> str:
        """Cache key of descriptors from weights ``model_fingerprint(model)`` of ``paths`` with ``boxes``;
        ``partial``: the key of an unfinished extraction, over the image names only, so that fixing one image (which
        changes its size or time) still finds the rows of the others."""
        images = _image_names(paths)
        if not partial:
            images = [f"{name}|{state}" for name, state in zip(images, _image_states(paths), strict=True)]
        boxes_ = None if boxes is None else [repr(b) for b in boxes]
        parts = {"model": weights, "settings": cfg.settings(), "images": images, "boxes": boxes_}
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
        return f"partial-{digest}" if partial else digest

    def load(self, key: str) -> np.ndarray | None:
        """The cached descriptors, or None when absent; a damaged file (truncated, not ``.npy``) is a miss too,
        with a warning naming it (the descriptors are computed again and the file replaced)."""
        path = self.root / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            warnings.warn(f"feature cache {path} is unreadable ({err}); extracting again", stacklevel=2)
            return None

    def save(self, key: str, array: np.ndarray, meta: dict[str, Any]) -> None:
        save_npy(self.root / f"{key}.npy", array)
        write_json(self.root / f"{key}.json", meta)

    def resume(self, key: str, paths: Sequence[ImageRef], dim: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """``(descriptors, done)`` of an unfinished extraction under partial ``key``: the rows of images that are
        unchanged since (size and time) count as done; fresh arrays when there is none."""
        out, done = np.empty((len(paths), dim), dtype=dtype), np.zeros(len(paths), dtype=bool)
        rows, record = self.root / f"{key}.npy", self.root / f"{key}.json"
        if rows.is_file() and record.is_file():
            try:
                saved, meta = np.load(rows, allow_pickle=False), json.loads(record.read_text())
            except (ValueError, OSError) as err:
                warnings.warn(f"unfinished extraction {rows} is unreadable ({err}); starting over", stacklevel=2)
                return out, done
            if saved.shape == out.shape and saved.dtype == out.dtype:
                same = np.array(meta["done"], dtype=bool) & (np.array(meta["images"]) == _image_states(paths))
                out[same], done[same] = saved[same], True
        return out, done

    def keep(self, key: str, paths: Sequence[ImageRef], out: np.ndarray, done: np.ndarray) -> None:
        """Save an unfinished extraction under partial ``key`` (rows, which are done, and the images' states)."""
        save_npy(self.root / f"{key}.npy", out)
        write_json(self.root / f"{key}.json", {"done": done.tolist(), "images": _image_states(paths).tolist()})

    def drop(self, key: str) -> None:
        """Remove the unfinished extraction under partial ``key`` (it finished)."""
        for suffix in (".npy", ".json"):
            (self.root / f"{key}{suffix}").unlink(missing_ok=True)


def extract_revisited(
    model: RetrievalModel,
    dataset: RevisitedDataset,
    cfg: ExtractConfig = ExtractConfig(),
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Query and database descriptors ``(n_queries, D)``, ``(n_db, D)`` of a revisited dataset.

    Queries are cropped to their box unless ``cfg.crop_queries`` is off. With ``cache_dir``, descriptors computed
    before with the same weights, settings and image files are read back instead of extracted.
    """
    missing = dataset.missing_images()
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {dataset.n_db + dataset.n_queries} images of {dataset.label} are missing, e.g. "
            f"{', '.join(map(str, missing[:3]))}; the revisited layout is <root>/jpg/<name>.jpg with root "
            f"{dataset.root} (and distractors as listed in their list file)"
        )
    boxes = dataset.bbx.tolist() if cfg.crop_queries else None
    return tuple(
        extract_cached(
            model,
            paths,
            part_boxes,
            cfg,
            cache_dir=cache_dir,
            dataset=dataset.name,
            desc=f"{dataset.name} {name}",
            progress=progress,
        )
        for name, paths, part_boxes in (("queries", dataset.query_paths, boxes), ("database", dataset.db_paths, None))
    )


def extract_cached(
    model: RetrievalModel,
    paths: Sequence[ImageRef],
    boxes: Sequence[Sequence[float] | None] | None,
    cfg: ExtractConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    desc: str = "extract",
    progress: bool = True,
) -> np.ndarray:
    """:func:`extract_descriptors` through the :class:`FeatureCache` in ``cache_dir`` (None: no cache).

    Descriptors computed before with the same weights, settings and image files are read back; an extraction that
    fails keeps the rows it finished, and the next call extracts only the images not done or changed since.
    """
    if cache_dir is None:
        return extract_descriptors(model, paths, boxes=boxes, cfg=cfg, dataset=dataset, desc=desc, progress=progress)
    cache = FeatureCache(cache_dir)
    weights = model_fingerprint(model)
    key = cache.key(weights, paths, boxes, cfg)
    feats = cache.load(key)
    if feats is not None:
        return feats
    partial = cache.key(weights, paths, boxes, cfg, partial=True)
    out, done = cache.resume(partial, paths, model.feat_dim, np.dtype(np.float16 if cfg.fp16 else np.float32))
    try:
        feats = extract_descriptors(
            model, paths, boxes=boxes, cfg=cfg, dataset=dataset, desc=desc, progress=progress, out=out, done=done
        )
    except BaseException:
        if done.any():  # a rerun after the failing image is fixed starts where this one stopped
            cache.keep(partial, paths, out, done)
        raise
    meta = {"dataset": dataset, "part": desc, "n": len(paths), "settings": cfg.settings()}
    cache.save(key, feats, meta | {"model": model.config})
    cache.drop(partial)
    return feats
