"""Multi-scale extraction throughput: irlib's extractor against a batch-1 per-scale loop, same run, same model.

Model: GeM on ResNet-50 (random weights: speed does not depend on them). Images: JPEGs of 1024 x 768 (the
ROxf/RPar size), scales 1/sqrt2, 1, sqrt2. Baseline, as CVNet/SuperGlobal test code extracts: for every image and
every scale, resize the image, run the network on a batch of one, L2-normalise; average; L2-normalise; under
``torch.no_grad``. irlib: ``extract_descriptors`` with its defaults and variants (decoding workers, batches of
equal-size images, NCHW instead of channels_last). Every variant must give the baseline's descriptors.

Run: ``.venv/bin/python benchmarks/bench_extract.py [--n-images 6] [--image-size 1024] [--backbone resnet50]``
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from irlib.eval.extract import ExtractConfig, extract_descriptors
from irlib.models import create_model

SCALES = (1 / math.sqrt(2), 1.0, math.sqrt(2))


def write_images(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        paths.append(folder / f"img_{i:03d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


@torch.no_grad()
def batch1_per_scale(model: torch.nn.Module, paths: list[Path], image_size: int) -> np.ndarray:
    mean = torch.tensor(model.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.data_config["std"]).view(1, 3, 1, 1)
    out = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        factor = min(1.0, image_size / max(img.size))
        if factor < 1:
            img = img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.LANCZOS)
        x = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None] - mean) / std
        total = 0
        for s in SCALES:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            total = total + F.normalize(model(xs), dim=-1)
        out.append(F.normalize(total, dim=-1)[0].numpy())
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--backbone", default="resnet50")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("gem", backbone=args.backbone).eval()
    variants = {
        "irlib defaults (batch 1 on CPU, channels_last, 0 workers)": ExtractConfig(image_size=args.image_size),
        "irlib, 1 decoding worker": ExtractConfig(image_size=args.image_size, num_workers=1),
        "irlib, batch 4": ExtractConfig(image_size=args.image_size, batch_size=4),
        "irlib, NCHW (channels_last off)": ExtractConfig(image_size=args.image_size, channels_last=False),
    }
    n = args.n_images
    print(
        f"{args.backbone} GeM, {n} images {args.image_size}x{args.image_size * 3 // 4}, scales {SCALES}, "
        f"{torch.get_num_threads()} torch threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), n, (args.image_size, args.image_size * 3 // 4))
        batch1_per_scale(model.to(memory_format=torch.contiguous_format), paths[:1], args.image_size)  # warm-up
        t0 = time.perf_counter()
        base = batch1_per_scale(model, paths, args.image_size)
        t_base = time.perf_counter() - t0
        print(f"{'baseline: batch-1 per-scale loop':58s} {n / t_base:.3f} images/s  1.00x")
        for name, cfg in variants.items():
            extract_descriptors(model, paths[:1], cfg=cfg, progress=False)  # warm-up
            t0 = time.perf_counter()
            ours = extract_descriptors(model, paths, cfg=cfg, progress=False)
            t = time.perf_counter() - t0
            np.testing.assert_allclose(ours, base, atol=1e-4)
            print(f"{name:58s} {n / t:.3f} images/s  {t_base / t:.2f}x")


if __name__ == "__main__":
    main()
