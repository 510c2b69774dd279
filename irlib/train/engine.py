"""The training loop: any model of the zoo with any loss, exact resume, atomic checkpoints, clean preemption.

What it fixes relative to the official SpCa script (``docs``/``spca-training.md``): a new sample order every epoch,
global batch independent of the number of nodes, no silent validation hold-out, a GradScaler with fp16, no weight
decay on 1-D tensors, a NaN loss stops the run, and checkpoints hold everything needed to continue bit for bit.

Exact resume: augmentation randomness is drawn from a generator seeded by ``(seed, epoch, sample index)`` in
:class:`SeededItems`, the sample order by ``(seed, epoch)``, the lr by the step number, and the checkpoint keeps
the model, loss, optimiser, scaler and RNG states and the position in the epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from irlib.eval.revisited import PROTOCOLS
from irlib.io import atomic_path
from irlib.models.base import to_channels_last
from irlib.models.checkpoints import save_checkpoint
from irlib.train.config import TrainConfig

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pth"


class SeededItems(Dataset):
    """Wraps a dataset so item ``i`` of epoch ``e`` is drawn under torch's RNG seeded by ``(seed, e, i)``.

    Random augmentations then depend only on the sample and the epoch, not on worker layout or on where a resumed
    run started.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i))
            return self.dataset[i]


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_steps``, then cosine from ``lr`` to ``min_lr``."""
    if step < warmup_steps:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(modules: list[nn.Module], weight_decay: float, no_decay_1d: bool) -> list[dict[str, Any]]:
    """SGD parameter groups: 1-D tensors (norm scales, biases, GeM p) and names a module lists in
    ``no_weight_decay()`` get no weight decay when ``no_decay_1d``."""
    decay, no_decay = [], []
    for module in modules:
        skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if no_decay_1d and (p.ndim <= 1 or name in skip) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Objective(nn.Module):
    """``(images, labels) -> loss``: model and loss as one module, so DDP synchronises the gradients of both
    (a margin head's class weights included)."""

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The loss and the ``(B, D)`` descriptors it was computed from."""
        embeddings = self.model(images)
        return self.loss(embeddings, labels), embeddings


def git_commit() -> dict[str, Any]:
    """The commit of the code that runs and whether the tree had uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, check=True)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


class Trainer:
    """Runs ``cfg`` on a dataset with ``labels``/``num_classes`` items ``(image, label)``.

    Args:
        cfg: the run configuration; ``cfg.out_dir`` receives ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt``.
        dataset: the training set (``irlib.data.train_set.TrainSet`` or any dataset with ``num_classes``).
        model: the model (default: built from ``cfg``).
        loss: the loss (default: built from ``cfg`` with the model's descriptor size and the dataset's classes).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Dataset,
        *,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.world, self.rank = _world()
        self.device = (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            if torch.cuda.is_available()
            else (torch.device("cpu"))
        )
        per_step = cfg.global_batch // cfg.accumulation
        if per_step % self.world:
            raise ValueError(f"global_batch / accumulation = {per_step} is not divisible by {self.world} processes")
        self.micro_batch = per_step // self.world
        torch.manual_seed(cfg.seed)
        if model is None:
            from irlib.models import create_model

            model = create_model(cfg.method, backbone=cfg.backbone, pretrained=cfg.pretrained, **cfg.model_kwargs)
        if loss is None:
            from irlib.losses import create_loss

            loss = create_loss(
                cfg.loss, embedding_dim=model.feat_dim, num_classes=dataset.num_classes, **cfg.loss_kwargs
            )
        self.model, self.loss = model, loss
        self.model.to(self.device)
        self.loss.to(self.device)
        self.channels_last = cfg.channels_last and to_channels_last(self.model)
        self.objective: nn.Module = Objective(self.model, self.loss)
        if self.world > 1:
            if self.device.type == "cuda":  # SyncBatchNorm needs GPU tensors; on CPU (gloo) BN stays per process
                self.objective = nn.SyncBatchNorm.convert_sync_batchnorm(self.objective)
                self.model, self.loss = self.objective.model, self.objective.loss
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = nn.parallel.DistributedDataParallel(self.objective, device_ids=device_ids)
        self.items = SeededItems(dataset, cfg.seed)
        self.sampler = self._make_sampler(dataset)
        self.optimizer = torch.optim.SGD(
            param_groups([self.model, self.loss], cfg.weight_decay, cfg.no_decay_1d),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.steps_per_epoch = len(self.sampler) // (self.micro_batch * cfg.accumulation)
        if self.steps_per_epoch == 0:
            raise ValueError(f"the dataset ({len(self.items)} images) is smaller than one global batch")
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.step = 0
        self._stop = False
        self._tensorboard = None
        if cfg.tensorboard and self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from err
            self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))
        self._top1: float | None = None

    def _make_sampler(self, dataset: Dataset) -> Any:
        """Per-process sampler with a new order every epoch from ``(seed, epoch)``, disjoint across processes."""
        from irlib.data.samplers import ClassBalancedSampler, ShuffledSampler

        cfg = self.cfg
        if cfg.sampler == "shuffled":
            return ShuffledSampler(len(dataset), seed=cfg.seed, num_replicas=self.world, rank=self.rank, drop_last=True)
        pk = cfg.classes_per_batch * cfg.samples_per_class
        if self.micro_batch != pk:
            raise ValueError(
                f"class_balanced: each process's micro-batch ({self.micro_batch}) must be classes_per_batch x "
                f"samples_per_class ({pk}); set global_batch = {pk} x processes x accumulation"
            )
        return ClassBalancedSampler(
            dataset.labels,
            classes_per_batch=cfg.classes_per_batch,
            samples_per_class=cfg.samples_per_class,
            seed=cfg.seed,
            num_replicas=self.world,
            rank=self.rank,
        )

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "config": self.cfg.to_dict(),
            "git": git_commit(),
            "bgr_weights": bool(getattr(self.model, "bgr_weights", False)),
        }

    def save(self) -> Path:
        """Write ``checkpoint.pt`` atomically (rank 0 only); the previous one survives a crash during the write."""
        path = self.out / CHECKPOINT
        if self.rank == 0:
            with atomic_path(path) as tmp:
                torch.save(self.state_dict(), tmp)
        if self.world > 1:
            torch.distributed.barrier()
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint written by :meth:`save` (strictly: every tensor must match)."""
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"], strict=True)
        self.loss.load_state_dict(state["loss"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.model.bgr_weights = state.get("bgr_weights", False)

    # --- loop ----------------------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[int, list[tuple[Tensor, Tensor]]]]:
        """Yield ``(epoch, micro-batches of one optimiser step)`` from the current step on."""
        while True:
            epoch, within = divmod(self.step, self.steps_per_epoch)
            self.items.epoch = epoch
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)[within * self.micro_batch * self.cfg.accumulation :]
            loader = DataLoader(
                self.items,
                batch_size=self.micro_batch,
                sampler=order,
                num_workers=self.cfg.num_workers,
                drop_last=True,
            )
            group: list[tuple[Tensor, Tensor]] = []
            for images, labels in loader:
                group.append((images, labels))
                if len(group) == self.cfg.accumulation:
                    yield epoch, group
                    group = []
                    if self.step % self.steps_per_epoch == 0:
                        break

    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train until ``total_steps``; returns the last logged metrics.

        With ``resume``, continue from ``out_dir/checkpoint.pt``; otherwise a run folder holding a checkpoint is
        refused unless ``overwrite`` (then its log starts afresh). SIGTERM saves a checkpoint at the next step
        boundary and returns.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load(self.out / CHECKPOINT)
        elif (self.out / CHECKPOINT).exists() and not overwrite:
            raise FileExistsError(
                f"{self.out / CHECKPOINT} exists: resume it (--resume), overwrite it (--force) or use another out_dir"
            )
        elif self.rank == 0:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        if self.rank == 0:
            self.cfg.to_yaml(self.out / "config.yaml")
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.model.train()
        self.loss.train()
        last: dict[str, Any] = {}
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=self.rank != 0)
        t0, seen = time.perf_counter(), 0
        try:
            for epoch, group in self._batches():
                if self.step >= self.total_steps or self._stopping():
                    break
                loss_value, grad_norm = self._optimiser_step(group)
                self.step += 1
                seen += sum(len(y) for _, y in group) * self.world
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - t0
                    last = {
                        "step": self.step,
                        "epoch": epoch,
                        "loss": loss_value,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "grad_norm": grad_norm,
                        "top1": self._top1,
                        "images_per_s": seen / elapsed if elapsed > 0 else None,
                    }
                    self._log(last)
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                if self.cfg.monitor_every and self.step % self.cfg.monitor_every == 0:
                    self._monitor()
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps or self._stopping():
                    self.save()
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        if self.rank == 0 and self.step >= self.total_steps:
            save_checkpoint(self.model, self.out / MODEL)  # descriptor model only, without the loss head
        return last | {"preempted": self._stop and self.step < self.total_steps}

    def _optimiser_step(self, group: list[tuple[Tensor, Tensor]]) -> tuple[float, float]:
        lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total, correct, count = 0.0, 0, 0
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.amp)
        for k, (images, labels) in enumerate(group):
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            last = k == len(group) - 1
            # DDP averages gradients only on the last micro-batch of the step
            sync = self.objective.no_sync() if self.world > 1 and not last else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, embeddings = self.objective(images, labels)
                    loss = loss / self.cfg.accumulation
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss ({loss.item()}) at step {self.step + 1}; training stopped, the last good "
                        f"checkpoint is {self.out / CHECKPOINT}"
                    )
                self.scaler.scale(loss).backward()
            total += loss.item()
            correct += self._correct(embeddings.detach(), labels)
            count += len(labels)
        stats = torch.tensor([total, correct, count], dtype=torch.float64, device=self.device)
        if self.world > 1:  # the loss and accuracy of the global batch
            torch.distributed.all_reduce(stats)
            stats[0] /= self.world
        self._top1 = (stats[1] / stats[2]).item() if hasattr(self.loss, "cosine") else None
        total = stats[0].item()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():  # fp16: the scaler skips such steps
            raise FloatingPointError(
                f"non-finite gradient norm at step {self.step + 1}; training stopped, the last good checkpoint is "
                f"{self.out / CHECKPOINT}"
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total, grad_norm

    def _correct(self, embeddings: Tensor, labels: Tensor) -> int:
        """Top-1 hits of the un-margined cosine logits (SpCa reports margin-penalised ones); 0 without a head."""
        if not hasattr(self.loss, "cosine"):
            return 0
        with torch.no_grad():
            return int((self.loss.cosine(embeddings.float()).argmax(dim=1) == labels).sum())

    def _monitor(self) -> None:
        """Evaluate ``cfg.monitor_dir`` (rank 0) and log E/M/H mAP under ``test_set_monitoring``."""
        if self.rank == 0 and self.cfg.monitor_dir:
            from irlib.data.revisited import RevisitedDataset
            from irlib.eval.extract import ExtractConfig
            from irlib.eval.pipeline import evaluate_model

            dataset = RevisitedDataset.from_dir(self.cfg.monitor_dir)
            cfg = ExtractConfig(image_size=self.cfg.monitor_image_size, scales=(1.0,), device=str(self.device))
            metrics = evaluate_model(self.model, dataset, cfg, progress=False).metrics
            self._log({"step": self.step, "test_set_monitoring": {p: metrics[p]["map"] for p in PROTOCOLS}})
            self.model.train()
        if self.world > 1:
            torch.distributed.barrier()

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                for name, v in value.items() if isinstance(value, dict) else [(key, value)]:
                    if isinstance(v, int | float) and name not in ("step", "epoch"):
                        self._tensorboard.add_scalar(name if name == key else f"{key}/{name}", v, record["step"])
            self._tensorboard.flush()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._stop = True

    def _stopping(self) -> bool:
        """Whether any process was asked to stop (all processes then stop at the same step)."""
        if self.world == 1:
            return self._stop
        flag = torch.tensor([int(self._stop)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self._stop = bool(flag.item())
        return self._stop


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0
