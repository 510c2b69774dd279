"""One evaluation run on a revisited dataset: extract, score, Easy/Medium/Hard metrics, ``metrics.json``."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import irlib
from irlib.data.revisited import RevisitedDataset
from irlib.eval.extract import ExtractConfig, extract_revisited, model_fingerprint
from irlib.eval.rerank import alpha_dba, rerank_scores, reranker_params
from irlib.eval.revisited import PROTOCOLS, evaluate
from irlib.eval.search import StackedDatabase, database_scores, similarity
from irlib.eval.shards import load_features, read_meta
from irlib.io import atomic_path, sha256_file, write_json
from irlib.results.runs import eval_record, write_run


@dataclass
class EvalResult:
    """What one evaluation produced.

    Attributes:
        metrics: the content of ``metrics.json`` (mAP and mP@k in percent, settings).
        per_query: AP in percent per query (rows, by query name) and protocol (columns); NaN = no positive.
        queries: query descriptors ``(n_queries, D)``.
        database: database descriptors ``(n_db, D)``; with distractor features a :class:`StackedDatabase` of the
            test descriptors and the memory-mapped distractors.
        scores: ``(n_queries, n_db)`` scores used for ranking (after reranking, when one was chosen).
    """

    metrics: dict[str, Any]
    per_query: pd.DataFrame
    queries: np.ndarray
    database: np.ndarray
    scores: np.ndarray


def evaluate_model(
    model: nn.Module,
    dataset: RevisitedDataset,
    cfg: ExtractConfig = ExtractConfig(),
    *,
    kappas: Sequence[int] = (1, 5, 10),
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    rerank: str | None = None,
    rerank_params: Mapping[str, Any] | None = None,
    dba: Mapping[str, Any] | None = None,
    distractor_features: str | os.PathLike | None = None,
    distractor_name: str = "1m",
) -> EvalResult:
    """Extract descriptors with ``model``, rank the database by inner product and compute E/M/H metrics.

    ``distractor_features``: a folder written by :func:`irlib.eval.shards.extract_sharded` (``python -m irlib
    extract``) with the same model and settings; its memory-mapped descriptors join the database after the test
    images (``<name>+1m``), searched in blocks of rows and never copied whole.

    ``rerank``: a reranker of :data:`irlib.eval.rerank.RERANKERS` with ``rerank_params`` (defaults filled in and
    recorded); its shortlist comes from the descriptors only. ``dba``: ``{"k": ..., "alpha": ...}`` replaces the
    database descriptors by their αDBA augmentation before search (``O(N² D)``).
    """
    t0 = time.perf_counter()
    distractors, meta = (
        _distractor_features(distractor_features, model, cfg, dataset) if distractor_features else (None, {})
    )
    q, x = extract_revisited(model, dataset, cfg, cache_dir=cache_dir, progress=progress)
    seconds = {"extract": round(time.perf_counter() - t0, 3)}
    if distractors is not None:
        x = StackedDatabase(x, distractors)
        dataset = replace(dataset, distractor_name=distractor_name)
    model_config = dict(getattr(model, "config", {}))
    metrics: dict[str, Any] = {
        "dataset": dataset.label,
        "method": model_config.get("method", type(model).__name__),
        "backbone": model_config.get("backbone"),
        "settings": {
            **cfg.settings(),
            "model": model_config,
            "normalization": dict(model.data_config),
            "kappas": list(kappas),
            "n_queries": dataset.n_queries,
            "n_db": len(x),
            "distractor_features": (
                {"dir": str(distractor_features), "n": len(distractors), "paths_sha256": meta["paths_sha256"]}
                if distractors is not None
                else None
            ),
            "dataset_dir": str(dataset.root),
            "gnd_sha256": sha256_file(dataset.gnd_path),
            "weights_sha256": sha256_file(model_config["weights"]) if model_config.get("weights") else None,
            "device": str(cfg.resolved_device()),
            "versions": {"irlib": irlib.__version__, "torch": torch.__version__, "python": platform.python_version()},
            "seconds": seconds,
        },
    }
    return _score(EvalResult(metrics, pd.DataFrame(), q, x, np.empty((0, 0))), dataset, rerank, rerank_params, dba)


def rescore(
    result: EvalResult,
    dataset: RevisitedDataset,
    *,
    rerank: str | None = None,
    rerank_params: Mapping[str, Any] | None = None,
    dba: Mapping[str, Any] | None = None,
) -> EvalResult:
    """The descriptors of ``result`` evaluated again with another reranking (or none): no extraction, and the same
    recorded settings apart from ``rerank``, ``dba`` and the timing."""
    return _score(result, dataset, rerank, rerank_params, dba)


def _score(
    result: EvalResult,
    dataset: RevisitedDataset,
    rerank: str | None,
    rerank_params: Mapping[str, Any] | None,
    dba: Mapping[str, Any] | None,
) -> EvalResult:
    """Search (after αDBA), rerank and evaluate ``result``'s descriptors; a new result with updated metrics."""
    t0 = time.perf_counter()
    q, x = result.queries, result.database
    if dba and isinstance(x, StackedDatabase):
        raise ValueError("αDBA costs O(N² D): it is not run over distractor features; evaluate without dba")
    searched = alpha_dba(x, **dba) if dba else x
    scores = database_scores(q, searched) if isinstance(searched, StackedDatabase) else similarity(q, searched)
    if rerank:
        rerank_params = reranker_params(rerank, rerank_params)
        scores = rerank_scores(rerank, scores, q, searched, rerank_params)
    kappas = result.metrics["settings"]["kappas"]
    res = evaluate(dataset.gnd, scores=scores, kappas=kappas)
    settings = result.metrics["settings"] | {
        "rerank": {"method": rerank, "params": dict(rerank_params or {})} if rerank else None,
        "dba": dict(dba) if dba else None,
    }
    settings["seconds"] = settings["seconds"] | {"search_rerank_and_metrics": round(time.perf_counter() - t0, 3)}
    metrics = result.metrics | {"settings": settings} | protocol_metrics(res, kappas)
    per_query = pd.DataFrame({p: res[p]["aps"] * 100 for p in PROTOCOLS}, index=pd.Index(dataset.qimlist, name="query"))
    return EvalResult(metrics, per_query, q, x, scores)


def _distractor_features(
    folder: str | os.PathLike, model: nn.Module, cfg: ExtractConfig, dataset: RevisitedDataset
) -> tuple[np.ndarray, dict[str, Any]]:
    """The memory-mapped distractor descriptors of ``folder`` and its meta, checked to come from this model and
    settings."""
    if dataset.distractors:
        raise ValueError(f"{dataset.label} already has distractor images; pass either them or distractor features")
    meta = read_meta(folder)
    if meta["model"] != model_fingerprint(model):
        raise ValueError(f"{folder} holds descriptors of other model weights than the model evaluated")
    image_fields = [k for k in cfg.settings() if k not in ("crop_queries", "crop_mode", "fp16")]
    differ = [k for k in image_fields if meta["settings"].get(k) != cfg.settings()[k]]
    if differ:
        raise ValueError(f"{folder} was extracted with other settings ({', '.join(differ)}) than this evaluation")
    return load_features(folder), meta


def protocol_metrics(res: Mapping[str, Mapping[str, Any]], kappas: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """``{protocol: {"map", "mp@k"}}`` in percent from :func:`irlib.eval.revisited.evaluate`'s result."""
    return {
        p: {
            "map": _percent(res[p]["map"]),
            "mp@k": {str(k): _percent(v) for k, v in zip(kappas, res[p]["mp@k"], strict=True)},
        }
        for p in PROTOCOLS
        if p in res
    }


def _percent(v: float) -> float | None:
    """Fraction -> percent rounded to 4 decimals; NaN (no query with positives) -> None (JSON null)."""
    return None if np.isnan(v) else round(float(v) * 100, 4)


def prepare_out_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Create the run folder; refuse an existing non-empty one unless ``force``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"output folder {out} exists and is not empty; choose another or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_result(result: EvalResult, out: str | os.PathLike) -> None:
    """Write ``metrics.json``, ``per_query.csv`` and the run record ``run.json`` (:mod:`irlib.results`) into ``out``
    (atomically)."""
    out = Path(out)
    write_json(out / "metrics.json", result.metrics)
    with atomic_path(out / "per_query.csv") as tmp:
        result.per_query.to_csv(tmp, float_format="%.4f")
    write_run(out, eval_record(result.metrics, out))


def summary_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run (name -> metrics.json content): mAP and mP@k per protocol, in percent."""
    rows = {}
    for name, m in runs.items():
        row: dict[tuple[str, str], Any] = {}
        for p in PROTOCOLS:
            if p in m:
                row[(p, "mAP")] = m[p]["map"]
                for k, v in m[p]["mp@k"].items():
                    row[(p, f"mP@{k}")] = v
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table
