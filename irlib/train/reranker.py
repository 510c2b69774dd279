"""Training of an AMES reranker (:mod:`irlib.models.ames`) on a landmark training set, the retrieval model frozen.

The retrieval model (e.g. GeM on EfficientNet-Lite0) is never trained here: its feature maps at every position
(:func:`irlib.eval.local_features.cached_positions`) and its global descriptors are extracted once and cached; only
the reranker's detector, binariser, projection and matching transformer train, in the steps below.

Each optimiser step reads a class-balanced batch (:class:`irlib.data.samplers.ClassBalancedSampler`: P landmarks x K
images). Every batch image is the query of pairs with its K - 1 batch mates of its landmark (positives), with
``negatives`` images of other landmarks drawn from the ``hard_pool`` best of its global-descriptor ranking (hard
negatives of the frozen model) and with the batch's other landmarks (``batch_negatives``). The loss is the
class-balanced binary cross-entropy of the pairs' logits (AMES's loss) plus, for the detector, whose top-n selection
passes no gradient, ``detector_weight`` x the contrastive loss (:class:`irlib.losses.ContrastiveLoss`) of the
attention-pooled image vectors (:func:`irlib.models.ames.attention_pooled`).

What makes a matcher trainable in about two minutes on 2 CPU cores, where AMES trains for hours on GLDv2 (each
measured on the demo, see ``benchmarks/README.md``): the cross-attention starts as a code-similarity matcher
(``matching_init``); the first ``pretrain_steps`` steps train on synthetic code sets (:func:`synthetic_pairs`) to
compare codes; every step relabels the bits at random (``relabel_bits``) so that the few training landmarks' codes
cannot be memorised. Without them the matcher memorised the 20 training landmarks, and its logits alone (λ = 0)
ordered the demo's test shortlists little better than a random order (Medium mAP 21 against 14; 57-66 with them).

The engine's pieces are reused (:func:`irlib.train.engine.param_groups`, :func:`~irlib.train.engine.lr_at`,
:func:`~irlib.train.engine.check_run_folder`, :func:`~irlib.train.engine.params_without_gradient`,
:func:`~irlib.train.engine.truncate_log`): the :class:`~irlib.train.engine.Trainer` itself drives image models through
``forward_train`` and a per-image loss, which pairs of cached local features are not. The run folder holds
``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt`` (resumable: batches depend only on ``(seed, step)``) and, at the
end, ``reranker.pt`` (:func:`irlib.models.ames.save_reranker`) and ``selection.json``.

λ and γ of the score ``λ·s_global + (1 − λ)·sigmoid(γ·logit)`` are chosen after training on ``holdout_classes``
landmarks kept out of training (AMES tunes them on GLDv2's public test split), never on a test set: each held-out
image queries all the training images, and the (λ, γ) of the best mAP of the reranked top ``M`` is stored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from irlib.data.gldv2 import gldv2_train
from irlib.data.revisited import RevisitedDataset
from irlib.data.samplers import ClassBalancedSampler
from irlib.data.synthetic import make_demo_data
from irlib.eval.extract import SQRT2, ExtractConfig, extract_cached, model_fingerprint
from irlib.eval.local_features import Positions, cached_positions, select_codes
from irlib.eval.rerank import learned_rerank
from irlib.eval.rerank_comparison import compare_rerankers
from irlib.eval.revisited import compute_map
from irlib.io import atomic_path, sha256_file, write_json, write_yaml
from irlib.losses.pairs import ContrastiveLoss
from irlib.models import create_model
from irlib.models.ames import AMES, AMESConfig, attention_pooled, load_reranker, padding_mask, save_reranker
from irlib.models.backbones import load_torch_file
from irlib.models.base import RetrievalModel
from irlib.train.engine import CHECKPOINT, check_run_folder, lr_at, param_groups, params_without_gradient, truncate_log

RERANKER = "reranker.pt"
_AMES_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AMESConfig)}
LAMBDAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
GAMMAS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""The (λ, γ) grid searched on the held-out landmarks (AMES's published values lie in it: λ 0.35-0.85, γ 0.1-0.8)."""
RESUMABLE_CHANGES = frozenset({"out_dir", "cache_dir", "log_every", "checkpoint_every", "device"})
"""Fields a resumed run may change: where things are and what is logged, not what is trained."""


@dataclass
class RerankerTrainConfig:
    """Everything a reranker training run depends on; saved as ``config.yaml`` in the run folder.

    Attributes:
        method, backbone, pretrained, weights, model_kwargs: the frozen retrieval model (``create_model``) whose
            feature maps give the local descriptors.
        data_dir, exclude: the training set, GLDv2-clean layout (``gldv2_train``), minus the landmark ids of
            ``exclude`` (e.g. those overlapping the test set).
        image_size, scales: extraction settings of the training images (those of the evaluation, to match).
        bits ... tau: the :class:`irlib.models.ames.AMESConfig` sizes (``in_dim`` is the model's channels).
        holdout_classes: landmarks kept out of training, on which λ and γ are chosen.
        classes_per_batch, samples_per_class: the P x K batch; negatives, hard_pool: hard negatives per query image,
            drawn from its ``hard_pool`` best other-landmark images by global descriptor.
        steps, lr, warmup_steps, warmup_lr, min_lr, weight_decay, grad_clip: AdamW with linear warm-up then cosine
            (:func:`irlib.train.engine.lr_at`).
        batch_negatives: the batch's images of other landmarks are negatives of each query image too (pairs that
            cost no detector pass); the pairs' BCE weighs positives by negatives / positives, so both count alike.
        detector_weight: weight of the detector's contrastive loss (margin ``detector_margin``).
        matching_init: start the cross-attention as a code-similarity matcher with this scale
            (:meth:`irlib.models.ames.AMES.init_for_matching`), or None for the official initialisation only.
        pretrain_steps: optimiser steps on synthetic code sets before the landmark pairs (counted in ``steps``):
            random codes, a positive database image holding noisy copies of some of the query's codes
            (:func:`synthetic_pairs`); they teach the matcher to compare codes, which no landmark identity helps.
        relabel_bits: every step applies one random signed permutation of the bits to all its codes. Which bit is
            which is arbitrary (any signed permutation of the binariser's columns is as good a binariser), so a pair's
            similarity cannot depend on it: the matcher has to compare the two images' codes instead of memorising
            the few training landmarks' codes.
        M: shortlist length reranked when choosing λ and γ.
    """

    method: str = "gem"
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_dir: str = "data/demo"
    exclude: list[int] | None = None
    image_size: int = 384
    scales: list[float] = field(default_factory=lambda: [1 / SQRT2, 1.0, SQRT2])
    bits: int = _AMES_DEFAULTS["bits"]
    model_dim: int = _AMES_DEFAULTS["model_dim"]
    heads: int = _AMES_DEFAULTS["heads"]
    layers: int = _AMES_DEFAULTS["layers"]
    ffn: int = _AMES_DEFAULTS["ffn"]
    detector_hidden: int = _AMES_DEFAULTS["detector_hidden"]
    n_query: int = _AMES_DEFAULTS["n_query"]
    n_db: int = _AMES_DEFAULTS["n_db"]
    tau: float = _AMES_DEFAULTS["tau"]
    holdout_classes: int = 4
    classes_per_batch: int = 4
    samples_per_class: int = 3
    negatives: int = 3
    hard_pool: int = 20
    steps: int = 500
    lr: float = 1e-3
    warmup_steps: int = 20
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    detector_weight: float = 1.0
    detector_margin: float = 0.7
    batch_negatives: bool = True
    relabel_bits: bool = True
    matching_init: float | None = 1.0
    pretrain_steps: int = 300
    M: int = 100
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    out_dir: str = "runs/ames"
    cache_dir: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        self.scales = [float(s) for s in self.scales]
        for name in (
            "holdout_classes",
            "classes_per_batch",
            "negatives",
            "hard_pool",
            "steps",
            "M",
            "log_every",
            "checkpoint_every",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"field {name}: must be >= 1, got {getattr(self, name)!r}")
        if self.samples_per_class < 2:
            raise ValueError(
                f"field samples_per_class: must be >= 2 (a batch image needs a positive), got {self.samples_per_class}"
            )
        if not 0 <= self.pretrain_steps < self.steps:
            raise ValueError(f"pretrain_steps ({self.pretrain_steps}) must be in [0, steps = {self.steps})")
        if self.negatives > self.hard_pool:
            raise ValueError(f"negatives ({self.negatives}) must be <= hard_pool ({self.hard_pool})")
        self.ames_config(in_dim=max(self.bits, 1))  # checks the sizes

    def ames_config(self, in_dim: int) -> AMESConfig:
        """The reranker's sizes for a model with ``in_dim`` feature channels."""
        names = ("bits", "model_dim", "heads", "layers", "ffn", "detector_hidden", "n_query", "n_db", "tau")
        return AMESConfig(in_dim=in_dim, **{n: getattr(self, n) for n in names})

    def extract_config(self) -> ExtractConfig:
        """The extraction settings of the training images (uncropped, as database images)."""
        return ExtractConfig(image_size=self.image_size, scales=tuple(self.scales), device=self.device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the config as YAML (atomically)."""
        write_yaml(path, self.to_dict())

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> RerankerTrainConfig:
        """Read a file of :meth:`to_yaml`; an unknown field raises ValueError naming it."""
        d = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - known:
            raise ValueError(f"{path}: expected reranker training fields {sorted(known)}, got {d!r:.200}")
        return cls(**d)


@dataclass
class _Data:
    """The cached inputs of training: the retrieval model's local and global features of the training images."""

    positions: Positions
    descriptors: np.ndarray  # (n, D) global descriptors
    labels: np.ndarray  # (n,) contiguous landmark labels
    train: np.ndarray  # indices of the training images (not held out)
    holdout: np.ndarray  # indices of the held-out images


def _prepare(cfg: RerankerTrainConfig, model: RetrievalModel, progress: bool) -> _Data:
    """Load the training set, split off ``holdout_classes`` landmarks and extract (or read) the features."""
    trainset = gldv2_train(cfg.data_dir, exclude=cfg.exclude)
    labels = np.asarray(trainset.labels)
    classes = np.unique(labels)
    if len(classes) < cfg.holdout_classes + cfg.classes_per_batch:
        raise ValueError(
            f"{cfg.data_dir}: {len(classes)} landmarks, fewer than holdout_classes + classes_per_batch = "
            f"{cfg.holdout_classes + cfg.classes_per_batch}"
        )
    held = np.random.default_rng([cfg.seed, 1]).choice(classes, cfg.holdout_classes, replace=False)
    is_held = np.isin(labels, held)
    paths = list(trainset.paths)
    ecfg = cfg.extract_config()
    positions = cached_positions(
        model, paths, None, ecfg, cache_dir=cfg.cache_dir, desc="train locals", progress=progress
    )
    descriptors = extract_cached(
        model, paths, None, ecfg, cache_dir=cfg.cache_dir, desc="train global", progress=progress
    )
    return _Data(
        positions, np.asarray(descriptors, np.float32), labels, np.flatnonzero(~is_held), np.flatnonzero(is_held)
    )


def hard_negative_pools(descriptors: np.ndarray, labels: np.ndarray, pool: int) -> np.ndarray:
    """``(n, pool)`` for each image the ``pool`` most similar images of other labels (descriptor inner product,
    ties by lower index): the hard negatives of the frozen global model."""
    sim = descriptors @ descriptors.T
    sim[labels[:, None] == labels[None, :]] = -np.inf
    if pool > int((labels[:, None] != labels[None, :]).sum(1).min()):
        raise ValueError(f"hard_pool={pool} exceeds the images of other landmarks some image has")
    return np.argsort(-sim, axis=1, kind="stable")[:, :pool]


class _Run:
    """One training run's state: reranker, optimiser, step, and the batch construction."""

    def __init__(self, cfg: RerankerTrainConfig, data: _Data, in_dim: int) -> None:
        self.cfg, self.data = cfg, data
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(cfg.seed)
        self.model = AMES(cfg.ames_config(in_dim)).to(self.device)
        self.optimizer = torch.optim.AdamW(param_groups([self.model], cfg.weight_decay, True), lr=cfg.lr)
        self.contrastive = ContrastiveLoss(margin=cfg.detector_margin)
        self.sampler = ClassBalancedSampler(
            data.labels[data.train],
            classes_per_batch=cfg.classes_per_batch,
            samples_per_class=cfg.samples_per_class,
            seed=cfg.seed,
        )
        train = data.train
        self.pools = train[hard_negative_pools(data.descriptors[train], data.labels[train], cfg.hard_pool)]
        self.step = 0

    def init_weights(self) -> None:
        """Before the first step: the binariser by ITQ on up to 100,000 random positions of the training images, and
        the matching initialisation (``matching_init``)."""
        rng = np.random.default_rng([self.cfg.seed, 2])
        rows = np.concatenate([np.arange(*self.data.positions.offsets[i : i + 2]) for i in self.data.train])
        rows = np.sort(rng.choice(rows, min(len(rows), 100_000), replace=False))
        sample = torch.from_numpy(self.data.positions.features[rows].astype(np.float32))
        self.model.binariser.init_itq(sample, seed=self.cfg.seed)
        if self.cfg.matching_init is not None:
            self.model.init_for_matching(self.cfg.matching_init, seed=self.cfg.seed)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(images, labels, query positions, database positions)`` of ``step``'s pairs: the unique images read,
        their labels, and per pair the index (into ``images``) of its query and database image; pair labels follow
        from the image labels."""
        epoch, index = divmod(step, self.sampler.num_batches)
        batch = self.data.train[self.sampler.epoch_batches(epoch)[index]]
        rng = np.random.default_rng([self.cfg.seed, 3, step])
        queries, dbs = [], []
        for i, a in enumerate(batch):
            same = self.data.labels[batch] == self.data.labels[a]
            mates = [b for j, b in enumerate(batch) if j != i and same[j]]
            pool = self.pools[np.searchsorted(self.data.train, a)]
            negatives = rng.choice(pool, self.cfg.negatives, replace=False).tolist()
            if self.cfg.batch_negatives:
                negatives += [b for b in batch[~same] if b not in negatives]
            dbs += [*mates, *negatives]
            queries += [a] * (len(mates) + len(negatives))
        images = np.unique(np.concatenate([batch, dbs]))
        return images, self.data.labels[images], _positions_of(images, queries), _positions_of(images, dbs)

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's loss (pairs' BCE + ``detector_weight`` x detector contrastive) and its logged parts; the
        synthetic pairs' BCE during the first ``pretrain_steps``."""
        cfg = self.cfg
        if step < cfg.pretrain_steps:
            q, q_pad, x, x_pad, target = synthetic_pairs(
                8 * cfg.classes_per_batch * cfg.samples_per_class, cfg.n_query, cfg.n_db, cfg.bits, cfg.seed, step
            )
            logits = self.model.match(
                self.model.encode(q.to(self.device), q_pad.to(self.device)),
                self.model.encode(x.to(self.device), x_pad.to(self.device)),
            )
            bce = F.binary_cross_entropy_with_logits(logits, target.to(self.device))
            return bce, {
                "synthetic_bce": bce.item(),
                "pair_accuracy": ((logits > 0) == (target > 0)).float().mean().item(),
            }
        images, labels, q_at, x_at = self.batch(step)
        feats = [self.data.positions.image(i).to(self.device) for i in images]
        attention = self.model.detect(torch.cat(feats)).split([len(f) for f in feats])
        pooled = torch.stack([attention_pooled(f, a) for f, a in zip(feats, attention, strict=True)])
        detector = self.contrastive(pooled, torch.from_numpy(labels).to(self.device))
        query_ids, db_ids = np.unique(q_at), np.unique(x_at)
        relabel = self._relabelling(step)
        queries = self._encode([feats[i] for i in query_ids], [attention[i] for i in query_ids], cfg.n_query, relabel)
        dbs = self._encode([feats[i] for i in db_ids], [attention[i] for i in db_ids], cfg.n_db, relabel)
        qi = torch.from_numpy(np.searchsorted(query_ids, q_at)).to(self.device)
        xi = torch.from_numpy(np.searchsorted(db_ids, x_at)).to(self.device)
        logits = self.model.match(queries.take(qi), dbs.take(xi))
        target = torch.from_numpy((labels[q_at] == labels[x_at]).astype(np.float32)).to(self.device)
        positives = target.sum().clamp(min=1)
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=(len(target) - positives) / positives)
        accuracy = ((logits > 0) == (target > 0)).float().mean()
        total = bce + cfg.detector_weight * detector
        return total, {"bce": bce.item(), "detector": detector.item(), "pair_accuracy": accuracy.item()}

    def _relabelling(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(permutation, signs)`` of the bits for ``step`` (``relabel_bits``), or None."""
        if not self.cfg.relabel_bits:
            return None
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        bits = self.cfg.bits
        signs = torch.where(torch.rand(bits, generator=generator) < 0.5, -1.0, 1.0)
        return torch.randperm(bits, generator=generator).to(self.device), signs.to(self.device)

    def _encode(
        self,
        feats: list[torch.Tensor],
        attention: list[torch.Tensor],
        n: int,
        relabel: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> Any:
        codes = [self.model.select(f, a, n) for f, a in zip(feats, attention, strict=True)]
        if relabel is not None:
            codes = [c[:, relabel[0]] * relabel[1] for c in codes]
        counts = torch.tensor([len(c) for c in codes], device=self.device)
        padded = torch.stack([F.pad(c, (0, 0, 0, n - len(c))) for c in codes])
        return self.model.encode(padded, padding_mask(counts, n))

    def train_step(self) -> dict[str, Any]:
        """One optimiser step; the first one checks that every trainable parameter received a gradient."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg.steps, cfg.warmup_steps, cfg)  # type: ignore[arg-type]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = self.loss(self.step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {self.step + 1}")
        loss.backward()
        if self.step == self.cfg.pretrain_steps:
            missing = params_without_gradient({"reranker": self.model})
            if missing:
                raise ValueError(f"trainable parameter(s) without a gradient: {', '.join(missing)}")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.step += 1
        return {"step": self.step, "loss": loss.item(), **parts, "lr": lr, "grad_norm": grad_norm}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": self.cfg.to_dict(),
        }

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)

    def load(self, path: Path) -> None:
        """Continue from a checkpoint of :meth:`save`; a changed field that alters training raises ValueError."""
        state = load_torch_file(path, "reranker training checkpoint", map_location=self.device)
        changed = {
            k: (v, state["config"].get(k))
            for k, v in self.cfg.to_dict().items()
            if k not in RESUMABLE_CHANGES and state["config"].get(k) != v
        }
        if changed:
            raise ValueError(f"resuming {path} with changed training fields (now, saved): {changed}")
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


def synthetic_pairs(
    pairs: int, n_query: int, n_db: int, bits: int, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(query codes, query padding, database codes, database padding, targets)`` of ``pairs`` synthetic pairs:
    random ±1 codes and valid counts; half the pairs are positive, their database image holding noisy copies (each bit
    flipped with probability 0.05-0.25) of between 1/8 and 1/2 of its codes' worth of the query's codes. Drawn from
    ``(seed, step)``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * step + 1)

    def signs(*shape: int) -> torch.Tensor:
        return torch.where(torch.rand(*shape, generator=g) < 0.5, -1.0, 1.0)

    q, x = signs(pairs, n_query, bits), signs(pairs, n_db, bits)
    q_count = torch.randint(max(1, n_query // 4), n_query + 1, (pairs,), generator=g)
    x_count = torch.randint(max(1, n_db // 4), n_db + 1, (pairs,), generator=g)
    target = (torch.arange(pairs) % 2).float()
    for i in range(1, pairs, 2):  # the positives
        k = int(torch.randint(max(1, n_db // 8), max(2, n_db // 2 + 1), (1,), generator=g).clamp(max=x_count[i]))
        source = q[i, torch.randint(0, int(q_count[i]), (k,), generator=g)]
        flips = torch.rand(k, bits, generator=g) < 0.05 + 0.2 * torch.rand(1, generator=g)
        x[i, torch.randperm(int(x_count[i]), generator=g)[:k]] = torch.where(flips, -source, source)
    return q, padding_mask(q_count, n_query), x, padding_mask(x_count, n_db), target


def _positions_of(images: np.ndarray, ids: list[int]) -> np.ndarray:
    """Where each of ``ids`` is in the sorted unique ``images``."""
    return np.searchsorted(images, np.asarray(ids, dtype=np.int64))


def frozen_model(cfg: RerankerTrainConfig) -> RetrievalModel:
    """The retrieval model whose features the reranker reads, in eval mode; frozen on purpose: AMES reranks a given
    model's shortlist, and this run trains the reranker only."""
    model = create_model(
        cfg.method, backbone=cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights, **cfg.model_kwargs
    )
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def train_reranker(
    cfg: RerankerTrainConfig,
    *,
    model: RetrievalModel | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a reranker (module docstring) into ``cfg.out_dir``; returns the run's summary (also in ``summary.json``).

    ``model``: the frozen retrieval model (default :func:`frozen_model` of ``cfg``). ``resume`` continues from
    ``checkpoint.pt``; a folder holding one is refused unless ``resume`` or ``overwrite``.
    """
    out = Path(cfg.out_dir)
    check_run_folder(out, resume, overwrite)
    t0 = time.perf_counter()
    model = frozen_model(cfg) if model is None else model
    data = _prepare(cfg, model, progress)
    run = _Run(cfg, data, data.positions.features.shape[1])
    out.mkdir(parents=True, exist_ok=True)
    log = out / "metrics.jsonl"
    if resume:
        run.load(out / CHECKPOINT)
        truncate_log(log, run.step)
    else:
        run.init_weights()
        log.unlink(missing_ok=True)
    cfg.to_yaml(out / "config.yaml")
    run.model.train()
    record: dict[str, Any] = {}
    t_train = time.perf_counter()
    with tqdm(total=cfg.steps, initial=run.step, desc="train reranker", unit="step", disable=not progress) as bar:
        while run.step < cfg.steps:
            record = run.train_step()
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                with open(log, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
                run.save(out / CHECKPOINT)
    train_seconds = time.perf_counter() - t_train
    run.model.eval()
    fingerprint = model_fingerprint(model)
    meta = {
        "backbone_fingerprint": fingerprint,
        "backbone_config": dict(model.config),
        "extract_settings": cfg.extract_config().settings(),
        "train_config": cfg.to_dict(),
        "holdout_labels": sorted({int(v) for v in data.labels[data.holdout]}),
    }
    path = out / RERANKER
    save_reranker(run.model, path, meta)  # without λ, γ: chosen next, with this file
    selection = select_weights(path, data, cfg)
    save_reranker(run.model, path, meta | {"lam": selection["lam"], "gamma": selection["gamma"]})
    write_json(out / "selection.json", selection)
    summary = {
        "steps": run.step,
        "last": record,
        "train_seconds": round(train_seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "lam": selection["lam"],
        "gamma": selection["gamma"],
        "holdout_map": {"initial": selection["initial_map"], "reranked": selection["best_map"]},
        "bytes_per_db_image": run.model.config.bytes_per_db_image,
        "reranker_sha256": sha256_file(path),
    }
    write_json(out / "summary.json", summary)
    return summary


def select_weights(reranker: str | os.PathLike, data: _Data, cfg: RerankerTrainConfig) -> dict[str, Any]:
    """Choose (λ, γ) on the held-out landmarks: each held-out image queries every training image (itself excluded as
    junk, its landmark's other images positive); the global ranking's top ``M`` is reranked by
    :func:`irlib.eval.rerank.learned_rerank` for every (λ, γ) of :data:`LAMBDAS` x :data:`GAMMAS`; the best mAP wins
    (ties: the larger λ, then the smaller γ). Returns the grid and the choice (mAP in percent)."""
    model = load_reranker(reranker)[0]
    sha = sha256_file(reranker)
    positions = data.positions
    queries = select_codes(model, (positions.image(i) for i in data.holdout), cfg.n_query)
    database = select_codes(model, (positions.image(i) for i in range(len(positions))), cfg.n_db)
    q, x = data.descriptors[data.holdout], data.descriptors
    gnd = [
        {"ok": np.flatnonzero((data.labels == data.labels[i]) & (np.arange(len(x)) != i)), "junk": [i]}
        for i in data.holdout
    ]
    ranks = np.argsort(-(x @ q.T), axis=0, kind="stable")
    result = learned_rerank(
        q,
        x,
        reranker=os.fspath(reranker),
        M=cfg.M,
        lam=0.0,
        gamma=1.0,
        ranks=ranks,
        query_locals=dataclasses.replace(queries, source=sha),
        database_locals=dataclasses.replace(database, source=sha),
    )
    m = min(cfg.M, len(x))
    shortlist = ranks[:m].T
    grid = []
    for lam in LAMBDAS:
        for gamma in GAMMAS:
            combined = lam * result.details["global"] + (1 - lam) / (1 + np.exp(-gamma * result.details["logits"]))
            order = np.argsort(-combined, axis=1, kind="stable")
            head = np.take_along_axis(shortlist, order, axis=1).T
            grid.append({"lam": lam, "gamma": gamma, "map": 100 * compute_map(np.vstack([head, ranks[m:]]), gnd)[0]})
    best = max(grid, key=lambda g: (round(g["map"], 6), g["lam"], -g["gamma"]))
    return {
        "queries": len(data.holdout),
        "database": len(x),
        "M": m,
        "initial_map": 100 * compute_map(ranks, gnd)[0],
        "best_map": best["map"],
        "lam": best["lam"],
        "gamma": best["gamma"],
        "grid": grid,
    }


def demo_config(demo_dir: str | os.PathLike = "data/demo", **overrides: Any) -> RerankerTrainConfig:
    """The demo run: the pretrained GeM/EfficientNet-Lite0 of notebook 03 (384 px, 3 scales), the demo training split
    (generated if absent) minus its planted test-overlap landmarks (``demo_info.json``)."""
    root = make_demo_data(demo_dir, progress=False)
    overlap = json.loads((root / "demo_info.json").read_text())["overlap_landmarks"]
    defaults = {
        "data_dir": str(root),
        "exclude": sorted(int(k) for k in overlap),
        "out_dir": "runs/ames_demo",
        "cache_dir": "runs/ames_demo/cache",
    }
    return RerankerTrainConfig(**(defaults | overrides))


def demo_study(demo_dir: str | os.PathLike = "data/demo", *, progress: bool = True, **overrides: Any) -> pd.DataFrame:
    """:func:`reranker_study` of :func:`demo_config` on the demo test set."""
    cfg = demo_config(demo_dir, **overrides)
    return reranker_study(cfg, RevisitedDataset.from_dir(Path(cfg.data_dir) / "demo"), progress=progress)


def reranker_study(cfg: RerankerTrainConfig, dataset: RevisitedDataset, *, progress: bool = True) -> pd.DataFrame:
    """Notebook 07's comparison: the reranker of ``cfg`` (:func:`trained_reranker`: trained, resumed or reused), then
    :func:`irlib.eval.rerank_comparison.compare_rerankers` of no reranking, α-QE, SuperGlobal and the learned reranker
    on ``dataset``, with the extraction settings of the training."""
    model = frozen_model(cfg)
    reranker = trained_reranker(cfg, model=model, progress=progress)
    return compare_rerankers(model, dataset, reranker, cfg.extract_config(), cache_dir=cfg.cache_dir, progress=progress)


def trained_reranker(cfg: RerankerTrainConfig, *, model: RetrievalModel | None = None, progress: bool = True) -> Path:
    """The reranker file of ``cfg``'s run folder: reused when the folder's ``config.yaml`` equals ``cfg`` and it holds
    one, the run resumed when it holds only a checkpoint, else trained from scratch (a folder of another configuration
    is overwritten)."""
    out = Path(cfg.out_dir)
    same = (out / "config.yaml").is_file() and RerankerTrainConfig.from_yaml(out / "config.yaml") == cfg
    if not same or not (out / RERANKER).is_file():
        resume = same and (out / CHECKPOINT).is_file()
        train_reranker(cfg, model=model, resume=resume, overwrite=not resume, progress=progress)
    return out / RERANKER
