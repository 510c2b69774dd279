"""Expert switching from models (:func:`run_experts`): extract each model's descriptors of a UnED benchmark and of a
sample of its training split, build the experts (trained models, and per-domain whitenings of the universal model),
evaluate every system with :func:`irlib.experts.evaluate.evaluate_experts` and save the run folder."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from irlib.data.uned import image_domains, uned_knn, uned_split
from irlib.eval.extract import ExtractConfig, extract_cached, extract_descriptors, model_fingerprint, preset
from irlib.eval.pipeline import prepare_out_dir
from irlib.eval.universal import Benchmark, evaluate_benchmark, uned_benchmark
from irlib.experts.evaluate import ExpertsReport, evaluate_experts, save_report
from irlib.experts.experts import Expert, ExpertSet
from irlib.experts.routers import ROUTERS, Router, RouterTraining
from irlib.experts.whitening import whitened_expert
from irlib.models import create_model

DEFAULT_ROUTERS: dict[str, dict[str, Any]] = {
    "oracle": {},
    "classifier": {},
    "confidence": {"measure": "margin"},
    "confidence-entropy": {"router": "confidence", "measure": "entropy"},
    "gating": {},
    "gating-soft": {"router": "gating", "soft": True},
}
"""System name -> router options (``"router"``: its :data:`~irlib.experts.routers.ROUTERS` name, default the system
name)."""


@dataclass
class ExpertSpec:
    """A trained model used as an expert, or as the universal model: ``create_model(method, backbone=...,
    pretrained=..., weights=..., **model_kwargs)``, serving ``domains`` (none for a generalist)."""

    name: str = "universal"
    domains: Sequence[str] = ()
    method: str = "gem"
    backbone: str = "efficientnet_lite0"
    pretrained: bool = False
    weights: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ExpertsConfig:
    """One expert-switching run; saved in its ``metrics.json`` (``settings.config``).

    Attributes:
        uned_root, domains: the UnED root (``info_files/``, ``images/``) and its domains (None: all 8).
        k: UnED's kNN depth (mMP@k, mAP@k).
        universal: the universal model: a baseline, the shared embedding routers read, and (``fallback``) the
            fallback expert.
        experts: trained models serving given domains.
        whitening: options of :func:`irlib.experts.whitening.whitened_expert` (``shrinkage``, ``dim``): one expert
            per domain, ``lw-<domain>``, the universal descriptors whitened on that domain's training images; None:
            none.
        fallback: the expert serving domains without one and queries routed away; None: such a domain is an error.
        routers: system name -> router options (:data:`DEFAULT_ROUTERS`).
        far_quantile: the far-from-every-domain test (see :func:`~irlib.experts.evaluate.evaluate_experts`).
        train_per_domain, train_per_class: the router-training sample: up to ``train_per_domain`` images of each
            domain's training split, up to ``train_per_class`` of each class (random classes), so that classes keep
            positives for the gating loss.
        image_size: UnED's extraction (preset ``uned``: shorter side, centre crop) at this size.
        timing_queries: query images each model embeds on the CPU, one at a time, to measure ms per query.
        cache_dir: the descriptor cache (:class:`irlib.eval.extract.FeatureCache`); None: none.
        out_dir: the run folder.
    """

    uned_root: str = ""
    domains: Sequence[str] | None = None
    k: int = 5
    universal: ExpertSpec = field(default_factory=lambda: ExpertSpec(pretrained=True))
    experts: Sequence[ExpertSpec] = ()
    whitening: Mapping[str, Any] | None = field(default_factory=lambda: {"shrinkage": 0.3})
    fallback: str | None = "universal"
    routers: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: dict(DEFAULT_ROUTERS))
    far_quantile: float | None = None
    train_per_domain: int = 500
    train_per_class: int = 4
    image_size: int = 224
    timing_queries: int = 16
    cache_dir: str | None = None
    out_dir: str = "runs/experts"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.uned_root:
            raise ValueError("ExpertsConfig.uned_root is empty: give the UnED root (data/demo/uned for the demo)")
        if not self.experts and self.whitening is None:
            raise ValueError("no experts: list trained models in ExpertsConfig.experts or set whitening")
        if self.train_per_domain < 2 or self.train_per_class < 2 or self.timing_queries < 1:
            raise ValueError("train_per_domain and train_per_class must be >= 2 and timing_queries >= 1")


def build_routers(options: Mapping[str, Mapping[str, Any]]) -> dict[str, Router]:
    """System name -> unfitted router from :attr:`ExpertsConfig.routers`-style options."""
    routers = {}
    for system, opts in options.items():
        kwargs = dict(opts)
        routers[system] = ROUTERS.get(kwargs.pop("router", system))(**kwargs)
    return routers


def run_experts(cfg: ExpertsConfig, *, progress: bool = True, overwrite: bool = False) -> ExpertsReport:
    """Build the experts of ``cfg``, evaluate every system on UnED's merged test protocol and save the run folder
    ``cfg.out_dir`` (refused when it holds files, unless ``overwrite``)."""
    out = prepare_out_dir(cfg.out_dir, force=overwrite)
    knn = uned_knn(cfg.uned_root, cfg.domains)
    bench = uned_benchmark(knn, k=cfg.k)
    train = uned_split(cfg.uned_root, knn.domains, "train")
    domain_of = np.array(train.info["domains"])[image_domains(train)]
    rows = sample_classes(domain_of, train.labels, cfg.train_per_domain, cfg.train_per_class, cfg.seed)
    train_images = [train.paths[i] for i in rows]
    extract = preset("uned", image_size=cfg.image_size)
    built = [_model_expert(spec, bench, train_images, extract, cfg, progress) for spec in (cfg.universal, *cfg.experts)]
    if cfg.whitening is not None:
        built += [
            whitened_expert(built[0], d, domain_of[rows], train.labels[rows], **cfg.whitening) for d in knn.domains
        ]
    experts = ExpertSet(built, fallback=cfg.fallback)
    training = RouterTraining(
        embedding=built[0].train,
        domains=domain_of[rows],
        labels=train.labels[rows],
        experts={e.name: e.train for e in experts},
    )
    report = evaluate_experts(
        knn,
        experts,
        build_routers(cfg.routers),
        training,
        universal=cfg.universal.name,
        k=cfg.k,
        far_quantile=cfg.far_quantile,
        progress=progress,
    )
    report.metrics["backbone"] = cfg.universal.backbone
    report.metrics["settings"] |= {"config": asdict(cfg), **extract.settings()}
    save_report(report, out)
    return report


def sample_classes(
    domains: np.ndarray, labels: np.ndarray, per_domain: int, per_class: int, seed: int = 0
) -> np.ndarray:
    """Sorted rows of up to ``per_domain`` images of each domain: up to ``per_class`` images of each of its classes,
    classes in a seeded random order (a domain with fewer images gives them all)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for d in np.unique(domains):
        rows = np.flatnonzero(domains == d)
        picked: list[np.ndarray] = []
        count = 0
        for c in rng.permutation(np.unique(labels[rows])):
            if count >= per_domain:
                break
            members = rng.permutation(rows[labels[rows] == c])[: min(per_class, per_domain - count)]
            picked.append(members)
            count += len(members)
        chosen += picked
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def _model_expert(
    spec: ExpertSpec,
    bench: Benchmark,
    train_images: Sequence[Path],
    extract: ExtractConfig,
    cfg: ExpertsConfig,
    progress: bool,
) -> Expert:
    """An expert from a model: its descriptors of the benchmark (:func:`evaluate_benchmark`, through the cache)
    and of the training sample, its parameter count and CPU ms per query."""
    model = create_model(
        spec.method, backbone=spec.backbone, pretrained=spec.pretrained, weights=spec.weights, **spec.model_kwargs
    )
    result = evaluate_benchmark(model, bench, extract, cache_dir=cfg.cache_dir, progress=progress)
    train = extract_cached(
        model,
        list(train_images),
        None,
        extract,
        cache_dir=cfg.cache_dir,
        desc=f"{spec.name} training images",
        dataset="uned-train",
        progress=progress,
    )
    timing = list(bench.query_images[: cfg.timing_queries])
    t0 = time.perf_counter()
    extract_descriptors(model, timing, cfg=replace(extract, device="cpu", batch_size=1), progress=False)
    embed_ms = (time.perf_counter() - t0) * 1000 / len(timing)
    return Expert(
        name=spec.name,
        domains=tuple(spec.domains),
        queries=result.queries,
        database=result.database,
        train=train,
        parameters=sum(p.numel() for p in model.parameters()),
        embed_ms=embed_ms,
        info={"model": dict(model.config), "state_dict_sha256": model_fingerprint(model)},
    )
