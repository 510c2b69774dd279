"""One evaluation run on a revisited dataset: extract, search, rerank, Easy/Medium/Hard metrics, ``metrics.json``.

:func:`evaluate_model` extracts and evaluates; :func:`rescore` evaluates the same descriptors again with another
search or reranking; both rank with :func:`search_database` (the function benchmarks time) and compute the metrics
with :meth:`Ranking.evaluate`.

Searches (:data:`irlib.eval.search.SEARCHES`): ``"exact"`` scores the whole database, so the metrics are those of
the full ranking. ``"faiss-flat"`` and ``"ivfpq"`` keep each query's top ``shortlist`` (re-scored exactly) and the
metrics come from that truncated ranking, on which irlib's evaluator (as revisitop's ``compute_map``) treats an image
beyond the shortlist as never retrieved: a positive there adds nothing to AP but still counts in its divisor, so AP
is the full ranking's minus those positives' terms (equal when every positive is in the shortlist); junk beyond it
changes nothing (it only shifts later positives). mP@k equals the full ranking's when the shortlist holds every
positive or a positive beyond position ``k`` (junk removed); otherwise revisitop's divisor ``min(k, position of the
last retrieved positive)`` can make it larger.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from irlib.data.revisited import RevisitedDataset
from irlib.eval.extract import ExtractConfig, extract_revisited, model_fingerprint
from irlib.eval.local_features import DatasetLocals
from irlib.eval.metrics import top_k_ids
from irlib.eval.records import eval_record
from irlib.eval.rerank import (
    ATTENTION_RERANKERS,
    BATCH_DEPENDENT_RERANKERS,
    LOCAL_RERANKERS,
    QUERY_EXPANSIONS,
    LocalDescriptors,
    RerankInputs,
    alpha_dba,
    batch_attention,
    expand_queries,
    rerank_ids,
    rerank_scores,
    reranker_inputs,
    reranker_params,
    shortlist_depth,
)
from irlib.eval.result import EvalResult
from irlib.eval.revisited import PROTOCOLS, evaluate
from irlib.eval.search import (
    ShortlistSearch,
    StackedDatabase,
    database_scores,
    recall_at_k,
    similarity,
)
from irlib.eval.search import search_params as fill_search_params
from irlib.eval.shards import load_features, read_meta
from irlib.eval.universal import Benchmark, evaluate_benchmark
from irlib.io import atomic_path, sha256_file, write_json
from irlib.models import method_label
from irlib.models.base import RetrievalModel
from irlib.provenance import library_versions, write_run


@dataclass
class Ranking:
    """The outcome of :func:`search_database`.

    Attributes:
        scores: exact search: ``(n_queries, n_db)`` float32, ranked descending, ties by lower id; else None.
        ids: shortlist search: ``(n_queries, L)`` database ids, best first; else None.
        search: what a run records of the search: ``{"method", "params"}``, and for ``"ivfpq"`` ``"recall@100"``:
            ``{"k": min(100, n_db), "ranking": ..., "index_order": ...}``, the mean fraction of the exact top-k
            found in the top-k of the ranking evaluated (IVF-PQ's shortlist re-scored exactly, before reranking)
            and of IVF-PQ's own order.
        rerank: ``{"method", "params"}`` (defaults filled in) or None.
        n_db: the database size.
    """

    scores: np.ndarray | None
    ids: np.ndarray | None
    search: dict[str, Any]
    rerank: dict[str, Any] | None
    n_db: int

    def evaluate(self, gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
        """E/M/H metrics of this ranking (:func:`irlib.eval.revisited.evaluate`), truncated for a shortlist."""
        if self.scores is not None:
            return evaluate(gnd, scores=self.scores, kappas=kappas)
        return evaluate(gnd, ranks=self.ids.T, kappas=kappas, n_db=self.n_db)


def search_database(
    queries: np.ndarray,
    database: np.ndarray | StackedDatabase,
    *,
    search: str = "exact",
    search_params: Mapping[str, Any] | None = None,
    rerank: str | None = None,
    rerank_params: Mapping[str, Any] | None = None,
    local_descriptors: LocalDescriptors | None = None,
    rerank_inputs: RerankInputs | None = None,
) -> Ranking:
    """Rank ``database (N, D)`` for ``queries (n_q, D)`` by inner product with ``search``, then rerank.

    ``search``: ``"exact"`` (chunked scores of the whole database), ``"faiss-flat"`` or ``"ivfpq"`` (top
    ``shortlist`` from a faiss index, re-scored exactly; ``search_params`` as
    :func:`irlib.eval.search.search_params`). For ``"ivfpq"`` the exact top-100 is computed too and recall@100
    recorded. ``rerank``: a reranker of :data:`irlib.eval.rerank.RERANKERS`; it reorders the search's shortlist
    (query expansion searches again the same way), reading only the shortlisted database rows. What a reranker reads
    besides descriptors comes as ``rerank_inputs`` (:func:`irlib.eval.rerank.reranker_inputs`), which the record
    describes: ``local_descriptors`` for :data:`irlib.eval.rerank.LOCAL_RERANKERS`,
    ``irlib.eval.rerank.batch_attention(model)`` for :data:`irlib.eval.rerank.ATTENTION_RERANKERS`. The record of a
    reranker of :data:`irlib.eval.rerank.BATCH_DEPENDENT_RERANKERS` says ``"batch_dependent": True``.
    """
    params = fill_search_params(search, search_params)
    rerank_record = {"method": rerank, "params": reranker_params(rerank, rerank_params)} if rerank else None
    inputs = reranker_inputs(rerank, rerank_inputs, local_descriptors) if rerank else None
    if rerank in BATCH_DEPENDENT_RERANKERS:
        rerank_record["batch_dependent"] = True
    if inputs is not None:
        rerank_record |= inputs.record()
    record: dict[str, Any] = {"method": search, "params": params}
    if search == "exact":
        stacked = isinstance(database, StackedDatabase)
        scores = database_scores(queries, database) if stacked else similarity(queries, database)
        if rerank:
            scores = rerank_scores(rerank, scores, queries, database, rerank_record["params"], inputs=inputs)
        return Ranking(scores, None, record, rerank_record, scores.shape[1])
    searcher = ShortlistSearch(database, search, params)
    _, ids, index_ids = searcher(queries)
    if search == "ivfpq":
        record["recall@100"] = _recall_at_100(queries, database, ids, index_ids)
    if rerank:
        ids = _rerank_shortlist(rerank, rerank_record["params"], queries, database, ids, searcher, inputs)
    return Ranking(None, ids, record, rerank_record, len(database))


def _recall_at_100(
    queries: np.ndarray, database: np.ndarray | StackedDatabase, ids: np.ndarray, index_ids: np.ndarray
) -> dict[str, float | int]:
    """Recall@min(100, N) of ``ids`` and ``index_ids`` ``(n_q, L)`` against the exact top (full scores)."""
    k = min(100, len(database))
    if ids.shape[1] < k:
        raise ValueError(f"ivfpq measures recall@100 against exact search: shortlist must be at least {k}")
    exact = top_k_ids(database_scores(queries, database), k)
    return {"k": k, "ranking": recall_at_k(ids, exact, k), "index_order": recall_at_k(index_ids, exact, k)}


def _rerank_shortlist(
    method: str,
    params: Mapping[str, Any],
    queries: np.ndarray,
    database: np.ndarray | StackedDatabase,
    ids: np.ndarray,
    searcher: ShortlistSearch,
    inputs: RerankInputs | None,
) -> np.ndarray:
    """Reranked ``ids (n_q, L)``: shortlist rerankers reorder the first ``min(M, L)`` and keep the rest; query
    expansion expands from the first ``k`` and searches again with ``searcher``."""
    top = ids[:, : shortlist_depth(method, params)]
    if method in QUERY_EXPANSIONS:
        if not top.shape[1]:  # nothing to expand with: the order is unchanged
            return ids
        return searcher(expand_queries(method, queries, database, top, params))[1]
    head = rerank_ids(method, queries, database, top, params, inputs=inputs)
    return np.concatenate([head, ids[:, top.shape[1] :]], axis=1)


def evaluate_model(
    model: RetrievalModel,
    dataset: RevisitedDataset | Benchmark,
    cfg: ExtractConfig = ExtractConfig(),
    *,
    kappas: Sequence[int] = (1, 5, 10),
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    search: str = "exact",
    search_params: Mapping[str, Any] | None = None,
    rerank: str | None = None,
    rerank_params: Mapping[str, Any] | None = None,
    dba: Mapping[str, Any] | None = None,
    distractor_features: str | os.PathLike | None = None,
    distractor_name: str = "r1m",
    local_descriptors: LocalDescriptors | None = None,
    rerank_inputs: RerankInputs | None = None,
) -> EvalResult:
    """Extract descriptors with ``model``, rank the database by inner product and compute E/M/H metrics.

    ``distractor_features``: a folder written by :func:`irlib.eval.shards.extract_sharded` (``python -m irlib
    extract``) with the same model and settings; its memory-mapped descriptors join the database after the test
    images (``<name>+r1m``), searched in blocks of rows and never copied whole.

    ``search`` / ``search_params``: :data:`irlib.eval.search.SEARCHES` (see :func:`search_database` and the module
    docstring on truncated rankings). ``rerank``: a reranker of :data:`irlib.eval.rerank.RERANKERS` with
    ``rerank_params`` (defaults filled in and recorded); it reranks the search's shortlist, which comes from the
    descriptors only; ``rerank="learned"`` (``rerank_params={"reranker": PATH, ...}``) also reads the images' local
    descriptors, extracted with the model and the reranker (:class:`irlib.eval.local_features.DatasetLocals`, cached
    in ``cache_dir``) unless ``local_descriptors`` gives them; ``rerank="shortlist_attention"`` (batch-dependent:
    a pair's score depends on the rest of the shortlist) runs the model's own trained batch attention over each
    query's shortlist (:func:`irlib.eval.rerank.batch_attention`; a model without one raises ValueError) unless
    ``rerank_inputs`` gives another. ``dba``: ``{"k": ..., "alpha": ...}`` replaces the database descriptors by their
    αDBA augmentation before search (``O(N² D)``). The settings record the weights file's checksum
    (``weights_sha256``, None without a file) and ``state_dict_sha256``, :func:`irlib.eval.extract.model_fingerprint`
    of the model evaluated (built-in pretrained weights included).

    A universal benchmark (:class:`irlib.eval.universal.Benchmark`: UnED, ILIAS, GLDv2 retrieval) is evaluated by
    :func:`irlib.eval.universal.evaluate_benchmark` with ``cfg``, ``cache_dir``, ``search`` and ``search_params``;
    reranking, αDBA and distractor features apply to revisited datasets only.
    """
    if isinstance(dataset, Benchmark):
        if rerank or dba or distractor_features:
            raise ValueError(
                f"{dataset.name}: reranking, alpha-DBA and distractor features apply to revisited datasets; the "
                f"{dataset.protocol} protocol scores the descriptors' own ranking"
            )
        return evaluate_benchmark(
            model, dataset, cfg, cache_dir=cache_dir, search=search, search_params=search_params, progress=progress
        )
    if rerank in LOCAL_RERANKERS and local_descriptors is None and rerank_inputs is None:
        reranker = reranker_params(rerank, rerank_params)["reranker"]
        local_descriptors = DatasetLocals(model, dataset, reranker, cfg, cache_dir=cache_dir, progress=progress)
    if rerank in ATTENTION_RERANKERS and local_descriptors is None and rerank_inputs is None:
        rerank_inputs = batch_attention(model)
    inputs = reranker_inputs(rerank, rerank_inputs, local_descriptors) if rerank else None
    t0 = time.perf_counter()
    fingerprint = model_fingerprint(model)
    distractors, meta = (
        _distractor_features(distractor_features, fingerprint, cfg, dataset) if distractor_features else (None, {})
    )
    q, x = extract_revisited(model, dataset, cfg, cache_dir=cache_dir, progress=progress)
    seconds = {"extract": round(time.perf_counter() - t0, 3)}
    if distractors is not None:
        x = StackedDatabase(x, distractors)
        dataset = replace(dataset, distractor_name=distractor_name)
    model_config = dict(model.config)
    metrics: dict[str, Any] = {
        "dataset": dataset.label,
        "method": method_label(model_config) or type(model).__name__,
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
            "state_dict_sha256": fingerprint,
            "device": str(cfg.resolved_device()),
            "versions": library_versions(),
            "seconds": seconds,
        },
    }
    result = EvalResult(metrics, pd.DataFrame(), q, x, None)
    return _score(result, dataset, search, search_params, rerank, rerank_params, dba, inputs)


def rescore(
    result: EvalResult,
    dataset: RevisitedDataset,
    *,
    search: str | None = None,
    search_params: Mapping[str, Any] | None = None,
    rerank: str | None = None,
    rerank_params: Mapping[str, Any] | None = None,
    dba: Mapping[str, Any] | None = None,
    local_descriptors: LocalDescriptors | None = None,
    rerank_inputs: RerankInputs | None = None,
) -> EvalResult:
    """The descriptors of ``result`` evaluated again with another search (``None``: ``result``'s search and its
    parameters) and reranking (or none): no extraction, and the same recorded settings apart from ``search``,
    ``rerank``, ``dba`` and the timing. ``local_descriptors``: what a reranker of
    :data:`irlib.eval.rerank.LOCAL_RERANKERS` reads (:class:`irlib.eval.local_features.DatasetLocals`);
    ``rerank_inputs``: what another reranker reads, e.g. ``irlib.eval.rerank.batch_attention(model)`` for
    ``rerank="shortlist_attention"`` (batch-dependent; the model that extracted ``result``)."""
    if search is None:
        recorded = result.metrics["settings"]["search"]
        search, search_params = recorded["method"], recorded["params"]
    inputs = reranker_inputs(rerank, rerank_inputs, local_descriptors) if rerank else None
    return _score(result, dataset, search, search_params, rerank, rerank_params, dba, inputs)


def _score(
    result: EvalResult,
    dataset: RevisitedDataset,
    search: str,
    search_params: Mapping[str, Any] | None,
    rerank: str | None,
    rerank_params: Mapping[str, Any] | None,
    dba: Mapping[str, Any] | None,
    inputs: RerankInputs | None = None,
) -> EvalResult:
    """Search (after αDBA), rerank and evaluate ``result``'s descriptors; a new result with updated metrics."""
    t0 = time.perf_counter()
    q, x = result.queries, result.database
    if dba and isinstance(x, StackedDatabase):
        raise ValueError("αDBA costs O(N² D): it is not run over distractor features; evaluate without dba")
    searched = alpha_dba(x, **dba) if dba else x
    ranking = search_database(
        q,
        searched,
        search=search,
        search_params=search_params,
        rerank=rerank,
        rerank_params=rerank_params,
        rerank_inputs=inputs,
    )
    kappas = result.metrics["settings"]["kappas"]
    res = ranking.evaluate(dataset.gnd, kappas)
    settings = result.metrics["settings"] | {
        "search": ranking.search,
        "rerank": ranking.rerank,
        "dba": dict(dba) if dba else None,
    }
    settings["seconds"] = settings["seconds"] | {"search_rerank_and_metrics": round(time.perf_counter() - t0, 3)}
    metrics = result.metrics | {"settings": settings} | protocol_metrics(res, kappas)
    per_query = pd.DataFrame({p: res[p]["aps"] * 100 for p in PROTOCOLS}, index=pd.Index(dataset.qimlist, name="query"))
    return EvalResult(metrics, per_query, q, x, ranking.scores, ranking.ids)


def _distractor_features(
    folder: str | os.PathLike, fingerprint: str, cfg: ExtractConfig, dataset: RevisitedDataset
) -> tuple[np.ndarray, dict[str, Any]]:
    """The memory-mapped distractor descriptors of ``folder`` and its meta, checked to come from the model with
    ``fingerprint`` (:func:`irlib.eval.extract.model_fingerprint`) and these settings."""
    if dataset.distractors:
        raise ValueError(f"{dataset.label} already has distractor images; pass either them or distractor features")
    meta = read_meta(folder)
    if meta["model"] != fingerprint:
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
    """One row per run (name -> metrics.json content), in percent: mAP and mP@k per protocol of a revisited run, the
    headline metrics of a universal benchmark (``(benchmark, metric)`` columns, e.g. ``("uned-merged", "R@1")``)."""
    rows = {}
    for name, m in runs.items():
        row: dict[tuple[str, str], Any] = {}
        for p in PROTOCOLS:
            if p in m:
                row[(p, "mAP")] = m[p]["map"]
                for k, v in m[p]["mp@k"].items():
                    row[(p, f"mP@{k}")] = v
        if "benchmark" in m:
            row |= {(m["benchmark"], key): v for key, v in m["metrics"].items() if not isinstance(v, Mapping)}
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table
