"""Local descriptors for learned reranking (AMES, :mod:`irlib.models.ames`), cached on disk.

The local descriptors of an image are the rows of a retrieval model's feature map ``forward_features`` ``(1, C, h,
w)`` at every scale of the extraction settings, from the same decoded, cropped and resized image as its global
descriptor (:class:`irlib.eval.extract.ExtractConfig`). Two products:

- :func:`cached_positions`: all positions of every image, float16 ``(P_i, C)``, what training reads (the detector
  being trained chooses among them). About ``P * C * 2`` bytes per image: training sets only.
- :func:`cached_codes`: an AMES reranker's ``n`` best positions of every image as packed binary codes
  (:class:`irlib.models.ames.BinaryLocals`, ``n * bits / 8 + 2`` bytes per image), what reranking reads.

Both are cached under ``cache_dir`` with :class:`irlib.eval.extract.FeatureCache` keys (model weights, settings and
image files), codes also by the reranker file's SHA-256 and ``n``; writes are atomic. :class:`DatasetLocals` gives the
codes of a revisited dataset's queries and database to :func:`irlib.eval.rerank.learned_rerank`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from irlib.data.images import ImageRef, as_image_ref
from irlib.data.revisited import RevisitedDataset
from irlib.eval.extract import ExtractConfig, FeatureCache, _Images, model_fingerprint
from irlib.io import sha256_file
from irlib.models.ames import AMES, BinaryLocals, load_reranker, pack_codes
from irlib.models.base import RetrievalModel, to_channels_last


@dataclass(frozen=True)
class Positions:
    """Every position's local descriptor of ``n`` images: image ``i`` is ``features[offsets[i]:offsets[i + 1]]``.

    Attributes:
        features: ``(sum P_i, C)`` float16.
        offsets: ``(n + 1,)`` int64, starting at 0.
    """

    features: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def image(self, i: int) -> torch.Tensor:
        """Image ``i``'s ``(P_i, C)`` descriptors as float32."""
        return torch.from_numpy(self.features[self.offsets[i] : self.offsets[i + 1]].astype(np.float32))


def _scales(xs: list[torch.Tensor], cfg: ExtractConfig) -> list[torch.Tensor]:
    """The per-scale inputs :func:`irlib.eval.extract.multiscale_descriptor` feeds the model for one image."""
    if cfg.scale_resize != "tensor-bilinear":
        return xs  # already one tensor per scale
    (x,) = xs
    h, w = x.shape[-2:]
    used = [s for s in cfg.scales if min(int(h * s), int(w * s)) >= cfg.min_scale_side] or [1.0]
    return [x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) for s in used]


def iter_positions(
    model: RetrievalModel,
    paths: Sequence[ImageRef],
    boxes: Sequence[Sequence[float] | None] | None,
    cfg: ExtractConfig,
    *,
    dataset: str | None = None,
    desc: str = "locals",
    progress: bool = True,
) -> Iterator[torch.Tensor]:
    """Each image's ``(P, C)`` float32 local descriptors, in order: the ``h * w`` rows of ``model.forward_features``
    at every scale, concatenated (on ``cfg``'s device)."""
    if boxes is not None and len(boxes) != len(paths):
        raise ValueError(f"{len(boxes)} boxes for {len(paths)} images")
    device = cfg.resolved_device()
    was_training = model.training
    model.eval().to(device)
    memory_format = torch.channels_last if cfg.channels_last and to_channels_last(model) else torch.contiguous_format
    data = model.data_config
    images = _Images([as_image_ref(p) for p in paths], boxes, cfg, data["mean"], data["std"], dataset)
    loader = DataLoader(images, batch_size=None, num_workers=cfg.num_workers)
    try:
        with torch.inference_mode():
            for _, xs in tqdm(loader, total=len(images), desc=desc, unit="img", disable=not progress):
                maps = [
                    model.forward_features(x.to(device).contiguous(memory_format=memory_format))
                    for x in _scales([x[None] for x in xs], cfg)
                ]
                yield torch.cat([m[0].flatten(1).T for m in maps]).float()
    finally:
        model.train(was_training)


def extract_positions(
    model: RetrievalModel,
    paths: Sequence[ImageRef],
    boxes: Sequence[Sequence[float] | None] | None,
    cfg: ExtractConfig,
    **kwargs: Any,
) -> Positions:
    """:func:`iter_positions` of every image, stored as :class:`Positions` (float16)."""
    parts = [p.half().cpu().numpy() for p in iter_positions(model, paths, boxes, cfg, **kwargs)]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    return Positions(np.concatenate(parts) if parts else np.zeros((0, 0), np.float16), offsets)


def _cache_key(model: RetrievalModel, paths: Sequence[ImageRef], boxes: Any, cfg: ExtractConfig) -> str:
    return FeatureCache.key(model_fingerprint(model), paths, boxes, cfg)


def cached_positions(
    model: RetrievalModel,
    paths: Sequence[ImageRef],
    boxes: Sequence[Sequence[float] | None] | None,
    cfg: ExtractConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    desc: str = "locals",
    progress: bool = True,
) -> Positions:
    """:func:`extract_positions` through a :class:`FeatureCache` in ``cache_dir`` (None: no cache)."""
    if cache_dir is None:
        return extract_positions(model, paths, boxes, cfg, dataset=dataset, desc=desc, progress=progress)

    def compute() -> tuple[np.ndarray, np.ndarray]:
        positions = extract_positions(model, paths, boxes, cfg, dataset=dataset, desc=desc, progress=progress)
        return positions.features, positions.offsets

    key = _cache_key(model, paths, boxes, cfg) + "-positions"
    meta = {"dataset": dataset, "part": desc, "n": len(paths), "settings": cfg.settings(), "model": model.config}
    features, offsets = _cached_pair(cache_dir, key, "offsets", len(paths) + 1, compute, meta)
    return Positions(features, offsets)


def _cached_pair(
    cache_dir: str | os.PathLike,
    key: str,
    suffix: str,
    n: int,
    compute: Callable[[], tuple[np.ndarray, np.ndarray]],
    meta: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays stored in the :class:`FeatureCache` of ``cache_dir`` as ``key`` and ``key-suffix``: read back when
    the second has ``n`` rows, else ``compute()``-d and saved (atomically, with ``meta``)."""
    cache = FeatureCache(cache_dir)
    first, second = cache.load(key), cache.load(f"{key}-{suffix}")
    if first is None or second is None or len(second) != n:
        first, second = compute()
        cache.save(key, first, meta)
        cache.save(f"{key}-{suffix}", second, meta)
    return first, second


def select_codes(reranker: AMES, positions: Iterator[torch.Tensor], n: int) -> BinaryLocals:
    """The packed codes of each image's ``n`` best positions by ``reranker``'s detector (in eval mode)."""
    codes, counts = [], []
    with torch.inference_mode():
        for p in positions:
            p = p.to(next(reranker.parameters()).device)
            selected = reranker.select(p, reranker.detect(p), n)
            codes.append(F.pad(selected, (0, 0, 0, n - len(selected))).cpu())
            counts.append(len(selected))
    stacked = torch.stack(codes) if codes else torch.zeros(0, n, reranker.config.bits)
    return pack_codes(stacked, torch.tensor(counts, dtype=torch.int64))


def cached_codes(
    model: RetrievalModel,
    reranker: AMES,
    reranker_sha256: str,
    paths: Sequence[ImageRef],
    boxes: Sequence[Sequence[float] | None] | None,
    cfg: ExtractConfig,
    n: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    desc: str = "locals",
    progress: bool = True,
) -> BinaryLocals:
    """The reranker's codes of each image's ``n`` best positions (:func:`select_codes` of :func:`iter_positions`),
    through a :class:`FeatureCache` in ``cache_dir`` keyed also by ``reranker_sha256`` and ``n``."""

    def compute() -> BinaryLocals:
        positions = iter_positions(model, paths, boxes, cfg, dataset=dataset, desc=desc, progress=progress)
        return select_codes(reranker.eval(), positions, n)

    if cache_dir is None:
        return replace(compute(), source=reranker_sha256)
    key = f"{_cache_key(model, paths, boxes, cfg)}-ames-{reranker_sha256[:16]}-n{n}"
    meta = {
        "dataset": dataset,
        "part": desc,
        "n": len(paths),
        "settings": cfg.settings(),
        "model": model.config,
        "reranker_sha256": reranker_sha256,
        "descriptors_per_image": n,
    }

    def arrays() -> tuple[np.ndarray, np.ndarray]:
        computed = compute()
        return computed.codes, computed.counts

    codes, counts = _cached_pair(cache_dir, key, "counts", len(paths), arrays, meta)
    return BinaryLocals(codes, counts, reranker_sha256)


class DatasetLocals:
    """The binary local descriptors of a revisited dataset's queries (``n_query`` each) and database (``n_db``), for
    :func:`irlib.eval.rerank.learned_rerank`, extracted with the reranker of file ``reranker`` on first use.

    The reranker must have been trained on ``model``'s feature maps (its file records the model's fingerprint).
    Queries are cropped as ``cfg`` says, as for their global descriptors.
    """

    def __init__(
        self,
        model: RetrievalModel,
        dataset: RevisitedDataset,
        reranker: str | os.PathLike,
        cfg: ExtractConfig = ExtractConfig(),
        *,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        self.model, self.dataset, self.cfg, self.cache_dir, self.progress = model, dataset, cfg, cache_dir, progress
        self.path = os.fspath(reranker)
        self.reranker, self.meta = load_reranker(reranker)
        self.sha256 = sha256_file(reranker)
        trained_on = self.meta.get("backbone_fingerprint")
        if trained_on != model_fingerprint(model):
            raise ValueError(
                f"{self.path} was trained on the feature maps of another retrieval model (fingerprint "
                f"{str(trained_on)[:12]}...) than the one evaluated ({model_fingerprint(model)[:12]}...): train a "
                f"reranker on this model (irlib.train.reranker)"
            )
        self._queries: BinaryLocals | None = None
        self._database: BinaryLocals | None = None

    def _codes(self, paths: Sequence[ImageRef], boxes: Any, n: int, part: str) -> BinaryLocals:
        return cached_codes(
            self.model,
            self.reranker,
            self.sha256,
            paths,
            boxes,
            self.cfg,
            n,
            cache_dir=self.cache_dir,
            dataset=self.dataset.name,
            desc=f"{self.dataset.name} {part} locals",
            progress=self.progress,
        )

    def queries(self) -> BinaryLocals:
        """``(n_queries, n_query, bits / 8)`` codes of the queries."""
        if self._queries is None:
            boxes = self.dataset.bbx.tolist() if self.cfg.crop_queries else None
            self._queries = self._codes(self.dataset.query_paths, boxes, self.reranker.config.n_query, "queries")
        return self._queries

    def database(self, ids: np.ndarray) -> BinaryLocals:
        """Codes of database images ``ids`` (``n_db`` each)."""
        ids = np.asarray(ids)
        if ids.size and ids.max() >= self.dataset.n_db:
            raise ValueError(
                f"learned reranking reads the local descriptors of database images, but id {ids.max()} is beyond "
                f"{self.dataset.label}'s {self.dataset.n_db} images (distractor features have no local descriptors)"
            )
        if self._database is None:
            self._database = self._codes(self.dataset.db_paths, None, self.reranker.config.n_db, "database")
        return self._database.take(ids)

    def record(self) -> dict[str, Any]:
        """What metrics.json records of the local descriptors."""
        config = self.reranker.config
        return {
            "reranker": self.path,
            "reranker_sha256": self.sha256,
            "n_query": config.n_query,
            "n_db": config.n_db,
            "bits": config.bits,
            "bytes_per_db_image": config.bytes_per_db_image,
            "query_descriptors": "binary (the same binariser as the database), computed at query time",
            "trained_with": {k: v for k, v in self.meta.items() if k in ("train_config", "lam", "gamma")},
        }
