"""Sharded extraction: 2 CPU processes give the single-process descriptors, killed jobs resume, mismatches raise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from irlib.data.ilias import index_shards
from irlib.data.revisited import Distractors
from irlib.eval.extract import ExtractConfig, extract_descriptors
from irlib.eval.shards import (
    CHUNKS,
    META,
    assemble,
    chunk_bounds,
    chunk_path,
    extract_sharded,
    load_features,
    paths_fingerprint,
    read_meta,
)
from irlib.models import create_model
from tests.data.test_images import write_shard

N_IMAGES, CHUNK = 20, 3  # 7 chunks, the last one of 2 images
CFG = ExtractConfig(image_size=64, scales=(1.0,))
ATOL = 2e-3  # float16 rounding of unit-norm descriptors, plus thread-count noise across processes


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("gem", backbone="efficientnet_lite0")


def count_images(model: torch.nn.Module, fail_after: int | None = None) -> list[int]:
    """Count the images the model sees (one element per forward); raise once ``fail_after`` have been seen."""
    seen: list[int] = []

    def hook(module, args):
        if fail_after is not None and sum(seen) >= fail_after:
            raise RuntimeError("simulated crash")
        seen.append(args[0].shape[0])

    model.register_forward_pre_hook(hook)
    return seen


def chunks_on_disk(out: Path) -> set[int]:
    """Indices of the chunk files present."""
    bounds = chunk_bounds(N_IMAGES, CHUNK)
    return {i for i, (s, e) in enumerate(bounds) if chunk_path(out, s, e).is_file()}


def images_in(chunks: set[int]) -> int:
    bounds = chunk_bounds(N_IMAGES, CHUNK)
    return sum(bounds[i][1] - bounds[i][0] for i in chunks)


@pytest.fixture(scope="module")
def distractor_root(tmp_path_factory) -> Path:
    """Noise images of two sizes in the revisitop1m layout (``jpg/<d>/<name>.jpg`` listed in ``revisitop1m.txt``)."""
    root = tmp_path_factory.mktemp("revisitop1m")
    rng = np.random.default_rng(0)
    names = [f"{i % 4}/{i:06d}.jpg" for i in range(N_IMAGES)]
    for i, name in enumerate(names):
        (root / "jpg" / name).parent.mkdir(parents=True, exist_ok=True)
        shape = (30, 40, 3) if i % 2 else (40, 30, 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / "jpg" / name)
    (root / "revisitop1m.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def paths(distractor_root) -> list[Path]:
    return Distractors.from_list(distractor_root).paths


@pytest.fixture(scope="module")
def reference(paths) -> np.ndarray:
    """Single-process float32 descriptors of every image."""
    return extract_descriptors(make_model(), paths, cfg=CFG, progress=False)


def assert_features(out: Path, reference: np.ndarray) -> None:
    feats = load_features(out)
    assert isinstance(feats, np.memmap) and feats.dtype == np.float16 and feats.shape == reference.shape
    np.testing.assert_allclose(feats.astype(np.float32), reference, atol=ATOL, rtol=0)
    assert not (out / CHUNKS).exists()


def test_torchrun_two_cpu_processes_equal_single_process_extraction(distractor_root, reference, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun is installed with torch"
    weights = tmp_path / "weights.pt"
    torch.save(make_model().state_dict(), weights)
    out = tmp_path / "features"
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "irlib", "extract", "--distractors"]
    cmd += [str(distractor_root), "--out", str(out), "--backbone", "efficientnet_lite0", "--weights", str(weights)]
    cmd += ["--image-size", "64", "--scales", "1", "--chunk-size", str(CHUNK)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{N_IMAGES} x 1280 float16" in done.stdout  # printed once, by rank 0
    assert_features(out, reference)
    meta = read_meta(out)
    assert (meta["n_images"], meta["chunk_size"], meta["dim"]) == (N_IMAGES, CHUNK, 1280)
    assert meta["settings"]["image_size"] == 64 and meta["settings"]["fp16"] is True


def _crashing_worker(rank: int, init_file: str, paths: list[Path], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = make_model()
        count_images(model, fail_after=CHUNK if rank == 1 else None)  # rank 1 dies after its first chunk
        extract_sharded(model, paths, out, CFG, chunk_size=CHUNK, progress=False)
    finally:
        dist.destroy_process_group()


def test_a_killed_two_process_job_resumes_with_one_process_computing_only_missing_chunks(paths, reference, tmp_path):
    out = tmp_path / "features"
    with pytest.raises(mp.ProcessRaisedException):  # rank 1's crash, or rank 0's barrier losing its peer
        mp.spawn(_crashing_worker, args=(str(tmp_path / "init"), paths, str(out)), nprocs=2, join=True)
    present = chunks_on_disk(out)
    assert 1 in present and not {3, 5} & present  # rank 1 (odd chunks) wrote one chunk, then died
    assert not (out / "features.npy").exists()

    model = make_model()
    seen = count_images(model)
    assert extract_sharded(model, paths, out, CFG, chunk_size=CHUNK, progress=False) == out / "features.npy"
    assert sum(seen) == N_IMAGES - images_in(present)
    assert_features(out, reference)


def test_a_killed_job_resumes_from_its_last_chunk_and_finished_folders_are_reused(paths, reference, tmp_path):
    out = tmp_path / "features"
    model = make_model()
    count_images(model, fail_after=2 * CHUNK + 1)  # dies inside the third chunk
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_sharded(model, paths, out, CFG, chunk_size=CHUNK, progress=False)
    assert chunks_on_disk(out) == {0, 1}
    (out / CHUNKS / ".000000006-000000009.npy.left-by-a-kill.tmp").write_bytes(b"partial")

    model = make_model()
    seen = count_images(model)
    extract_sharded(model, paths, out, CFG, chunk_size=CHUNK, progress=False)
    assert sum(seen) == N_IMAGES - 2 * CHUNK
    assert_features(out, reference)
    extract_sharded(model, paths, out, CFG, chunk_size=CHUNK, progress=False)  # done: nothing is computed
    assert sum(seen) == N_IMAGES - 2 * CHUNK


def test_independent_jobs_write_their_chunks_and_assemble_joins_them(paths, reference, tmp_path):
    out = tmp_path / "features"
    model = make_model()
    done = extract_sharded(model, paths, out, CFG, chunk_size=CHUNK, process_rank=1, world_size=3, progress=False)
    assert done is None
    assert chunks_on_disk(out) == {1, 4}
    with pytest.raises(FileNotFoundError, match="5 of 7 chunks"):
        assemble(out)
    for rank in (0, 2):
        extract_sharded(model, paths, out, CFG, chunk_size=CHUNK, process_rank=rank, world_size=3, progress=False)
    assert assemble(out) == out / "features.npy"
    assert_features(out, reference)


def test_other_inputs_raise_instead_of_mixing_features(paths, tmp_path):
    out = tmp_path / "features"
    model = make_model()
    count_images(model, fail_after=CHUNK)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_sharded(model, paths, out, CFG, chunk_size=CHUNK, progress=False)
    before = json.loads((out / META).read_text())
    other_model = create_model("gem", backbone="efficientnet_lite0")
    cases = [
        ((other_model, paths, out, CFG), {}, "different model"),
        ((model, paths, out, ExtractConfig(image_size=48, scales=(1.0,))), {}, "different settings"),
        ((model, paths[:-1], out, CFG), {}, "different n_images, paths_sha256"),
        ((model, paths[::-1], out, CFG), {}, "different paths_sha256"),
        ((model, paths, out, CFG), {"chunk_size": 4}, "different chunk_size"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            extract_sharded(*args, **{"chunk_size": CHUNK, **kwargs, "progress": False})
    assert json.loads((out / META).read_text()) == before and chunks_on_disk(out) == {0}


def test_bad_inputs_are_named(paths, tmp_path):
    model = make_model()
    with pytest.raises(ValueError, match="no images"):
        extract_sharded(model, [], tmp_path / "a", CFG)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        extract_sharded(model, paths, tmp_path / "a", CFG, chunk_size=0)
    with pytest.raises(ValueError, match="0 <= process_rank < world_size"):
        extract_sharded(model, paths, tmp_path / "a", CFG, process_rank=2, world_size=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("something else")
    with pytest.raises(FileExistsError, match="not empty"):
        extract_sharded(model, paths, tmp_path / "busy", CFG)
    with pytest.raises(FileNotFoundError, match="not a folder written by extract_sharded"):
        load_features(tmp_path / "busy")


def test_load_features_is_a_read_only_float16_memory_map(paths, tmp_path):
    out = tmp_path / "features"
    extract_sharded(make_model(), paths[:5], out, CFG, chunk_size=2, progress=False)
    feats = load_features(out)
    assert isinstance(feats, np.memmap) and feats.mode == "r" and feats.dtype == np.float16 and feats.shape == (5, 1280)
    with pytest.raises(ValueError, match="read-only"):
        feats[0, 0] = 1
    np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=1e-2)


def test_tar_members_extract_resume_and_match_the_files(distractor_root, paths, reference, tmp_path):
    """The distractor images packed in two webdataset shards, as ILIAS's YFCC100M: a killed job resumes."""
    half = N_IMAGES // 2
    for s, part in enumerate((paths[:half], paths[half:])):
        write_shard(
            tmp_path / "yfcc100m" / f"{s:06d}.tar", {f"{i:08d}.jpg": p.read_bytes() for i, p in enumerate(part)}
        )
    members = list(index_shards(tmp_path / "yfcc100m", progress=False).values())
    assert len(members) == N_IMAGES and members[half].shard.name == "000001.tar"
    fingerprint = paths_fingerprint(members)
    assert fingerprint == paths_fingerprint(list(members)) and fingerprint != paths_fingerprint(paths)
    out = tmp_path / "features"
    model = make_model()
    count_images(model, fail_after=CHUNK + 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_sharded(model, members, out, CFG, chunk_size=CHUNK, progress=False)
    assert chunks_on_disk(out) == {0}
    model = make_model()
    seen = count_images(model)
    extract_sharded(model, members, out, CFG, chunk_size=CHUNK, progress=False)
    assert sum(seen) == N_IMAGES - CHUNK
    assert_features(out, reference)
    assert read_meta(out)["paths_sha256"] == fingerprint
