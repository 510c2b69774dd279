"""Descriptors of a large image list (e.g. the 1M revisitop distractors) extracted in resumable fp16 chunks.

The list is cut into fixed chunks of ``chunk_size`` images, independent of the number of processes: chunk ``i``
belongs to rank ``i % world_size``. Every finished chunk is written atomically to ``chunks/{start:09d}-{end:09d}.npy``
(float16), so a killed job rerun with the same arguments, with any number of processes, computes only the missing
chunks. ``meta.json`` records what the chunks are descriptors of (model weights, extraction settings, the image
list, chunk size, dimension); a rerun with anything else raises instead of mixing features. When every chunk is
there, rank 0 concatenates them into ``features.npy`` ``(N, D)`` float16 and removes ``chunks/``;
:func:`load_features` memory-maps it read-only.

Run one process per GPU with ``torchrun --nproc_per_node=N -m irlib extract ...``: the ranks come from
``torch.distributed`` (on one CPU, a single process using every core is as fast: ``benchmarks/README.md``).
Independent jobs (no process group, e.g. a job array) may pass ``process_rank`` and ``world_size`` themselves and call
:func:`assemble` when all are done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from tqdm.auto import tqdm

from irlib.data.images import TarMember
from irlib.eval.extract import ExtractConfig, extract_descriptors, model_fingerprint
from irlib.io import atomic_path, save_npy, write_json
from irlib.models.base import RetrievalModel

META = "meta.json"
FEATURES = "features.npy"
CHUNKS = "chunks"
FORMAT = 1


def paths_fingerprint(paths: Sequence[str | os.PathLike | TarMember]) -> str:
    """SHA-256 of the absolute image paths in order (no file access, so it is cheap for a million paths); a tar
    member counts as ``<absolute shard path>::<member name>``."""
    h = hashlib.sha256()
    for p in paths:
        name = f"{os.path.abspath(p.shard)}::{p.name}" if isinstance(p, TarMember) else os.path.abspath(p)
        h.update(name.encode())
        h.update(b"\n")
    return h.hexdigest()


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the fixed chunks of ``n`` images, the last one shorter."""
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def chunk_path(out_dir: str | os.PathLike, start: int, end: int) -> Path:
    return Path(out_dir) / CHUNKS / f"{start:09d}-{end:09d}.npy"


def _process_rank(process_rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    """``(process_rank, world_size, distributed)``: from the process group when there is one, else as given (0 of
    1)."""
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        got = dist.get_rank(), dist.get_world_size()
        if (process_rank is not None and process_rank != got[0]) or (world_size is not None and world_size != got[1]):
            raise ValueError(
                f"process_rank={process_rank}, world_size={world_size} contradict the process group (rank {got[0]} "
                f"of {got[1]})"
            )
        return got[0], got[1], True
    rank, world_size = (0 if process_rank is None else process_rank), (1 if world_size is None else world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= process_rank < world_size, got process_rank={rank}, world_size={world_size}")
    return rank, world_size, False


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    return [k for k in sorted(set(found) | set(expected)) if found.get(k) != expected.get(k)]


def read_meta(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``meta.json`` of a feature folder."""
    path = Path(out_dir) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {out_dir} is not a folder written by extract_sharded")
    return json.loads(path.read_text())


def _check_meta(out_dir: Path, expected: dict[str, Any]) -> None:
    found = read_meta(out_dir)
    differ = _differences(found, expected)
    if differ:
        raise ValueError(
            f"{out_dir} holds features of other inputs (different {', '.join(differ)}): rerun with the same model, "
            "settings, image list and chunk size to resume, or choose another (or an empty) folder"
        )


def _chunk_done(path: Path, rows: int, dim: int) -> bool:
    """A chunk file exists with the expected shape and dtype (files are renamed into place only when complete)."""
    if not path.is_file():
        return False
    try:
        a = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return a.shape == (rows, dim) and a.dtype == np.float16


def assemble(out_dir: str | os.PathLike) -> Path:
    """Concatenate the chunks of a finished extraction into ``features.npy`` ``(N, D)`` float16, then remove them.

    The file is written through a memory map under a temporary name and renamed at the end, so a reader sees either
    nothing or the whole array.
    """
    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    n, dim = meta["n_images"], meta["dim"]
    bounds = chunk_bounds(n, meta["chunk_size"])
    missing = [
        chunk_path(out_dir, s, e).name for s, e in bounds if not _chunk_done(chunk_path(out_dir, s, e), e - s, dim)
    ]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(bounds)} chunks under {out_dir / CHUNKS} are missing: {missing[:3]}"
        )
    target = out_dir / FEATURES
    with atomic_path(target) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
        for s, e in bounds:
            out[s:e] = np.load(chunk_path(out_dir, s, e))
        out.flush()
        del out
    shutil.rmtree(out_dir / CHUNKS)
    return target


def load_features(out_dir: str | os.PathLike) -> np.memmap:
    """``features.npy`` of a finished :func:`extract_sharded` folder: a read-only ``(N, D)`` float16 memory map."""
    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    path = out_dir / FEATURES
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the extraction into {out_dir} has not finished")
    feats = np.load(path, mmap_mode="r")
    if feats.shape != (meta["n_images"], meta["dim"]) or feats.dtype != np.float16:
        raise ValueError(
            f"{path} is {feats.shape} {feats.dtype}, but {META} describes ({meta['n_images']}, {meta['dim']}) float16"
        )
    return feats


def _barrier(distributed: bool) -> None:
    if distributed:
        dist.barrier()


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files of writes killed midway (``atomic_path`` names them ``.<name>.<random>.tmp``)."""
    for tmp in [*out_dir.glob(".*.tmp"), *(out_dir / CHUNKS).glob(".*.tmp")]:
        tmp.unlink(missing_ok=True)


def extract_sharded(
    model: RetrievalModel,
    paths: Sequence[str | os.PathLike | TarMember],
    out_dir: str | os.PathLike,
    cfg: ExtractConfig = ExtractConfig(),
    *,
    chunk_size: int = 1024,
    process_rank: int | None = None,
    world_size: int | None = None,
    dataset: str | None = None,
    progress: bool = True,
) -> Path | None:
    """Extract descriptors of ``paths`` (no boxes) into ``out_dir`` chunk by chunk, this rank's chunks only.

    Args:
        model: as for :func:`~irlib.eval.extract.extract_descriptors`; every rank must hold the same weights.
        paths: the images (files or tar-shard members), in database order.
        out_dir: the feature folder, new or empty (created), or one this function wrote before (resumed).
        cfg: extraction settings; descriptors are stored as float16 whatever ``cfg.fp16`` says.
        chunk_size: images per chunk file (a resumed job must use the same).
        process_rank, world_size: taken from ``torch.distributed`` when it is initialised (they must agree if given);
            without a process group they default to 0 and 1.
        dataset: a name for error messages about images.
        progress: a progress bar per rank (images of this rank's missing chunks).

    Returns:
        The path of ``features.npy`` ``(len(paths), D)`` float16, on every rank. Independent jobs
        (``world_size > 1`` without a process group) only write their chunks and return ``None``: call
        :func:`assemble` once all have finished.
    """
    if not paths:
        raise ValueError("no images to extract")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    dim = model.feat_dim
    if not isinstance(dim, int):
        raise ValueError(f"the model needs an integer feat_dim (descriptor size), got {dim!r}")
    rank, world_size, distributed = _process_rank(process_rank, world_size)
    alone = distributed or world_size == 1  # no other job writes into out_dir
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out_dir {out_dir} exists and is not a folder")
    cfg = replace(cfg, fp16=True)
    expected = {
        "format": FORMAT,
        "model": model_fingerprint(model),
        "settings": cfg.settings(),
        "n_images": len(paths),
        "paths_sha256": paths_fingerprint(paths),
        "chunk_size": chunk_size,
        "dim": dim,
    }
    # Nothing is written before the first barrier, so every rank sees the same folder and takes the same branch.
    fresh = not (out_dir / META).is_file()
    if fresh and alone and out_dir.is_dir() and any(out_dir.iterdir()):
        raise FileExistsError(f"out_dir {out_dir} is not empty and has no {META}: choose a new or empty folder")
    finished = (out_dir / FEATURES).is_file()
    _barrier(distributed)
    if fresh and (rank == 0 or not distributed):  # an independent job may start first: each writes the same meta
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / META, expected)
    if rank == 0 and alone:
        _remove_stale_temporaries(out_dir)
    _barrier(distributed)
    _check_meta(out_dir, expected)  # every rank raises, or none does
    if finished:
        if rank == 0 and alone:  # a job killed between writing features.npy and removing the chunks
            shutil.rmtree(out_dir / CHUNKS, ignore_errors=True)
        return out_dir / FEATURES

    bounds = chunk_bounds(len(paths), chunk_size)
    todo = [
        (s, e)
        for i, (s, e) in enumerate(bounds)
        if i % world_size == rank and not _chunk_done(chunk_path(out_dir, s, e), e - s, dim)
    ]
    (out_dir / CHUNKS).mkdir(exist_ok=True)
    with tqdm(
        total=sum(e - s for s, e in todo),
        desc=f"rank {rank}/{world_size}",
        unit="img",
        position=rank,
        disable=not progress,
    ) as bar:
        for s, e in todo:
            feats = extract_descriptors(model, paths[s:e], cfg=cfg, dataset=dataset, progress=False)
            save_npy(chunk_path(out_dir, s, e), feats)
            bar.update(e - s)
    if not alone:
        return None
    _barrier(distributed)
    if rank == 0:
        assemble(out_dir)
    _barrier(distributed)
    return out_dir / FEATURES
