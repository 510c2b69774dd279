"""Training throughput: irlib's ``Trainer`` against a minimal plain PyTorch loop doing the same work (CPU, same run).

Both train the same model (GeM on EfficientNet-Lite0, channels_last) on the same in-memory images (random
224 x 224), batch 16, SGD, no AMP, no accumulation, with the same objective:

* one head: a linear softmax head (100 classes);
* composite: CosFace plus 0.5 x Smooth-AP on the descriptor (12 classes, class-balanced 4 x 4 batches in the
  Trainer), each term logged; the plain loop calls the same two loss modules and adds them.

The plain loop is DataLoader -> forward -> loss -> backward -> step. The Trainer adds its training interface
(``forward_train``, the composite objective), per-sample seeded augmentation RNG, lr schedule, gradient-norm
computation, loss checks and JSONL logging; the goal is >= 0.95x the plain loop.

Run: ``.venv/bin/python benchmarks/bench_train.py [--steps 12] [--batch 16] [--size 224]``
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from irlib.losses import create_loss
from irlib.models import create_model
from irlib.train.config import TrainConfig
from irlib.train.engine import Trainer


class InMemory(Dataset):
    def __init__(self, n: int, size: int, num_classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.num_classes = num_classes
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.arange(n) % num_classes
        self.labels = self.y.numpy()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class Composite(nn.Module):
    """The plain loop's composite objective: the same CosFace and Smooth-AP modules, weights 1 and 0.5."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.cosface = create_loss("cosface", embedding_dim=dim, num_classes=classes)
        self.smoothap = create_loss("smoothap")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.cosface(x, y) + 0.5 * self.smoothap(x, y)


class Head(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.fc(x) * 10, y)


def plain_loop(model: nn.Module, head: nn.Module, data: Dataset, batch: int, steps: int) -> float:
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.01, momentum=0.9, nesterov=True)
    model.train()
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        head(model(x.contiguous(memory_format=torch.channels_last)), y).backward()
        opt.step()
    return time.perf_counter() - t0


def compare(name: str, data: InMemory, head: nn.Module, args: argparse.Namespace, **fields: object) -> None:
    """Time the plain loop and the Trainer on ``data``; ``fields`` configure the Trainer's objective."""
    torch.manual_seed(0)
    model = create_model("gem", backbone="efficientnet_lite0").to(memory_format=torch.channels_last)
    plain_loop(copy.deepcopy(model), copy.deepcopy(head), data, args.batch, 2)  # warm-up
    t_plain = plain_loop(copy.deepcopy(model), copy.deepcopy(head), data, args.batch, args.steps)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            global_batch=args.batch,
            max_steps=args.steps,
            epochs=1,
            warmup_epochs=0,
            log_every=1,
            checkpoint_every=10**9,
            out_dir=out,
            **fields,
        )
        own_head = None if "losses" in fields else copy.deepcopy(head)
        trainer = Trainer(cfg, data, model=copy.deepcopy(model), loss=own_head)
        t0 = time.perf_counter()
        trainer.fit()
        t_irlib = time.perf_counter() - t0
    n = args.batch * args.steps
    print(f"{name}: plain PyTorch loop {n / t_plain:.2f} images/s")
    print(
        f"{name}: irlib Trainer      {n / t_irlib:.2f} images/s ({t_plain / t_irlib:.2f}x the plain loop, "
        "incl. the final checkpoint and model export)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    print(
        f"GeM/EfficientNet-Lite0, {args.steps} steps of {args.batch} x 3 x {args.size}^2, "
        f"{torch.get_num_threads()} CPU threads"
    )
    n = args.batch * args.steps
    compare("one head", InMemory(n, args.size, 100), Head(1280, 100), args)
    compare(
        "composite",
        InMemory(n, args.size, 12),
        Composite(1280, 12),
        args,
        losses=[{"name": "cosface"}, {"name": "smoothap", "weight": 0.5}],
        sampler="class_balanced",
        classes_per_batch=4,
        samples_per_class=args.batch // 4,
    )


if __name__ == "__main__":
    main()
