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
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from irlib.io import atomic_path
from irlib.losses.composite import DESCRIPTOR, CompositeLoss, merge_terms
from irlib.losses.domains import PerDomainHead, split_heads_by_domain
from irlib.models.backbones import load_torch_file
from irlib.models.base import RetrievalModel, to_channels_last
from irlib.models.checkpoints import save_checkpoint
from irlib.provenance import git_commit
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
    """Optimiser parameter groups: 1-D tensors (norm scales, biases, GeM p) and names a module lists in
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
    """``(images, labels) -> (loss, term values, descriptors)``: the model's training pass and the composite loss
    as one module, so DDP synchronises the gradients of both (a margin head's class weights included)."""

    def __init__(self, model: RetrievalModel, loss: CompositeLoss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """The weighted total, each term's value and the ``(B, D)`` descriptors of the per-image path."""
        outputs = self.model.forward_train(images)
        total, terms = self.loss(outputs, labels)
        return total, terms, outputs[DESCRIPTOR]


RESUMABLE_CHANGES = frozenset(
    {
        "out_dir",
        "data_dir",
        "num_workers",
        "log_every",
        "checkpoint_every",
        "tensorboard",
        "monitor_dir",
        "monitor_every",
        "monitor_image_size",
    }
)
"""Fields a resumed run may change freely: where things are and what is logged, not what is trained."""


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written: resuming a folder without a checkpoint, or starting in one that holds a
    checkpoint without ``overwrite``."""
    checkpoint = out / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist: there is nothing to resume (start without --resume)")
    if not resume and checkpoint.exists() and not overwrite:
        raise FileExistsError(
            f"{checkpoint} exists: resume it (--resume), overwrite it (--force) or use another out_dir"
        )


def build_objective(
    cfg: TrainConfig, model: RetrievalModel, num_classes: int, label_domains: np.ndarray | None = None
) -> CompositeLoss:
    """The run's loss terms plus the model's own (:func:`irlib.losses.merge_terms`) on the model's training
    outputs, heads sized by the outputs they read; with ``classifier: per_domain`` every class-weight head becomes
    one head per domain of ``label_domains`` (``(num_classes,)``, the domain of each label)."""
    loss = CompositeLoss(
        merge_terms(cfg.loss_terms(), model.loss_terms()),
        output_dims=model.output_dims(),
        num_classes=num_classes,
        streams=model.descriptor_streams(),
    )
    if cfg.classifier == "per_domain":
        if label_domains is None:
            raise ValueError("classifier: per_domain needs the domain of every label (a UnED training set)")
        split_heads_by_domain(loss, label_domains)
    return loss


def optimizer_groups(cfg: TrainConfig, model: nn.Module, loss: nn.Module) -> tuple[list[dict[str, Any]], list[bool]]:
    """The optimiser's parameter groups (:func:`param_groups`) and, per group, whether it holds the model's
    parameters; the model and the loss heads share groups unless ``model_lr_scale`` or ``frozen_epochs`` sets
    them apart (so runs without them keep the optimiser state layout they always had)."""
    if cfg.model_lr_scale == 1 and not cfg.frozen_epochs:
        groups = param_groups([model, loss], cfg.weight_decay, cfg.no_decay_1d)
        return groups, [False] * len(groups)
    of_model = param_groups([model], cfg.weight_decay, cfg.no_decay_1d)
    of_loss = param_groups([loss], cfg.weight_decay, cfg.no_decay_1d)
    return of_model + of_loss, [True] * len(of_model) + [False] * len(of_loss)


def params_without_gradient(modules: dict[str, nn.Module]) -> list[str]:
    """Names (``"model.x.weight"``) of trainable parameters whose ``.grad`` is None after a backward pass."""
    return [
        f"{prefix}.{name}"
        for prefix, module in modules.items()
        for name, p in module.named_parameters()
        if p.requires_grad and p.grad is None
    ]


class Trainer:
    """Runs ``cfg`` on a dataset with ``labels``/``num_classes`` items ``(image, label)``.

    Every model is driven through its training interface (:meth:`RetrievalModel.forward_train` and the loss terms it
    declares), never through a per-method branch. At the first step a trainable parameter that received no
    gradient stops the run: a part no loss trains must be frozen on purpose in the model.

    Args:
        cfg: the run configuration; ``cfg.out_dir`` receives ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt``.
        dataset: the training set (``irlib.data.train_set.TrainSet`` or any dataset with ``num_classes``).
        model: the model (default: built from ``cfg``).
        loss: the objective (default: :func:`build_objective` from ``cfg``, the model and the dataset's classes); a
            plain loss module ``loss(descriptors, labels)`` is one term on the model's descriptor streams.
        monitor: called every ``cfg.monitor_every`` steps on rank 0 with the model, e.g. an evaluation (the
            callback keeps the evaluation layer out of the engine; :func:`irlib.train.run.revisited_monitor`);
            its ``{name: value}`` is logged as ``test_set_monitoring``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Dataset,
        *,
        model: RetrievalModel | None = None,
        loss: nn.Module | None = None,
        monitor: Callable[[RetrievalModel], Mapping[str, float]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.world_size, self.process_rank = _world()
        self.device = (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            if torch.cuda.is_available()
            else (torch.device("cpu"))
        )
        per_step = cfg.global_batch // cfg.accumulation
        if per_step % self.world_size:
            raise ValueError(
                f"global_batch / accumulation = {per_step} is not divisible by {self.world_size} processes"
            )
        self.micro_batch = per_step // self.world_size
        torch.manual_seed(cfg.seed)
        if model is None:
            from irlib.models import create_model

            model = create_model(cfg.method, backbone=cfg.backbone, pretrained=cfg.pretrained, **cfg.model_kwargs)
        uses_domains = cfg.classifier == "per_domain" or cfg.sampler == "domain"
        self.label_domains = _label_domains(dataset) if uses_domains else None
        if loss is None:
            loss = build_objective(cfg, model, dataset.num_classes, self.label_domains)
        elif not isinstance(loss, CompositeLoss):
            loss = CompositeLoss.wrap(loss, model.descriptor_streams())
        if loss.needs_positives and cfg.sampler != "class_balanced":
            raise ValueError(
                f"loss term(s) {loss.needs_positives} compare images of one class within the batch, which a shuffled "
                f"batch of many classes rarely holds: set sampler: class_balanced (classes_per_batch x "
                f"samples_per_class images per process)"
            )
        if cfg.monitor_every and monitor is None:
            raise ValueError("monitor_every is set but no monitor callback was given (irlib.train.run builds one)")
        self.model, self.loss, self.monitor = model, loss, monitor
        self.model.to(self.device)
        self.loss.to(self.device)
        self.channels_last = cfg.channels_last and to_channels_last(self.model)
        self.objective: nn.Module = Objective(self.model, self.loss)
        if self.world_size > 1:
            if self.device.type == "cuda":  # SyncBatchNorm needs GPU tensors; on CPU (gloo) BN stays per process
                self.objective = nn.SyncBatchNorm.convert_sync_batchnorm(self.objective)
                self.model, self.loss = self.objective.model, self.objective.loss
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = nn.parallel.DistributedDataParallel(self.objective, device_ids=device_ids)
        self.items = SeededItems(dataset, cfg.seed)
        self.sampler = self._make_sampler(dataset)
        groups, self._model_groups = optimizer_groups(cfg, self.model, self.loss)
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.AdamW(groups, lr=cfg.lr)
            if cfg.optimizer == "adamw"
            else torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.steps_per_epoch = len(self.sampler) // (self.micro_batch * cfg.accumulation)
        if self.steps_per_epoch == 0:
            raise ValueError(f"the dataset ({len(self.items)} images) is smaller than one global batch")
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.frozen_steps = round(cfg.frozen_epochs * self.steps_per_epoch)
        self.step = 0
        self._stop = False
        self._tensorboard = None
        if cfg.tensorboard and self.process_rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from err
            self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))
        self._top1: float | None = None
        self.config_changes: list[dict[str, Any]] = []
        self._gradients_checked = False

    def _make_sampler(self, dataset: Dataset) -> Any:
        """Per-process sampler with a new order every epoch from ``(seed, epoch)``, disjoint across processes.

        ``tuple``: CFCD's tuples (:class:`irlib.data.samplers.TupleSampler`) of the ``tuple_size`` that the
        objective's tuple loss terms declare (default ``TUPLE_SIZE`` = 8), with hard negatives from
        ``cfg.hard_negatives`` (a predictions file, :func:`irlib.data.samplers.read_predictions`). A tuple loss term
        with another sampler is refused.
        """
        from irlib.data.samplers import (
            TUPLE_SIZE,
            ClassBalancedSampler,
            DomainBatchSampler,
            ShuffledSampler,
            TupleSampler,
            read_predictions,
        )

        cfg = self.cfg
        tuple_terms = {key: m.tuple_size for key, m in self.loss.terms.items() if hasattr(m, "tuple_size")}
        if tuple_terms and cfg.sampler != "tuple":
            raise ValueError(
                f"loss term(s) {sorted(tuple_terms)} read batches of [anchor, positive, negatives] tuples: set "
                f"sampler: tuple"
            )
        if cfg.sampler == "tuple":
            sizes = set(tuple_terms.values()) or {TUPLE_SIZE}
            if len(sizes) > 1:
                raise ValueError(f"loss terms disagree on the tuple size: {tuple_terms}")
            (size,) = sizes
            if self.micro_batch % size:
                raise ValueError(
                    f"tuple: each process's micro-batch ({self.micro_batch}) must be a multiple of the tuple size "
                    f"({size}); set global_batch to a multiple of {size} x processes x accumulation"
                )
            return TupleSampler(
                dataset.labels,
                tuple_size=size,
                predictions=(
                    read_predictions(cfg.hard_negatives, dataset.paths, dataset.labels) if cfg.hard_negatives else None
                ),
                seed=cfg.seed,
                num_replicas=self.world_size,
                rank=self.process_rank,
            )
        if cfg.sampler == "domain":
            return DomainBatchSampler(
                self.label_domains[dataset.labels],
                batch_size=self.micro_batch * cfg.accumulation,
                strategy=cfg.domain_sampling,
                seed=cfg.seed,
                num_replicas=self.world_size,
                rank=self.process_rank,
            )
        if cfg.sampler == "shuffled":
            return ShuffledSampler(
                len(dataset), seed=cfg.seed, num_replicas=self.world_size, rank=self.process_rank, drop_last=True
            )
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
            num_replicas=self.world_size,
            rank=self.process_rank,
        )

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": {  # tensors and plain values only: the checkpoint loads with weights_only=True
                "torch": torch.get_rng_state(),
                "numpy": _numpy_rng_state(),
                "python": random.getstate(),
            },
            "config": self.cfg.to_dict(),
            "config_changes": self.config_changes,
            "git": git_commit(),
            "bgr_weights": self.model.bgr_weights,
        }

    def save(self) -> Path:
        """Write ``checkpoint.pt`` atomically (rank 0 only); the previous one survives a crash during the write."""
        path = self.out / CHECKPOINT
        if self.process_rank == 0:
            with atomic_path(path) as tmp:
                torch.save(self.state_dict(), tmp)
        if self.world_size > 1:
            torch.distributed.barrier()
        return path

    def load(self, path: str | os.PathLike, allow_changes: bool = False) -> dict[str, list[Any]]:
        """Continue from a checkpoint written by :meth:`save` (strictly: every tensor must match). A field of the
        config that alters training and differs from the checkpoint's raises, unless ``allow_changes``: then the
        change is recorded (``config_changes``: from which step which values apply); returns the changes."""
        state = self._load_weights(path)
        changes = {
            name: [old, new]
            for name, new in self.cfg.to_dict().items()
            if name not in RESUMABLE_CHANGES and (old := state["config"].get(name, new)) != new
        }
        if changes and not allow_changes:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
            raise ValueError(
                f"resuming {path} with fields that alter training changed ({listed}): restore them, or pass "
                f"--allow-config-change to apply them from step {int(state['step'])} on (the run records it)"
            )
        self.config_changes = list(state.get("config_changes", []))
        if changes:
            self.config_changes.append({"step": int(state["step"]), "changes": changes})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(_numpy_rng_tuple(state["rng"]["numpy"]))
        random.setstate(state["rng"]["python"])
        self.model.bgr_weights = state.get("bgr_weights", False)
        return changes

    def _load_weights(self, path: str | os.PathLike) -> dict[str, Any]:
        """Read a checkpoint written by :meth:`save` and load its model and loss states strictly; returns it."""
        state = load_torch_file(path, "training checkpoint", map_location=self.device)
        self.model.load_state_dict(state["model"], strict=True)
        self.loss.load_state_dict(_composite_loss_state(state["loss"], self.loss), strict=True)
        return state

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

    def fit(self, resume: bool = False, overwrite: bool = False, allow_changes: bool = False) -> dict[str, Any]:
        """Train until ``total_steps``; returns the last logged metrics.

        With ``resume``, continue from ``out_dir/checkpoint.pt`` (changed training fields need ``allow_changes``, see
        :meth:`load`); otherwise a run folder holding a checkpoint is refused unless ``overwrite`` (then its log
        starts afresh). SIGTERM saves a checkpoint at the next step boundary and returns.
        """
        check_run_folder(self.out, resume, overwrite)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.process_rank == 0:
            for stale in self.out.glob(".*.tmp"):  # atomic writes a killed run left behind
                stale.unlink(missing_ok=True)
        if resume:
            changes = self.load(self.out / CHECKPOINT, allow_changes)
            self._truncate_log()
            if changes:
                self._log({"step": self.step, "config_change": changes})
        else:
            if self.cfg.init_from:
                source = Path(self.cfg.init_from)
                self._load_weights(source / CHECKPOINT if source.is_dir() else source)
            if self.process_rank == 0:
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
        if self.process_rank == 0:
            self.cfg.to_yaml(self.out / "config.yaml")
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.model.train()
        self.loss.train()
        last: dict[str, Any] = {}
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=self.process_rank != 0)
        t0, seen = time.perf_counter(), 0
        try:
            for epoch, group in self._batches():
                if self.step >= self.total_steps or self._stopping():
                    break
                loss_value, term_values, grad_norm = self._optimiser_step(group)
                self.step += 1
                seen += sum(len(y) for _, y in group) * self.world_size
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - t0
                    last = {
                        "step": self.step,
                        "epoch": epoch,
                        "loss": loss_value,
                        "losses": term_values,
                        "lr": lr_at(self.step - 1, self.total_steps, self.warmup_steps, self.cfg),
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
        if self.process_rank == 0 and self.step >= self.total_steps:
            save_checkpoint(self.model, self.out / MODEL)  # descriptor model only, without the loss head
        return last | {"step": self.step, "preempted": self._stop and self.step < self.total_steps}

    def _optimiser_step(self, group: list[tuple[Tensor, Tensor]]) -> tuple[float, dict[str, float], float]:
        """One optimiser step over the micro-batches of ``group``: (loss, unweighted term values, gradient norm),
        loss and terms averaged over the global batch."""
        lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.cfg)
        model_lr = 0.0 if self.step < self.frozen_steps else lr * self.cfg.model_lr_scale
        for g, of_model in zip(self.optimizer.param_groups, self._model_groups, strict=True):
            g["lr"] = model_lr if of_model else lr
        self.optimizer.zero_grad(set_to_none=True)
        keys = list(self.loss.terms)
        sums = torch.zeros(3 + len(keys), dtype=torch.float64)  # loss, top-1 hits, images, then each term
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.amp)
        for k, (images, labels) in enumerate(group):
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            last = k == len(group) - 1
            # DDP averages gradients only on the last micro-batch of the step
            sync = self.objective.no_sync() if self.world_size > 1 and not last else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, terms, descriptors = self.objective(images, labels)
                    loss = loss / self.cfg.accumulation
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss ({loss.item()}) at step {self.step + 1}; training stopped, the last good "
                        f"checkpoint is {self.out / CHECKPOINT}"
                    )
                self.scaler.scale(loss).backward()
            values = [loss.item(), self._correct(descriptors.detach(), labels), len(labels)]
            sums += torch.tensor(values + [terms[key].item() / self.cfg.accumulation for key in keys])
        if not self._gradients_checked:
            self._check_gradients()
        stats = sums.to(self.device)
        if self.world_size > 1:  # the loss, terms and accuracy of the global batch
            torch.distributed.all_reduce(stats)
            stats[0] /= self.world_size
            stats[3:] /= self.world_size
        self._top1 = (stats[1] / stats[2]).item() if self.loss.descriptor_head() is not None else None
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
        return stats[0].item(), dict(zip(keys, stats[3:].tolist(), strict=True)), grad_norm

    def _check_gradients(self) -> None:
        """After the first backward pass: every trainable parameter must have received a gradient."""
        missing = params_without_gradient({"model": self.model, "loss": self.loss})
        if missing:
            raise ValueError(
                f"{len(missing)} trainable parameter(s) received no gradient from the objective "
                f"{list(self.loss.terms)}: {', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}. Add a "
                f"loss term on the output that trains them (TrainConfig.losses) or freeze them in the model "
                f"(requires_grad=False, on purpose)"
            )
        self._gradients_checked = True

    def _correct(self, descriptors: Tensor, labels: Tensor) -> int:
        """Top-1 hits of the un-margined cosine logits of the descriptor head (SpCa reports margin-penalised ones);
        0 without such a head."""
        head = self.loss.descriptor_head()
        if head is None:
            return 0
        with torch.no_grad():
            if isinstance(head, PerDomainHead):  # among the image's own domain's classes, as the official prec@1
                return head.top1_hits(descriptors.float(), labels)
            return int((head.cosine(descriptors.float()).argmax(dim=1) == labels).sum())

    def _monitor(self) -> None:
        """Call the ``monitor`` callback on the model (rank 0) and log what it returns under ``test_set_monitoring``."""
        if self.process_rank == 0 and self.monitor is not None:
            self._log({"step": self.step, "test_set_monitoring": dict(self.monitor(self.model))})
            self.model.train()
        if self.world_size > 1:
            torch.distributed.barrier()

    def _truncate_log(self) -> None:
        """Drop the log records of steps after the checkpoint (a killed run logged them, the resumed run logs them
        again), so ``metrics.jsonl`` holds each step once."""
        if self.process_rank == 0:
            truncate_log(self.out / "metrics.jsonl", self.step)

    def _log(self, record: dict[str, Any]) -> None:
        if self.process_rank != 0:
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
        if self.world_size == 1:
            return self._stop
        flag = torch.tensor([int(self._stop)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self._stop = bool(flag.item())
        return self._stop


def truncate_log(path: Path, step: int) -> None:
    """Keep the records of steps up to ``step`` in the JSON-lines log ``path`` (if any), atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def _numpy_rng_state() -> dict[str, Any]:
    """NumPy's global RNG state as a tensor and plain values (``np.random.get_state()`` holds an ndarray)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_rng_tuple(state: dict[str, Any]) -> tuple[Any, ...]:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    return state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


def _composite_loss_state(state: dict[str, Tensor], loss: CompositeLoss) -> dict[str, Tensor]:
    """A checkpoint's loss state for ``loss``; checkpoints written before composite objectives hold the single
    loss's own keys (``weight``), which become its term's (``terms.arcface.weight``)."""
    if len(loss.terms) == 1 and state and not any(k.startswith("terms.") for k in state):
        (key,) = loss.terms
        return {f"terms.{key}.{k}": v for k, v in state.items()}
    return state


def _label_domains(dataset: Dataset) -> np.ndarray:
    """``(C,)`` the domain of every label of a UnED training set (:func:`irlib.data.uned.label_domains`)."""
    from irlib.data.uned import label_domains

    if not hasattr(dataset, "info") or not hasattr(dataset, "original_ids"):
        raise ValueError(
            f"classifier: per_domain and sampler: domain need a UnED training set (irlib.data.uned.uned_split), got "
            f"{type(dataset).__name__}"
        )
    return label_domains(dataset)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0
