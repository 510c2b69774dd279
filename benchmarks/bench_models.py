"""Forward throughput and parameter count of every registered method on the same backbone (CPU, eval mode).

Each method is built with ``create_model(method, backbone=...)`` and its defaults (random weights: speed does not
depend on them), then timed on a batch of 8 RGB images of 512 x 512 under ``torch.inference_mode``: best of 3
after a warm-up pass. SuperGlobal runs its three scales inside the model, so it does about 3.5x the work.
GeM (``gem``) is the baseline of the ratio column. Prints a Markdown table for ``benchmarks/README.md``.

Run: ``.venv/bin/python benchmarks/bench_models.py [--backbone resnet50] [--size 512] [--batch 8] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time

import torch

from irlib.models import create_model, list_models
from irlib.models.base import to_channels_last


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Seconds per forward pass of ``x`` (best of ``repeats`` after a warm-up)."""
    with torch.inference_mode():
        model(x)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=None, help="default: all registered methods")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    methods = args.methods or list_models()
    time_forward(create_model("gem", backbone=args.backbone).eval(), x, 1)  # warms oneDNN up for everyone
    rows = []
    for method in ["gem", *[m for m in methods if m != "gem"]]:
        model = create_model(method, backbone=args.backbone).eval()
        to_channels_last(model)  # SENet's Conv3d weights keep it contiguous
        seconds = time_forward(model, x, args.repeats)
        params = sum(p.numel() for p in model.parameters())
        rows.append((method, model.feat_dim, params, args.batch / seconds))
        print(f"{method}: {args.batch / seconds:.2f} images/s", flush=True)
    base = rows[0][3]
    print(f"\n{args.backbone}, {args.batch} x 3 x {args.size} x {args.size}, {torch.get_num_threads()} CPU threads\n")
    print("| method | descriptor dim | parameters | images/s | vs gem |")
    print("|---|---|---|---|---|")
    for method, dim, params, speed in rows:
        print(f"| `{method}` | {dim} | {params:,} | {speed:.2f} | {speed / base:.2f}x |")


if __name__ == "__main__":
    main()
