"""Training configuration: one dataclass, YAML round trip, and the named recipes of the compared methods."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from irlib.data.samplers import DOMAIN_SAMPLING
from irlib.io import write_yaml
from irlib.losses.composite import LossTerm


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in the run folder.

    Attributes:
        method, backbone, pretrained, model_kwargs: the model (``irlib.models.create_model``).
        loss, loss_kwargs: the run's loss (``irlib.losses.create_loss``), one term on the model's descriptor streams.
        losses: instead of ``loss``, a composite objective: a list of weighted terms ``{name, weight, on, kwargs}``
            (:class:`irlib.losses.LossTerm`), e.g. ArcFace plus Smooth-AP. The model's own auxiliary terms (DELG's
            local-branch losses) are added unless named here (which re-weights them).
        dataset: ``"gldv2"`` (GLDv2-clean, or RGLDv2-clean with ``exclude``) or ``"uned"`` (UnED train split).
        data_dir: the dataset root: GLDv2 layout (``train_clean.csv`` + ``train/a/b/c/<id>.jpg``) or UnED
            (``info_files/<domain>/train.json`` + ``images/``).
        exclude: a landmark-id exclusion file or an image-id table (RGLDv2-clean, ``read_rgldv2_file``), or None.
        domains: UnED domains to train on (None: all 8).
        classifier: ``"joint"`` (one head over all domains' classes) or ``"per_domain"`` (UnED only: one head per
            domain, each image's loss on its own domain's classes; :class:`irlib.losses.domains.PerDomainHead`).
        transform, image_size: the training augmentation preset and crop size.
        global_batch: images per optimiser step over all processes and accumulation steps.
        accumulation: micro-batches per optimiser step (the loss is scaled by 1/accumulation; lr unchanged).
        sampler: ``"shuffled"``, ``"class_balanced"`` (``classes_per_batch`` x ``samples_per_class``), ``"tuple"``
            (CFCD's [anchor, positive, negatives] tuples, ``irlib.data.samplers.TupleSampler``) or ``"domain"``
            (UnED only: every optimiser step's batch from one domain, chosen by ``domain_sampling``).
        domain_sampling: with ``sampler: domain``, the UnED strategy (:data:`irlib.data.samplers.DOMAIN_SAMPLING`):
            ``"dataset_size"``, ``"balanced"`` or ``"round_robin"`` (:class:`irlib.data.samplers.DomainBatchSampler`).
        epochs, max_steps: length (``max_steps`` caps the optimiser steps, for demos and tests).
        lr, warmup_epochs, warmup_lr, min_lr: linear warm-up from ``warmup_lr`` to ``lr``, then cosine to ``min_lr``.
        optimizer: ``"sgd"`` or ``"adamw"`` (torch's defaults: betas 0.9, 0.999, eps 1e-8; decoupled weight decay).
        momentum, nesterov, weight_decay, no_decay_1d: SGD's momentum; weight decay, and 1-D tensors and biases
            without it.
        model_lr_scale, frozen_epochs: the model's parameters train at ``model_lr_scale`` x the lr of the loss heads
            (the classifier), and at 0 during the first ``frozen_epochs`` (only the heads train then).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (fp16 uses a GradScaler).
        grad_clip: max gradient norm, or None.
        seed, num_workers, log_every, checkpoint_every, out_dir: run plumbing.
        tensorboard: also write the logged scalars as TensorBoard events under ``out_dir/tensorboard``.
        init_from: an earlier run's ``checkpoint.pt`` (or its folder) whose model and loss weights this run starts
            from, strictly; optimiser, schedule and step start afresh (a second stage, e.g. CFCD's from its first).
        hard_negatives: with ``sampler: tuple``, a file of each training image's predicted class (CFCD's
            ``landmark_scores.txt`` format, :func:`irlib.data.samplers.read_predictions`) for hard negatives; None:
            random negatives.
        monitor_dir, monitor_every, monitor_image_size: optional evaluation of a revisited-format set every
            ``monitor_every`` steps, logged as ``test_set_monitoring``: off by default, because tuning on
            ROxf/RPar is a known flaw of the literature (SpCa's development monitored ROxf every epoch).
    """

    method: str = "gem"
    backbone: str = "resnet50"
    pretrained: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str = "arcface"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    losses: list[dict[str, Any]] | None = None
    dataset: str = "gldv2"
    data_dir: str = ""
    exclude: str | None = None
    domains: list[str] | None = None
    classifier: str = "joint"
    transform: str = "spca"
    image_size: int = 512
    global_batch: int = 128
    accumulation: int = 1
    sampler: str = "shuffled"
    classes_per_batch: int = 32
    samples_per_class: int = 4
    domain_sampling: str = "dataset_size"
    epochs: int = 30
    max_steps: int | None = None
    lr: float = 0.01
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-4
    min_lr: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    no_decay_1d: bool = True
    model_lr_scale: float = 1.0
    frozen_epochs: float = 0.0
    amp: str = "none"
    channels_last: bool = True
    grad_clip: float | None = None
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    out_dir: str = "runs/train"
    tensorboard: bool = False
    monitor_dir: str | None = None
    monitor_every: int = 0
    monitor_image_size: int = 256
    init_from: str | None = None
    hard_negatives: str | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.dataset not in ("gldv2", "uned"):
            raise ValueError(f"dataset must be gldv2 or uned, got {self.dataset!r}")
        if self.sampler not in ("shuffled", "class_balanced", "tuple", "domain"):
            raise ValueError(f"sampler must be shuffled, class_balanced, tuple or domain, got {self.sampler!r}")
        if self.classifier not in ("joint", "per_domain"):
            raise ValueError(f"classifier must be joint or per_domain, got {self.classifier!r}")
        if self.domain_sampling not in DOMAIN_SAMPLING:
            raise ValueError(f"domain_sampling must be one of {DOMAIN_SAMPLING}, got {self.domain_sampling!r}")
        if self.dataset != "uned" and (self.classifier == "per_domain" or self.sampler == "domain"):
            raise ValueError(
                f"classifier: per_domain and sampler: domain need dataset: uned (images with domains), got "
                f"dataset {self.dataset!r}"
            )
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.global_batch < 1 or self.accumulation < 1 or self.global_batch % self.accumulation:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a positive multiple of accumulation ({self.accumulation})"
            )
        if self.losses is not None and (self.loss, self.loss_kwargs) != (_DEFAULT.loss, _DEFAULT.loss_kwargs):
            raise ValueError(
                f"give the objective either as loss/loss_kwargs ({self.loss!r}) or as losses (a list of terms), "
                f"not both"
            )
        self.loss_terms()

    def loss_terms(self) -> list[LossTerm]:
        """The run's loss terms: ``losses``, or the single term ``loss`` with ``loss_kwargs``."""
        if self.losses is None:
            return [LossTerm(self.loss, kwargs=dict(self.loss_kwargs))]
        if not isinstance(self.losses, list) or not self.losses:
            raise ValueError(f"losses must be a non-empty list of terms {{name, weight, on, kwargs}}: {self.losses!r}")
        return [LossTerm.from_spec(term) for term in self.losses]

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with fields overridden; overriding either form of the objective (``loss``/``loss_kwargs`` or
        ``losses``) replaces the other form too."""
        _check_fields(overrides)
        if overrides.keys() & {"loss", "loss_kwargs"} and "losses" not in overrides:
            overrides["losses"] = None
        if "losses" in overrides and not overrides.keys() & {"loss", "loss_kwargs"}:
            overrides |= {"loss": _DEFAULT.loss, "loss_kwargs": dict(_DEFAULT.loss_kwargs)}
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the config as YAML (atomically)."""
        write_yaml(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        if "recipe" in d:
            raise ValueError("use recipe(name, **overrides) to start from a named recipe")
        _check_fields(d)
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a YAML file written by :meth:`to_yaml` (or by hand); ``recipe: NAME`` starts from a named recipe."""
        d = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(d).__name__}")
        name = d.pop("recipe", None)
        try:
            return recipe(name, **d) if name else cls.from_dict(d)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def yaml_number(value: Any) -> Any:
    """A number PyYAML read as a string (YAML 1.1 needs a dot: ``1e-2`` is a string, ``1.0e-2`` a float) as a float;
    any other value unchanged."""
    return float(value) if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()) else value


_AT_LEAST = {
    "global_batch": 1,
    "accumulation": 1,
    "classes_per_batch": 1,
    "samples_per_class": 1,
    "epochs": 1,
    "max_steps": 1,
    "image_size": 1,
    "log_every": 1,
    "checkpoint_every": 1,
    "monitor_every": 0,
    "monitor_image_size": 1,
    "num_workers": 0,
    "seed": 0,
    "warmup_epochs": 0,
    "warmup_lr": 0,
    "min_lr": 0,
    "weight_decay": 0,
    "momentum": 0,
    "model_lr_scale": 0,
    "frozen_epochs": 0,
}
_POSITIVE = ("lr", "grad_clip")


def _check_types(cfg: TrainConfig) -> None:
    """Type- and range-check every field in place: numbers written as ``1e-2`` (a string to PyYAML) become floats;
    anything else of the wrong type or range raises a ValueError naming the field and the value."""
    hints = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        value, allowed = getattr(cfg, f.name), hints[f.name]
        kinds = [get_origin(a) or a for a in get_args(allowed)] if get_origin(allowed) is UnionType else [allowed]
        kinds = [get_origin(k) or k for k in kinds]
        if value is None and type(None) in kinds:
            continue
        if float in kinds:
            value = yaml_number(value)
        if dict in kinds and isinstance(value, dict):
            value = {k: yaml_number(v) for k, v in value.items()}
        ok = any(
            isinstance(value, int | float) and not isinstance(value, bool)
            if k is float
            else isinstance(value, int) and not isinstance(value, bool)
            if k is int
            else isinstance(value, k)
            for k in kinds
            if k is not type(None)
        )
        if not ok:
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ValueError(f"field {f.name}: expected {names}, got {value!r} ({type(value).__name__})")
        if float in kinds:
            value = float(value)
        bound = _AT_LEAST.get(f.name)
        if bound is not None and value < bound:
            raise ValueError(f"field {f.name}: must be >= {bound}, got {value!r}")
        if f.name in _POSITIVE and not value > 0:
            raise ValueError(f"field {f.name}: must be > 0, got {value!r}")
        object.__setattr__(cfg, f.name, value)
    if not cfg.momentum < 1:
        raise ValueError(f"field momentum: must be < 1, got {cfg.momentum!r}")


def _check_fields(d: dict[str, Any]) -> None:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown training config field(s) {unknown}; valid fields: {sorted(known)}")


_DEFAULT = TrainConfig()

# Token's experiment.sh, the only concrete recipe of the SpCa lineage (spca-training.md §2.3): ArcFace with SpCa's
# defaults (s=32, m=0.15, no easy-margin fallback), 512 px, global batch 128, 30 epochs with 5 warm-up epochs from
# 1e-4, lr 0.01 cosine to 0, SGD Nesterov 0.9, weight decay 1e-4 except 1-D tensors and biases.
_SPCA = TrainConfig(
    method="spca",
    backbone="resnet101",
    loss="arcface",
    loss_kwargs={"s": 32.0, "m": 0.15, "fallback": "none"},
    transform="spca",
    image_size=512,
    global_batch=128,
    epochs=30,
    lr=0.01,
    warmup_epochs=5,
    warmup_lr=1e-4,
)

# CVNet-Global: training code unreleased; the paper (quoted in CVNet #10) gives 25 epochs, lr 0.005625, batch 144.
# Chosen: those, with CurricularFace s=30, m=0.15 (recalled) and DOLG's optimiser; the momentum-contrastive term is
# not part of this recipe.
_CVNET = TrainConfig(
    method="cvnet",
    backbone="resnet50",
    loss="curricularface",
    loss_kwargs={"s": 30.0, "m": 0.15},
    transform="cvnet",
    image_size=512,
    global_batch=144,
    epochs=25,
    lr=0.005625,
    warmup_epochs=0,
    no_decay_1d=False,
)

# CFCD stage 1 (Zhu et al., ICCV 2023), bassyess/CFCD configs/resnet{50,101}_cfcd_s1_8gpu.yaml + core/config.py:
# MadaCos rho=0.02 (MODEL.HEADS.ALPHA); SGD lr 0.005, momentum 0.9, Nesterov, wd 1e-4 on every tensor; cosine over
# 50 epochs after 5 warm-up epochs from 0.1 x lr; batch 128 (16 on each of 8 GPUs), 512 px; pycls augmentation
# (random-sized crop 0.08-1, flip, PCA lighting 0.1) = the "dolg" preset. The official lr changes once per epoch
# and its cosine spans the warm-up too; the Trainer's changes per step and starts after the warm-up.
_CFCD = TrainConfig(
    method="cfcd",
    backbone="resnet50",
    model_kwargs={"dim": 512},
    loss="madacos",
    loss_kwargs={"rho": 0.02},
    transform="dolg",
    image_size=512,
    global_batch=128,
    epochs=50,
    lr=0.005,
    warmup_epochs=5,
    warmup_lr=0.0005,
    no_decay_1d=False,
)

# UnED baselines (Ypsilantis et al., ICCV 2023), nikosips/Universal-Image-Embeddings.
# Model (vit_with_embedding.py, clip_vit_with_embedding.py): ViT-B/16 class token (CLIP: after ln_post), L2, Dense
# 768 -> 64 (config.model.output_dim), L2 = method "gem" with pooling "cls", normalize_pooled and whitening 64.
# Loss (loss_utils.py, configs): "normface" = cosine softmax with scale 16 and margin 0 = CosFace s=16, m=0, on a
# bias-free classifier with normalised class columns.
# Optimiser (configs, optimizer_utils.py, utils.py): scenic "adam" with weight_decay 1e-6 (AdamW, betas 0.9/0.999, on
# every tensor); constant lr 1e-3 for the classifier ("output_projection*"), 1e-3 x 1e-2 for everything else (the
# projection included), which gets lr 0 for the first 2 epochs (frozen_epochs).
# Data (sampling_utils.py, datasets.py): batch 128 of one domain per step; 7 epochs of sum(train sizes) // 128 steps
# (iccv_configs/*_train.py; configs/config_train_vit.py says 30, for its cars+sop demo); 224 px; float32.
# The iccv_configs vary the classifier (joint / separate) and the sampling (dataset_size / round_robin). Chosen:
# configs/config_train_vit.py's separate classifier with round robin (iccv_configs/*_uscrr_train.py); override
# classifier / domain_sampling for the other three. Augmentation (datasets.py): resize to 256 x 256, random 224 crop,
# flip = transform "uned".
_UNED_VIT = TrainConfig(
    method="gem",
    backbone="vit_base_patch16_224.augreg_in21k_ft_in1k",
    model_kwargs={"pooling": "cls", "whitening": 64, "normalize_pooled": True},
    loss="cosface",
    loss_kwargs={"s": 16.0, "m": 0.0},
    dataset="uned",
    classifier="per_domain",
    sampler="domain",
    domain_sampling="round_robin",
    transform="uned",
    image_size=224,
    global_batch=128,
    epochs=7,
    optimizer="adamw",
    lr=1e-3,
    min_lr=1e-3,
    warmup_epochs=0,
    weight_decay=1e-6,
    no_decay_1d=False,
    model_lr_scale=0.01,
    frozen_epochs=2,
    channels_last=False,
)

RECIPES: dict[str, TrainConfig] = {
    "spca": _SPCA,
    # DOLG configs/resnet101_delg_8gpu.yaml + core/config.py (superglobal-cvnet-dolg.md §4.3): CurricularFace s=30,
    # m=0.15; SGD momentum 0.9 Nesterov, wd 1e-4 on all tensors; lr 0.01 cosine over 100 epochs, 5 warm-up epochs
    # from 0.1 x lr. The yaml says batch 64 at 224 px, but the author says the released weights used 512 px; chosen:
    # 512 px and global batch 128 (the paper's reported batch, unverified).
    "dolg": TrainConfig(
        method="dolg",
        backbone="resnet101",
        loss="curricularface",
        loss_kwargs={"s": 30.0, "m": 0.15},
        transform="dolg",
        image_size=512,
        global_batch=128,
        epochs=100,
        lr=0.01,
        warmup_epochs=5,
        warmup_lr=0.001,
        no_decay_1d=False,
    ),
    "cvnet": _CVNET,
    # SENet (Lee et al., CVPR 2023): sungonce/SENet is test-only and no training values were found in the repo.
    # Chosen: the "cvnet" recipe of the same group and code base.
    "senet": _CVNET.replace(method="senet"),
    # SuperGlobal (Shao et al., ICCV 2023) trains nothing: its numbers use CVNet-Global's weights, and GeM+ replaces
    # the jointly learned GeM p, which the paper finds sub-optimal, by a fixed p = 4.6. This recipe is that training:
    # the "cvnet" recipe with GeM+ pooling, single scale, without the test-time modules (ReLU+, Regional-GeM,
    # Scale-GeM); evaluate the result with create_model("superglobal", weights=...) defaults.
    "superglobal": _CVNET.replace(
        method="superglobal", model_kwargs={"relup": False, "relup_s1_always": False, "rgem": False}
    ),
    # DELG (Cao et al., ECCV 2020), tensorflow/models research/delf/delf/python/training/train.py: ArcFace
    # s=45.25 (delg_scale_factor_init, not trained), m=0.1 (delg_arcface_margin), margin only where theta <= pi - m;
    # the local branch (attention + autoencoder on stop-gradient block3) with attention_loss_weight=1.0 and
    # reconstruction_loss_weight=10.0; SGD momentum 0.9 without Nesterov, lr 0.01, gradient norm clipped at 10.
    # Chosen: global batch 256 with lr 0.01 (the DELF README's 8-GPU setting; train.py's default batch is 32), 512
    # px (the paper's, recalled; train.py defaults to 321), 25 epochs with cosine decay to 0 (train.py decays
    # linearly over 500k steps, a schedule the Trainer does not have).
    "delg": TrainConfig(
        method="delg",
        backbone="resnet50",
        model_kwargs={"local_branch": True},
        losses=[
            {"name": "arcface", "kwargs": {"s": 45.25, "m": 0.1, "fallback": "none"}},
            {"name": "delg_attention", "weight": 1.0},
            {"name": "delg_reconstruction", "weight": 10.0},
        ],
        transform="delg",
        image_size=512,
        global_batch=256,
        epochs=25,
        lr=0.01,
        warmup_epochs=0,
        nesterov=False,
        grad_clip=10.0,
    ),
    "cfcd": _CFCD,
    # CFCD stage 2 (configs/resnet{50,101}_cfcd_s2_8gpu.yaml): the same model with the local triplet loss (margin
    # 0.1, weight 1: the config's LAMDA 0.05 is never applied, irlib.models.cfcd.PAPER_LAMBDA), batches of
    # [anchor, positive, 6 negatives] tuples (hard negatives from stage-1 predictions: hard_negatives=FILE), 50
    # epochs without warm-up, starting from stage 1's model and MadaCos head: set init_from to the stage-1 run.
    "cfcd_s2": _CFCD.replace(
        model_kwargs={"dim": 512, "local_loss": True}, sampler="tuple", warmup_epochs=0, pretrained=False
    ),
    # ULTRON (Kweon & Park, ACCV 2024) has no official code; values from an unofficial re-implementation
    # (methods.md §8, [3rd]): GLDv2-clean, 512 x 512, batch 128, MadaCos rho = 0.04, SGD lr 0.01 momentum 0.9 wd 1e-4
    # cosine, about 40 epochs after a warm-up of 5 (or 10) epochs done with AdamW at 1e-3. Chosen: 40 epochs, SGD
    # throughout with a 5-epoch linear warm-up from 1e-3 (the Trainer has no optimiser switch), pycls augmentation.
    "ultron": TrainConfig(
        method="ultron",
        backbone="resnet50",
        loss="madacos",
        loss_kwargs={"rho": 0.04},
        transform="dolg",
        image_size=512,
        global_batch=128,
        epochs=40,
        lr=0.01,
        warmup_epochs=5,
        warmup_lr=1e-3,
        nesterov=False,
    ),
    # BatchFormer (Hou et al., CVPR 2022, zhihou7/BatchFormer): one TransformerEncoderLayer (4 heads, FFN = D,
    # dropout 0.5) over the batch, the classifier shared by cat([pre, post]) with the labels repeated, skipped at
    # test. It has no retrieval recipe; chosen: on GeM with a 2048-d FC whitening (ResNet-50), with the "spca"
    # recipe's loss and optimiser (Token's experiment.sh), so a row differs from its GeM baseline only by BatchFormer.
    "batchformer": _SPCA.replace(
        method="batchformer", backbone="resnet50", model_kwargs={"base": "gem", "whitening": 2048}
    ),
    # The Batch Transformer (Her et al., IEEE Access 2025; irlib.models.batch_transformer for the adaptation): the
    # run's loss on the per-image descriptor (lambda = 1, the paper's lambda not retrieved), BT and CBA through one
    # head. Chosen like "batchformer".
    "batch_transformer": _SPCA.replace(
        method="batch_transformer", backbone="resnet50", model_kwargs={"base": "gem", "whitening": 2048}
    ),
    # The research method (irlib.models.compose): SpCa's spatial-context pooling, the Batch Transformer in training,
    # and a ranking-equivalent objective. Which equivalence: a softmax on L2-normalised features and class weights
    # with an additive margin delta on the true class (CosFace) equals a smoothed triplet loss whose anchors are the
    # images and whose one proxy per class ranks the true class's proxy above every other by delta (Qian et al.,
    # "SoftTriple Loss", ICCV 2019, §3.1); so the margin head is a proxy-level ranking loss. The image-level ranking
    # it does not see is optimised directly by ROADMAP's smooth-rank AP with calibration (Ramzi et al., NeurIPS
    # 2021), which needs several images per class in a batch: class-balanced batches of 32 classes x 4 images.
    # Chosen (no paper gives this combination): the "spca" recipe's backbone, resolution, optimiser and schedule,
    # CosFace s=32 with SpCa's margin 0.15, both terms weight 1, 2048-d whitening.
    "compose_rank": _SPCA.replace(
        method="compose",
        model_kwargs={"pooling": "spca", "batch_attention": "batch_transformer", "whitening": 2048},
        losses=[{"name": "cosface", "kwargs": {"s": 32.0, "m": 0.15}}, {"name": "roadmap", "weight": 1.0}],
        sampler="class_balanced",
        classes_per_batch=32,
        samples_per_class=4,
    ),
    # info_utils.py ViT_configs["B/16"]: B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-
    # steps_20k-lr_0.01-res_224.npz (download_models.sh), ImageNet-21k AugReg fine-tuned on ImageNet-1k, which is
    # timm's vit_base_patch16_224.augreg_in21k_ft_in1k (same file); mean = std = 0.5.
    "uned_vit_in21k": _UNED_VIT,
    # info_utils.py CLIP_ViT_configs["B/16"]: clip/vit_b16.npy, OpenAI CLIP ViT-B/16's visual tower (its text tower
    # and visual.proj are dropped on loading) = timm's vit_base_patch16_clip_224.openai; CLIP's mean/std.
    "uned_vit_clip": _UNED_VIT.replace(backbone="vit_base_patch16_clip_224.openai"),
}


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """A named recipe with fields overridden (:meth:`TrainConfig.replace`), e.g. ``recipe("spca", epochs=1)``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name].replace(**overrides)
