"""The transfer study of the research memo: do landmark (specialist) architectures work on a universal dataset?

Every method head of :data:`TRANSFER_METHODS` (or a chosen few) is trained on one shared backbone and budget on each
training set (UnED's training split, and GLDv2-style landmark data), then evaluated on UnED (per domain, merged
protocol, :mod:`irlib.eval.universal`) and on a revisited landmark test set (ROxf-style Medium/Hard mAP). Each run
and each evaluation is an ordinary run folder (``run.json``), so the table's numbers are re-runs with ids, and an
interrupted study continues where it stopped: finished trainings and evaluations are read back, not repeated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from irlib.data.revisited import RevisitedDataset
from irlib.eval.extract import ExtractConfig, model_fingerprint
from irlib.eval.pipeline import evaluate_model, prepare_out_dir, save_result
from irlib.eval.universal import load_benchmark
from irlib.io import write_json
from irlib.models import create_model
from irlib.train.config import TrainConfig
from irlib.train.engine import RESUMABLE_CHANGES
from irlib.train.run import train

TRANSFER_METHODS: tuple[str, ...] = (
    "gem",
    "delg",
    "dolg",
    "cvnet",
    "spca",
    "senet",
    "superglobal",
    "ultron",
    "batchformer",
    "batch_transformer",
)
"""The compared landmark method heads (the research memo's list)."""

SOURCES: tuple[str, ...] = ("uned", "landmarks")
"""Training sets: UnED's training split (``dataset: uned``) and GLDv2-style landmark data (``dataset: gldv2``)."""


@dataclass
class TransferConfig:
    """One transfer study; saved as ``study.json`` in ``out_dir``.

    Attributes:
        methods: method heads to compare (:data:`TRANSFER_METHODS` or a subset); ``model_kwargs[method]`` their
            arguments (e.g. small heads for a CPU demo).
        backbone, pretrained: the one backbone every method shares.
        sources: which training sets to train on (:data:`SOURCES`).
        uned_root, uned_domains: the UnED root (``info_files/``, ``images/``) and its domains (None: all 8).
        landmark_train, landmark_test: a GLDv2-layout training folder and a revisited-format test folder.
        loss, loss_kwargs, steps, global_batch, image_size, lr: the shared training budget and objective.
        eval_image_size: longest side at evaluation (single scale; UnED and the landmark set alike).
        out_dir: the study folder, ``<method>/train-<source>/`` and its ``eval-<target>/`` runs.
    """

    methods: Sequence[str] = ("gem", "batchformer")
    model_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    sources: Sequence[str] = SOURCES
    uned_root: str = ""
    uned_domains: Sequence[str] | None = None
    landmark_train: str = ""
    landmark_test: str = ""
    loss: str = "arcface"
    loss_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"s": 30.0, "m": 0.15})
    steps: int = 20
    global_batch: int = 16
    image_size: int = 128
    lr: float = 0.01
    eval_image_size: int = 160
    seed: int = 0
    out_dir: str = "runs/transfer"

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources:
            raise ValueError(f"sources must be some of {SOURCES}, got {list(self.sources)}")
        if not self.methods:
            raise ValueError("methods is empty: name at least one of TRANSFER_METHODS")
        for name in ("uned_root", "landmark_train", "landmark_test"):
            if not getattr(self, name):
                raise ValueError(f"TransferConfig.{name} is empty: give the folder (the demo's when running it)")


def run_transfer_study(cfg: TransferConfig, *, progress: bool = True) -> pd.DataFrame:
    """Train every method on every source and evaluate it on UnED and the landmark set; resumable.

    Returns one row per (method, trained_on, evaluated_on, metric): ``value`` in percent and ``run_id`` of the
    evaluation's ``run.json`` (``metric`` is ``R@1``, ``mMP@5``, ``mAP@5``, ``<domain>/R@1`` ... for UnED and
    ``medium``, ``hard`` mAP for the landmark set).
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study.json", asdict(cfg) | {"methods": list(cfg.methods), "sources": list(cfg.sources)})
    uned = load_benchmark("uned", cfg.uned_root, domains=list(cfg.uned_domains) if cfg.uned_domains else None)
    landmarks = RevisitedDataset.from_dir(cfg.landmark_test)
    eval_cfg = ExtractConfig(image_size=cfg.eval_image_size, scales=(1.0,))
    rows = []
    plan = [(m, s) for m in cfg.methods for s in cfg.sources]
    for method, source in tqdm(plan, desc="transfer study", unit="run", disable=not progress):
        run = out / method / f"train-{source}"
        train_cfg = _train_config(cfg, method, source, run)
        if (run / "model.pth").is_file():
            _check_finished(run, train_cfg)
        else:  # an interrupted training continues from its checkpoint
            resume = (run / "checkpoint.pt").is_file()
            train(train_cfg, resume=resume, overwrite=not resume)
        kwargs = dict(cfg.model_kwargs.get(method, {}))
        model = create_model(method, backbone=cfg.backbone, weights=str(run / "model.pth"), **kwargs)
        fingerprint = model_fingerprint(model)
        for target, data in (("uned", uned), ("landmarks", landmarks)):
            folder = run / f"eval-{target}"
            if not _evaluated(folder, fingerprint, eval_cfg):
                result = evaluate_model(model, data, eval_cfg, progress=False)
                save_result(result, prepare_out_dir(folder, force=True))
            rows += _metric_rows(folder, method, source, target)
    return pd.DataFrame(rows, columns=["method", "trained_on", "evaluated_on", "metric", "value", "run_id"])


def _check_finished(run: Path, cfg: TrainConfig) -> None:
    """A finished training is read back only if it was run with ``cfg`` (up to the fields that do not change
    training): otherwise its numbers would be another study's."""
    params = json.loads((run / "run.json").read_text())["params"]
    wanted = json.loads(json.dumps(asdict(cfg)))
    differ = sorted(k for k, v in wanted.items() if k not in RESUMABLE_CHANGES and params.get(k) != v)
    if differ:
        raise ValueError(
            f"{run} holds a finished training with other settings ({', '.join(differ)}) than this study; choose "
            f"another out_dir or remove that folder"
        )


def _evaluated(folder: Path, fingerprint: str, cfg: ExtractConfig) -> bool:
    """Whether ``folder`` holds an evaluation of the model with ``fingerprint`` under ``cfg``."""
    if not (folder / "run.json").is_file():
        return False
    settings = json.loads((folder / "metrics.json").read_text())["settings"]
    return settings.get("state_dict_sha256") == fingerprint and all(
        settings.get(k) == v for k, v in cfg.settings().items()
    )


def _train_config(cfg: TransferConfig, method: str, source: str, out: Path) -> TrainConfig:
    """The shared budget for ``method`` on ``source``."""
    data = (
        {"dataset": "uned", "data_dir": cfg.uned_root, "domains": cfg.uned_domains}
        if source == "uned"
        else {
            "dataset": "gldv2",
            "data_dir": cfg.landmark_train,
        }
    )
    return TrainConfig(
        method=method,
        backbone=cfg.backbone,
        pretrained=cfg.pretrained,
        model_kwargs=dict(cfg.model_kwargs.get(method, {})),
        loss=cfg.loss,
        loss_kwargs=dict(cfg.loss_kwargs),
        image_size=cfg.image_size,
        global_batch=cfg.global_batch,
        max_steps=cfg.steps,
        lr=cfg.lr,
        warmup_epochs=0,
        seed=cfg.seed,
        out_dir=str(out),
        checkpoint_every=max(cfg.steps, 1),
        **data,
    )


def _metric_rows(folder: Path, method: str, source: str, target: str) -> list[list[Any]]:
    """The rows of one evaluation folder (its ``metrics.json`` and the id of its ``run.json``)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    run_id = json.loads((folder / "run.json").read_text())["id"]
    if target == "uned":
        values = metrics["metrics"]
        flat = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
        flat |= {f"{d}/{k}": v for d, row in values["per_domain"].items() for k, v in row.items()}
    else:
        flat = {p: metrics[p]["map"] for p in ("medium", "hard")}
    return [[method, source, target, name, value, run_id] for name, value in flat.items()]


def domain_table(results: pd.DataFrame, metric: str = "R@1", trained_on: str = "uned") -> pd.DataFrame:
    """Method x UnED domain table of ``metric`` (percent) for the models trained on ``trained_on``."""
    uned = results[(results["evaluated_on"] == "uned") & (results["trained_on"] == trained_on)]
    per_domain = uned[uned["metric"].str.endswith(f"/{metric}")]
    table = per_domain.assign(domain=per_domain["metric"].str.split("/").str[0])
    return table.pivot(index="method", columns="domain", values="value")


def rank_per_domain(table: pd.DataFrame) -> pd.DataFrame:
    """Each method's rank (1 = best) in each column of a method x domain table; ties share the best rank."""
    return table.rank(ascending=False, method="min").astype(int)
