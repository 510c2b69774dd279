"""A training run from a config: model, data, trainer; single process or one process per GPU under torchrun."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from irlib.io import sha256_file
from irlib.models.base import RetrievalModel
from irlib.provenance import new_record, write_run
from irlib.train.config import TrainConfig
from irlib.train.engine import MODEL, Trainer, check_run_folder

LABELS = "labels.json"


def _split_files(cfg: TrainConfig, info: dict[str, Any]) -> list[Path]:
    """The files that define the training split a run read, in reading order: GLDv2's CSV (``info["csv"]``, the one
    the loader found) and the exclusion file; UnED's ``info_files/<domain>/train.json`` per domain."""
    if cfg.dataset == "uned":
        return [Path(cfg.data_dir) / "info_files" / d / "train.json" for d in info["domains"]]
    return [Path(info["csv"])] + ([Path(cfg.exclude)] if cfg.exclude else [])


def _split_checksums(paths: Sequence[Path]) -> dict[str, Any]:
    """``{"train_split_files": {path: sha256}, "train_split_sha256": ...}``; the latter hashes the files' digests in
    order, so it names the split's content wherever the files lie."""
    digests = {str(p): sha256_file(p) for p in paths}
    return {
        "train_split_files": digests,
        "train_split_sha256": hashlib.sha256("\n".join(digests.values()).encode()).hexdigest(),
    }


def training_dataset(cfg: TrainConfig) -> tuple[str, str, dict[str, Any]]:
    """``(registry name, root, loader arguments)`` of the config's training split for
    :func:`irlib.data.registry.load_dataset`: GLDv2-clean, RGLDv2-clean with ``exclude``, or UnED's train split."""
    if cfg.dataset == "uned":
        return "uned", cfg.data_dir, {"domains": cfg.domains, "split": "train"}
    if cfg.exclude:
        return "rgldv2-clean", cfg.data_dir, {"exclude_file": cfg.exclude}
    return "gldv2-clean", cfg.data_dir, {}


def revisited_monitor(cfg: TrainConfig) -> Callable[[RetrievalModel], dict[str, float]]:
    """The Trainer's test-set monitoring callback: E/M/H mAP of ``cfg.monitor_dir`` (a revisited-format folder) at
    ``cfg.monitor_image_size``, single scale, on the model's device."""
    from irlib.data.registry import load_dataset
    from irlib.eval.extract import ExtractConfig
    from irlib.eval.pipeline import evaluate_model
    from irlib.eval.revisited import PROTOCOLS

    if not cfg.monitor_dir:
        raise ValueError("monitor_every needs monitor_dir (a revisited-format folder to evaluate)")
    dataset = load_dataset("revisited", cfg.monitor_dir)

    def monitor(model: RetrievalModel) -> dict[str, float]:
        device = str(next(model.parameters()).device)
        extract = ExtractConfig(image_size=cfg.monitor_image_size, scales=(1.0,), device=device)
        metrics = evaluate_model(model, dataset, extract, progress=False).metrics
        return {p: metrics[p]["map"] for p in PROTOCOLS}

    return monitor


def init_distributed() -> bool:
    """Join the process group torchrun describes in the environment (NCCL on GPU, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def train(
    cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, allow_changes: bool = False
) -> dict[str, Any]:
    """Train ``cfg`` on its ``dataset`` (GLDv2/RGLDv2-clean or UnED) in ``data_dir``; returns the last logged metrics.

    The label map (original landmark id -> class index, ids sorted numerically) is saved as ``labels.json`` in
    ``out_dir`` and reused on resume. An existing run is continued with ``resume`` (changed training fields need
    ``allow_changes``) or replaced with ``overwrite``; a refused run writes nothing.
    Rank 0 writes the run record ``run.json`` (:mod:`irlib.results`) at the end; its ``dataset`` holds the
    checksums of the split's files (:func:`_split_checksums`; ``gnd_sha256``, the test ground truth's, is None).
    """
    from irlib.data.registry import load_dataset
    from irlib.data.transforms import train_transform
    from irlib.models import create_model

    if not cfg.data_dir:
        raise ValueError("the training config has no data_dir (the training set's root folder)")
    t0 = time.perf_counter()
    started = init_distributed()
    try:
        out = Path(cfg.out_dir)
        check_run_folder(out, resume, overwrite)
        labels = out / LABELS
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.method, backbone=cfg.backbone, pretrained=cfg.pretrained, **cfg.model_kwargs)
        mean, std = model.data_config["mean"], model.data_config["std"]
        transform = train_transform(cfg.transform, cfg.image_size, mean=mean, std=std)
        label_map = labels if resume and labels.is_file() else None
        name, root, kwargs = training_dataset(cfg)
        dataset = load_dataset(name, root, transform=transform, label_map=label_map, **kwargs)
        if int(os.environ.get("RANK", "0")) == 0:
            dataset.save_label_map(labels)
        monitor = revisited_monitor(cfg) if cfg.monitor_every else None
        trainer = Trainer(cfg, dataset, model=model, monitor=monitor)
        result = trainer.fit(resume=resume, overwrite=overwrite, allow_changes=allow_changes)
        if int(os.environ.get("RANK", "0")) == 0:
            weights = out / MODEL
            record = new_record(
                "train",
                out,
                params=dataclasses.asdict(cfg) | {"config_changes": trainer.config_changes},
                metrics=result,
                dataset={
                    "name": cfg.dataset,
                    "distractors": None,
                    "gnd_sha256": None,
                    **_split_checksums(_split_files(cfg, dataset.info)),
                },
                weights_sha256=sha256_file(weights) if weights.is_file() else None,
                seconds=round(time.perf_counter() - t0, 3),
            )
            record["status"] = "preempted" if result.get("preempted") else "done"
            write_run(out, record)
        return result
    finally:
        if started:
            torch.distributed.destroy_process_group()
