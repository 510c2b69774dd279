"""Sharded extraction throughput: one process against two (``torchrun``), on generated distractor images.

64 JPEGs of 512 x 384 / 384 x 512 (smooth random content) in the revisitop1m layout, GeM on EfficientNet-Lite0
(random weights, shared by all processes), 512 px, scales 1/sqrt2, 1, sqrt2, CPU, chunks of 8 images.
Configurations: 1 process x 1 thread, 1 process x 2 threads (intra-op parallelism, no sharding) and 2 processes x
1 thread each (``torchrun --standalone --nproc_per_node=2``). Each rank runs one warm-up image first (oneDNN builds its
kernels on the first call); the extraction time is the ``extract_sharded`` call (fingerprint, chunks, assembly),
the process time adds Python/torch start-up and model creation. The configurations run in turn, ``--repeats``
rounds; each shows its best round. All runs must give the same features.

Run: ``.venv/bin/python benchmarks/bench_shards.py [--n-images 64] [--image-size 512] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)


def make_images(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``root/jpg/<d>/<i>.jpg`` listed in ``root/revisitop1m.txt``: upsampled noise, half landscape, half portrait."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [f"{i % 8}/{i:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        w, h = (size, size * 3 // 4) if i % 2 else (size * 3 // 4, size)
        small = Image.fromarray(rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8))
        (root / "jpg" / name).parent.mkdir(parents=True, exist_ok=True)
        small.resize((w, h), Image.Resampling.BICUBIC).save(root / "jpg" / name, quality=90)
    (root / "revisitop1m.txt").write_text("\n".join(names) + "\n")


def worker(args: argparse.Namespace) -> None:
    """One rank: warm up, extract its chunks, record the time of the ``extract_sharded`` call."""
    import torch
    import torch.distributed as dist

    from irlib.data.revisited import Distractors
    from irlib.eval.extract import ExtractConfig, extract_descriptors
    from irlib.eval.shards import extract_sharded
    from irlib.models import create_model
    from irlib.train.run import init_distributed

    torch.set_num_threads(args.threads)
    started = init_distributed()
    rank = dist.get_rank() if started else 0
    model = create_model("gem", backbone="efficientnet_lite0", weights=args.weights)
    paths = Distractors.from_list(args.data).paths
    cfg = ExtractConfig(image_size=args.image_size)
    extract_descriptors(model, paths[:1], cfg=cfg, progress=False)
    if started:
        dist.barrier()
    t0 = time.perf_counter()
    extract_sharded(model, paths, args.out, cfg, chunk_size=args.chunk_size, progress=False)
    (args.out.parent / f"{args.out.name}.rank{rank}.json").write_text(json.dumps(time.perf_counter() - t0))
    if started:
        dist.destroy_process_group()


def run(procs: int, threads: int, args: argparse.Namespace, work: Path, repeat: int) -> dict:
    out = work / f"features_{procs}x{threads}_{repeat}"
    launcher = [sys.executable]
    if procs > 1:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
        launcher = [torchrun, "--standalone", f"--nproc_per_node={procs}"]
    cmd = [*launcher, __file__, "--worker", "--threads", str(threads), "--data", str(work / "data")]
    cmd += ["--weights", str(work / "weights.pt"), "--out", str(out), "--image-size", str(args.image_size)]
    cmd += ["--chunk-size", str(args.chunk_size)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t0
    per_rank = [json.loads((work / f"{out.name}.rank{r}.json").read_text()) for r in range(procs)]
    return {"process_s": wall, "extract_s": max(per_rank), "features": np.load(out / "features.npy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the configurations; the best is shown")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    from irlib.models import create_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_images(work / "data", args.n_images, args.image_size)
        torch.manual_seed(0)
        torch.save(create_model("gem", backbone="efficientnet_lite0").state_dict(), work / "weights.pt")
        rounds = [{(p, t): run(p, t, args, work, i) for p, t in CONFIGS} for i in range(args.repeats)]
    results = {c: min((r[c] for r in rounds), key=lambda r: r["extract_s"]) for c in CONFIGS}
    reference = results[CONFIGS[0]]["features"].astype(np.float32)
    for r in (r for one in rounds for r in one.values()):
        np.testing.assert_allclose(r["features"].astype(np.float32), reference, atol=2e-3, rtol=0)
    n = args.n_images
    base = results[(1, 1)]["extract_s"]
    print(f"{n} images, {args.image_size} px, 3 scales, EfficientNet-Lite0 GeM; same features in every configuration")
    print("configuration        extract   images/s   per process   speed-up   process wall")
    for (p, t), r in results.items():
        rate = n / r["extract_s"]
        name = f"{p} proc x {t} thread{'s' if t > 1 else ' '}"
        print(
            f"{name}   {r['extract_s']:6.1f} s   {rate:8.2f}   {rate / p:11.2f}   {base / r['extract_s']:7.2f}x   "
            f"{r['process_s']:8.1f} s"
        )


if __name__ == "__main__":
    main()
