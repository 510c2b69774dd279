"""Rerankers compared in one run on the same descriptors: none, α-QE, SuperGlobal and a learned (AMES) reranker.

One extraction of the global descriptors (:func:`irlib.eval.pipeline.evaluate_model`), then each reranking of the same
ranking (:func:`irlib.eval.pipeline.rescore`), so the rows differ by the reranking alone. The table records what each
costs: database bytes per image (global descriptor, plus the learned reranker's binary local descriptors) and the
seconds of search + reranking + metrics (the local descriptors' extraction reported apart).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from irlib.data.revisited import RevisitedDataset
from irlib.eval.extract import ExtractConfig
from irlib.eval.local_features import DatasetLocals
from irlib.eval.pipeline import evaluate_model, rescore
from irlib.eval.revisited import PROTOCOLS
from irlib.models.base import RetrievalModel

ALPHA_QE: dict[str, Any] = {"k": 2, "alpha": 3.0}
"""α-QE's parameters in the comparison (Radenović et al.'s α = 3; two neighbours)."""
SUPERGLOBAL: dict[str, Any] = {"M": 100}
"""SuperGlobal's parameters in the comparison: the learned reranker's shortlist (M = 100), K = 9 and β = 0.15 (the
paper's M is 400)."""
LEARNED: dict[str, Any] = {"M": 100}
"""The learned reranker's: AMES's main-table shortlist of 100; λ and γ from the reranker file."""


def compare_rerankers(
    model: RetrievalModel,
    dataset: RevisitedDataset,
    reranker: str | os.PathLike,
    cfg: ExtractConfig = ExtractConfig(),
    *,
    cache_dir: str | os.PathLike | None = None,
    alpha_qe: Mapping[str, Any] = ALPHA_QE,
    superglobal: Mapping[str, Any] = SUPERGLOBAL,
    learned: Mapping[str, Any] = LEARNED,
    progress: bool = True,
) -> pd.DataFrame:
    """E/M/H mAP (percent) of no reranking, α-QE, SuperGlobal and the learned reranker in file ``reranker``.

    Returns:
        one row per reranking (``none``, ``alpha_qe``, ``superglobal``, ``learned``) with columns ``easy``,
        ``medium``, ``hard`` (mAP), ``db_bytes_per_image`` (what the database stores per image for that row),
        ``seconds`` (search, reranking and metrics); ``table.attrs["metrics"]`` holds each row's metrics.json
        content and ``table.attrs["local_extract_seconds"]`` the local descriptors' extraction time.
    """
    plain = evaluate_model(model, dataset, cfg, cache_dir=cache_dir, progress=progress)
    locals_ = DatasetLocals(model, dataset, reranker, cfg, cache_dir=cache_dir, progress=progress)
    t0 = time.perf_counter()
    locals_.queries()
    locals_.database(np.arange(dataset.n_db))
    extract_seconds = time.perf_counter() - t0
    global_bytes = int(plain.database[:1].nbytes)
    runs = {"none": (plain, global_bytes)}
    for name, method, params, extra in (
        ("alpha_qe", "alpha_qe", alpha_qe, 0),
        ("superglobal", "superglobal", superglobal, 0),
        (
            "learned",
            "learned",
            {"reranker": os.fspath(reranker), **learned},
            locals_.reranker.config.bytes_per_db_image,
        ),
    ):
        runs[name] = (
            rescore(plain, dataset, rerank=method, rerank_params=params, local_descriptors=locals_),
            global_bytes + extra,
        )
    rows = {
        name: {
            **{p: result.metrics[p]["map"] for p in PROTOCOLS},
            "db_bytes_per_image": size,
            "seconds": result.metrics["settings"]["seconds"]["search_rerank_and_metrics"],
        }
        for name, (result, size) in runs.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.attrs["metrics"] = {name: result.metrics for name, (result, _) in runs.items()}
    table.attrs["local_extract_seconds"] = round(extract_seconds, 3)
    return table
