"""Evaluations of the universal benchmarks, run like the revisited ones: UnED, ILIAS (and mini-ILIAS), GLDv2 retrieval.

A :class:`Benchmark` says what an evaluation needs of a dataset: the query and database images, how deep each query's
ranking must be, which (query, database) groups are searched, and how a ranking is scored. :func:`evaluate_benchmark`
extracts (with the feature cache, or reading the database from a sharded extraction as for +1M), ranks with
:func:`irlib.eval.search.exact_top_k` or a faiss shortlist (never a dense ``(n_queries, N)`` matrix) and scores, into
the same :class:`irlib.eval.result.EvalResult`, ``metrics.json``, ``per_query.csv`` and ``run.json`` as a revisited
evaluation. The builders :func:`uned_benchmark`, :func:`ilias_benchmark` and :func:`gldv2_benchmark` follow each
benchmark's official protocol (``datasets.md`` §4, §6, §7).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from irlib.data.gldv2 import GLDv2Retrieval, gldv2_retrieval_solution
from irlib.data.ilias import DISTRACTOR_DIR, IliasDataset
from irlib.data.registry import load_dataset
from irlib.data.uned import UnEDKnn
from irlib.eval.extract import ExtractConfig, extract_cached, model_fingerprint
from irlib.eval.metrics import (
    ILIAS_CLUTTER_GROUPS,
    ILIAS_SCALE_GROUPS,
    gldv2_map_at_k,
    ilias_map_at_k,
    ilias_report,
    uned_per_query,
)
from irlib.eval.result import EvalResult
from irlib.eval.search import ShortlistSearch, exact_top_k
from irlib.eval.search import search_params as fill_search_params
from irlib.eval.shards import load_features, paths_fingerprint, read_meta
from irlib.io import sha256_file, write_json
from irlib.models import method_label
from irlib.models.base import RetrievalModel
from irlib.provenance import library_versions
from irlib.registry import Registry

Scorer = Callable[[np.ndarray, np.ndarray], tuple[dict[str, Any], pd.DataFrame]]
"""``(ids, scores)`` of the ranking, both ``(n_queries, depth)`` best first -> (metrics in percent, per-query table)."""


@dataclass(frozen=True, eq=False)
class Benchmark:
    """What :func:`evaluate_benchmark` needs of a dataset.

    Attributes:
        name: the dataset label recorded with the run (``uned``, ``ilias``, ``mini-ilias``, ``gldv2-retrieval``).
        protocol: the protocol's name (``uned-merged``, ``uned-separate``, ``ilias``, ``gldv2-retrieval``).
        query_images, database_images: image paths (or tar members) in query and database order.
        query_names: one name per query (the rows of ``per_query.csv``).
        depth: ranking length each query needs (UnED: k + 1 where the query is in the index).
        scorer: scores a ranking (see :data:`Scorer`).
        query_boxes: per query an ``x1 y1 x2 y2`` box to crop to, or None (full images).
        query_in_database: ``(n_queries,)`` database row of each query that is a database image (its descriptor is
            taken from there, not extracted twice), -1 for the others; None: no query is.
        groups: ``(query rows, database rows)`` searched separately (UnED's separate protocol: one per domain); the
            ranking's ids are database rows either way. None: every query against the whole database.
        info: what a run records of the dataset (counts, splits, checksums of the lists read).
        preset: the extraction preset of the benchmark's official protocol (:data:`irlib.eval.extract.PRESETS`), or
            None where there is none (the command line uses it unless ``--preset`` is given).
    """

    name: str
    protocol: str
    query_images: Sequence[Any]
    database_images: Sequence[Any]
    query_names: list[str]
    depth: int
    scorer: Scorer
    query_boxes: Sequence[Sequence[float] | None] | None = None
    query_in_database: np.ndarray | None = None
    groups: list[tuple[np.ndarray, np.ndarray]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None


def evaluate_benchmark(
    model: RetrievalModel,
    bench: Benchmark,
    cfg: ExtractConfig = ExtractConfig(),
    *,
    cache_dir: str | os.PathLike | None = None,
    database_features: str | os.PathLike | None = None,
    search: str = "exact",
    search_params: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Extract, rank and score ``bench`` with ``model``: an :class:`~irlib.eval.result.EvalResult` whose metrics
    are in percent and whose ``ranks`` are the ``(n_queries, depth)`` database ids (best first).

    ``database_features``: a folder of ``python -m irlib extract`` (sharded, resumable) holding the database
    descriptors of these images with this model and settings. ``search``: ``"exact"`` (:func:`exact_top_k`, ties by
    the lower id as the official UnED code) or ``"faiss-flat"`` / ``"ivfpq"`` (a shortlist of at least ``depth``,
    re-scored exactly; ``search_params`` as :func:`irlib.eval.search.search_params`).
    """
    t0 = time.perf_counter()
    fingerprint = model_fingerprint(model)
    if database_features is not None:
        x = _database_features(database_features, fingerprint, cfg, bench)
    else:
        x = extract_cached(
            model,
            bench.database_images,
            None,
            cfg,
            cache_dir=cache_dir,
            desc=f"{bench.name} database",
            dataset=bench.name,
            progress=progress,
        )
    q = _query_descriptors(model, bench, cfg, x, cache_dir, progress)
    seconds = {"extract": round(time.perf_counter() - t0, 3)}
    model_config = dict(model.config)
    result = score_descriptors(bench, q, x, search=search, search_params=search_params)
    settings = result.metrics["settings"]
    settings |= {
        **cfg.settings(),
        "model": model_config,
        "normalization": dict(model.data_config),
        "database_features": str(database_features) if database_features is not None else None,
        "weights_sha256": _weights_sha256(model_config),
        "state_dict_sha256": fingerprint,
        "device": str(cfg.resolved_device()),
        "seconds": seconds | settings["seconds"],
    }
    result.metrics |= {
        "method": method_label(model_config) or type(model).__name__,
        "backbone": model_config.get("backbone"),
    }
    return result


def score_descriptors(
    bench: Benchmark,
    queries: np.ndarray,
    database: np.ndarray,
    *,
    search: str = "exact",
    search_params: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Rank and score given descriptors ``queries (n_queries, D)`` and ``database (N, D)`` of ``bench`` (e.g. read
    from the official UnED descriptor JSON, :func:`read_uned_descriptors`); what :func:`evaluate_benchmark` does
    after extraction. The metrics record no model (``method`` and ``backbone`` are None)."""
    if len(queries) != len(bench.query_images) or len(database) != len(bench.database_images):
        raise ValueError(
            f"{bench.name} has {len(bench.query_images)} queries and {len(bench.database_images)} database images, "
            f"got descriptors {np.shape(queries)} and {np.shape(database)}"
        )
    t0 = time.perf_counter()
    params = fill_search_params(search, search_params)
    scores, ids = _rank(queries, database, bench, search, params)
    metrics, per_query = bench.scorer(ids, scores)
    record = {
        "dataset": bench.name,
        "benchmark": bench.protocol,
        "method": None,
        "backbone": None,
        "metrics": metrics,
        "settings": {
            "n_queries": len(queries),
            "n_db": len(database),
            "depth": bench.depth,
            "search": {"method": search, "params": params},
            "rerank": None,
            "dataset_info": bench.info,
            "versions": library_versions(),
            "seconds": {"search_and_metrics": round(time.perf_counter() - t0, 3)},
        },
    }
    return EvalResult(record, per_query, queries, database, None, ids)


def _weights_sha256(model_config: Mapping[str, Any]) -> str | None:
    return sha256_file(model_config["weights"]) if model_config.get("weights") else None


def _query_descriptors(
    model: RetrievalModel,
    bench: Benchmark,
    cfg: ExtractConfig,
    database: np.ndarray,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> np.ndarray:
    """Query descriptors: rows of ``database`` for queries that are database images, extracted for the others."""
    inside = bench.query_in_database if bench.query_in_database is not None else np.full(len(bench.query_images), -1)
    out = np.empty((len(bench.query_images), database.shape[1]), dtype=database.dtype)
    known = inside >= 0
    out[known] = database[inside[known]]
    rest = np.flatnonzero(~known)
    if rest.size:
        boxes = None if bench.query_boxes is None else [bench.query_boxes[i] for i in rest]
        out[rest] = extract_cached(
            model,
            [bench.query_images[i] for i in rest],
            boxes,
            cfg,
            cache_dir=cache_dir,
            desc=f"{bench.name} queries",
            dataset=bench.name,
            progress=progress,
        )
    return out


def _rank(
    q: np.ndarray, x: np.ndarray, bench: Benchmark, search: str, params: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` ``(n_queries, depth)`` of every search group, ids as rows of the whole database."""
    groups = bench.groups or [(np.arange(len(q)), np.arange(len(x)))]
    depth = min(bench.depth, min(len(rows) for _, rows in groups))
    scores = np.full((len(q), depth), -np.inf, dtype=np.float32)
    ids = np.full((len(q), depth), -1, dtype=np.int64)
    for query_rows, db_rows in groups:
        whole = len(db_rows) == len(x)
        part = x if whole else x[db_rows]
        if search == "exact":
            s, i = exact_top_k(q[query_rows], part, depth)
        else:
            shortlist = max(depth, params.get("shortlist", depth))
            s, i, _ = ShortlistSearch(part, search, {**params, "shortlist": shortlist})(q[query_rows])
            s, i = s[:, :depth], i[:, :depth]
        scores[query_rows], ids[query_rows] = s, (i if whole else db_rows[i])
    return scores, ids


def _database_features(folder: str | os.PathLike, fingerprint: str, cfg: ExtractConfig, bench: Benchmark) -> np.ndarray:
    """The memory-mapped database descriptors of a sharded extraction, checked to be of these images, this model
    and these settings."""
    meta = read_meta(folder)
    if meta["model"] != fingerprint:
        raise ValueError(f"{folder} holds descriptors of other model weights than the model evaluated")
    if meta["paths_sha256"] != paths_fingerprint(bench.database_images):
        raise ValueError(f"{folder} holds descriptors of other images than the database of {bench.name}")
    differ = [
        k for k, v in cfg.settings().items() if k not in ("crop_queries", "crop_mode") and meta["settings"].get(k) != v
    ]
    if differ:
        raise ValueError(f"{folder} was extracted with other settings ({', '.join(differ)}) than this evaluation")
    return load_features(folder)


def _percent(v: float) -> float:
    return round(float(v) * 100, 4)


# --- UnED ---------------------------------------------------------------------------------------------------------


def uned_benchmark(knn: UnEDKnn, *, k: int = 5, protocol: str = "merged") -> Benchmark:
    """The UnED kNN benchmark (``knn_utils.py``): ``protocol="merged"`` (every domain's queries against the
    concatenated index; a hit needs the label and the domain) or ``"separate"`` (each domain against its own index).

    R@1, mMP@k and mAP@k per domain and averaged over domains, in percent, unrounded; ``official_rounded`` holds the
    numbers as the official script prints them (fractions, each domain rounded to 3 decimals, then their mean). A
    query of a domain whose query split is its index split is found in the index and its first neighbour thrown
    away, as the official code does."""
    if protocol not in ("merged", "separate"):
        raise ValueError(f"UnED protocol must be 'merged' or 'separate', got {protocol!r}")
    throws = any(knn.throw_first.values())
    groups = None
    if protocol == "separate":
        groups = [(np.flatnonzero(knn.query_domains == d), np.flatnonzero(knn.index_domains == d)) for d in knn.domains]

    def score(ids: np.ndarray, scores: np.ndarray) -> tuple[dict[str, Any], pd.DataFrame]:
        per = uned_per_query(
            ids,
            knn.query_labels,
            knn.query_domains,
            knn.index_labels,
            knn.index_domains,
            knn.throw_first,
            k=k,
            ranks=True,
            protocol=protocol,
        )
        res = per.metrics()
        names = ["R@1", f"mMP@{k}", f"mAP@{k}"]
        metrics: dict[str, Any] = {name: _percent(res[name]) for name in names}
        metrics["per_domain"] = {d: {name: _percent(res[f"{d}/{name}"]) for name in names} for d in knn.domains}
        metrics["official_rounded"] = per.metrics(decimals=3)
        per_query = pd.DataFrame(
            {
                "domain": knn.query_domains,
                "R@1": per.r1 * 100.0,
                f"MP@{k}": per.mp * 100,
                f"AP@{k}": per.ap * 100,
                "n_relevant": per.n_rel,
            },
            index=pd.Index(_names(knn.query_paths), name="query"),
        )
        return metrics, per_query

    return Benchmark(
        name="uned" if knn.split == "test" else f"uned-{knn.split}",
        protocol=f"uned-{protocol}",
        query_images=list(knn.query_paths),
        database_images=list(knn.index_paths),
        query_names=_names(knn.query_paths),
        depth=k + int(throws),
        scorer=score,
        query_in_database=knn.query_in_index,
        groups=groups,
        info=knn.info | {"k": k, "protocol": protocol},
    )


def write_uned_descriptors(knn: UnEDKnn, queries: np.ndarray, database: np.ndarray, path: str | os.PathLike) -> None:
    """Write descriptors in the official own-descriptor format (``README.md`` "Evaluate your own descriptors"):
    ``{domain: {split: [[float, ...], ...]}}``, each split's rows in its info file's order; a domain whose query
    split is its index split has one entry. The official ``descr_eval.py`` reads it with the same info files."""
    out: dict[str, dict[str, list]] = {}
    for d in knn.domains:
        query_split, index_split = knn.info["splits"][d]
        out[d] = {index_split: np.asarray(database[knn.index_domains == d], dtype=np.float32).tolist()}
        if query_split != index_split:
            out[d][query_split] = np.asarray(queries[knn.query_domains == d], dtype=np.float32).tolist()
    write_json(path, out)


def read_uned_descriptors(knn: UnEDKnn, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(queries, database)`` float32 descriptors of ``knn`` from an official own-descriptor JSON (see
    :func:`write_uned_descriptors`); each domain's splits must have the info files' lengths and one width."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable UnED descriptor JSON ({err})") from None
    queries, database = [], []
    for d in knn.domains:
        query_split, index_split = knn.info["splits"][d]
        for split, side, n in (
            (index_split, database, knn.info["index_images"][d]),
            (query_split, queries, knn.info["queries"][d]),
        ):
            rows = data.get(d, {}).get(split) if isinstance(data, dict) and isinstance(data.get(d), dict) else None
            if rows is None:
                raise ValueError(f"{path} has no descriptors for {d}/{split} (expected {{domain: {{split: [...]}}}})")
            array = np.asarray(rows, dtype=np.float32)
            if array.ndim != 2 or len(array) != n:
                raise ValueError(f"{path}: {d}/{split} must be {n} descriptors of one size, got shape {array.shape}")
            side.append(array)
    widths = {a.shape[1] for a in queries + database}
    if len(widths) != 1:
        raise ValueError(f"{path}: descriptors of different sizes {sorted(widths)}")
    return np.concatenate(queries), np.concatenate(database)


def _names(paths: Sequence[Any]) -> list[str]:
    return [str(p) for p in paths]


# --- ILIAS --------------------------------------------------------------------------------------------------------


def ilias_benchmark(
    ds: IliasDataset,
    *,
    k: int = 1000,
    name: str = "ilias",
    query_boxes: bool = False,
    taxonomy: Mapping[str, Any] | None = None,
) -> Benchmark:
    """ILIAS image-to-image retrieval (``evaluation/src/dataset.py``): the image queries against the positives and
    distractors (queries are never in the database), mAP@k (k = 1000) as the official code computes it, in percent.

    With the official id lists read (``ds.id_files``: each positive's scale and clutter) and the ``taxonomy``
    (``misc/taxonomy.json``), the official report too: oracle, per scale and clutter group, per (sub)category, and
    per query the group APs; the ranking is then ``k + max |gt|`` deep, so that the groups, which drop the other
    groups' positives, see what a full ranking gives. Queries are full images (the paper's global setting);
    ``query_boxes`` crops each to the first box of its bbox file."""
    queries = list(ds.image_queries)
    query_ids = [q.id for q in queries]
    positives = ds.ground_truth(queries)
    db_ids = ds.database_ids()
    positive_info = ds.id_files.positive_info if ds.id_files is not None else None
    report = positive_info is not None and taxonomy is not None

    def score(ids: np.ndarray, scores: np.ndarray) -> tuple[dict[str, Any], pd.DataFrame]:
        index = pd.Index(query_ids, name="query")
        if not report:
            aps = [ilias_map_at_k(scores[i : i + 1], [positives[i]], k, ids=ids[i : i + 1]) for i in range(len(ids))]
            return {f"mAP@{k}": _percent(np.mean(aps))}, pd.DataFrame({f"AP@{k}": np.array(aps) * 100}, index=index)
        rep = ilias_report(scores, query_ids, db_ids, positive_info, taxonomy, k=k, ids=ids)
        metrics = {f"mAP@{k}": round(rep.map, 4), "oracle": round(rep.oracle, 4)} | {
            group: {key: round(v, 4) for key, v in getattr(rep, group).items()}
            for group in ("scale", "clutter", "categories", "subcategories")
        }
        columns = {f"AP@{k}": rep.aps}
        for group, thresholds, aps in (
            ("scale", ILIAS_SCALE_GROUPS, rep.scale_aps),
            ("clutter", ILIAS_CLUTTER_GROUPS, rep.clutter_aps),
        ):
            columns |= {f"{group} {t1}-{t2}": aps[:, j] for j, (t1, t2) in enumerate(thresholds)}
        return metrics, pd.DataFrame(columns, index=index)

    boxes = [q.boxes[0].tolist() for q in queries] if query_boxes else None
    most = max(len(p) for p in positives) if report else 0
    return Benchmark(
        name=name,
        protocol="ilias",
        query_images=[ds.path(q) for q in query_ids],
        database_images=ds.database_images(),
        query_names=query_ids,
        depth=k + most,
        scorer=score,
        query_boxes=boxes,
        info={
            "source": name,
            "instances": len(ds.instances),
            "image_queries": len(queries),
            "positives": len(ds.positives),
            "distractors": len(ds.distractor_ids),
            "k": k,
            "query_boxes": query_boxes,
            "report": report,
        },
        preset="ilias",
    )


# --- GLDv2 retrieval ----------------------------------------------------------------------------------------------


def gldv2_benchmark(ds: GLDv2Retrieval, *, k: int = 100) -> Benchmark:
    """GLDv2 retrieval (DELF ``metrics.MeanAveragePrecision``, the Kaggle metric): the Public and Private test queries
    of the solution against the index, mAP@100 on each split, ``Ignored`` rows never scored."""
    usage = {
        q: u
        for u in ("Private", "Public")
        for q in gldv2_retrieval_solution(ds.root / "retrieval_solution_v2.1.csv", (u,))
    }
    queries = ds.query_ids

    def score(ids: np.ndarray, scores: np.ndarray) -> tuple[dict[str, Any], pd.DataFrame]:
        aps = np.array(
            [
                gldv2_map_at_k({q: [ds.index_ids[j] for j in row]}, {q: ds.solution[q]}, k)
                for q, row in zip(queries, ids, strict=True)
            ]
        )
        split = np.array([usage[q] for q in queries])
        metrics = {
            f"{u.lower()} mAP@{k}": _percent(aps[split == u].mean())
            for u in ("Private", "Public")
            if (split == u).any()
        }
        per_query = pd.DataFrame({"usage": split, f"AP@{k}": aps * 100}, index=pd.Index(queries, name="query"))
        return metrics, per_query

    return Benchmark(
        name="gldv2-retrieval",
        protocol="gldv2-retrieval",
        query_images=ds.query_paths(),
        database_images=ds.index_paths(),
        query_names=queries,
        depth=k,
        scorer=score,
        info={"source": "gldv2-retrieval", "index": len(ds.index_ids), "queries": len(queries), "k": k},
    )


# --- by name ------------------------------------------------------------------------------------------------------

BENCHMARKS: Registry[Callable[..., Benchmark]] = Registry("benchmark")
"""Benchmark name -> ``builder(root, **options)``: the dataset loaded by name (:func:`irlib.data.load_dataset`)
and wrapped in its official protocol."""


@BENCHMARKS.register("uned")
def _uned(
    root: str | os.PathLike, *, domains: Sequence[str] | None = None, protocol: str = "merged", k: int = 5
) -> Benchmark:
    return uned_benchmark(load_dataset("uned-knn", root, domains=domains), k=k, protocol=protocol)


@BENCHMARKS.register("ilias")
def _ilias(root: str | os.PathLike, *, query_boxes: bool = False, k: int = 1000) -> Benchmark:
    return _ilias_from(root, "ilias", query_boxes=query_boxes, k=k)


@BENCHMARKS.register("mini-ilias")
def _mini_ilias(root: str | os.PathLike, *, query_boxes: bool = False, k: int = 1000) -> Benchmark:
    return _ilias_from(root, "mini-ilias", query_boxes=query_boxes, k=k)


def _ilias_from(root: str | os.PathLike, name: str, **options: Any) -> Benchmark:
    """ILIAS from the download layout ``<root>/ilias/``: ``ilias_core/``, the official ``image_ids/`` lists and
    ``misc/taxonomy.json`` when present (for the report), the distractor shards in ``yfcc100m/`` (``ilias``: every
    shard there; ``mini-ilias``: those of its id list)."""
    folder = Path(root) / "ilias"
    kwargs: dict[str, Any] = {"id_dir": folder / "image_ids"} if (folder / "image_ids").is_dir() else {}
    if name == "ilias" and (folder / DISTRACTOR_DIR).is_dir():
        kwargs["distractor_shards"] = DISTRACTOR_DIR
    ds = load_dataset(name, root, **kwargs)
    taxonomy_file = folder / "misc" / "taxonomy.json"
    taxonomy = None
    if taxonomy_file.is_file():
        try:
            taxonomy = json.loads(taxonomy_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{taxonomy_file} is not a readable ILIAS taxonomy ({err})") from None
    return ilias_benchmark(ds, name=name, taxonomy=taxonomy, **options)


@BENCHMARKS.register("gldv2-retrieval")
def _gldv2(root: str | os.PathLike, *, k: int = 100) -> Benchmark:
    return gldv2_benchmark(load_dataset("gldv2-retrieval", root), k=k)


def load_benchmark(name: str, root: str | os.PathLike, /, **options: Any) -> Benchmark:
    """The universal benchmark ``name`` (``uned``, ``ilias``, ``mini-ilias``, ``gldv2-retrieval``) read from the
    download root (or the demo folder); ``options`` go to its builder (e.g. ``protocol="separate"`` for UnED)."""
    return BENCHMARKS.get(name)(root, **options)
