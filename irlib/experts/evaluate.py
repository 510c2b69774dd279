"""Expert switching evaluated on UnED: the universal model, every single expert and every router, in one run.

:func:`evaluate_experts` searches each expert's index once for every query (the single-expert baselines, and the
top-k scores the confidence router reads), fits and applies each router, searches every query where its router sends
it (:meth:`ExpertIndex.search_routed`) and scores each system's ranking with UnED's official merged-protocol scorer
(:func:`irlib.eval.universal.uned_benchmark`), so every number is UnED's. Per system it reports R@1, mMP@k and mAP@k
(averaged and per domain), routing accuracy (the chosen expert against the expert of the query's true domain), the
fallback rate and the cost: parameters (and those added to the universal model's), bytes of the indexes it keeps, and
CPU ms per query to embed (the shared embedding and the experts it runs), route and search, measured with
``time.perf_counter`` over all queries at once (per-query times of a batch). :func:`save_report` writes
``metrics.json``, ``per_query.csv`` and ``run.json`` (:func:`irlib.results.load_runs` reads it); :func:`systems_table`
is the table of a report or of a saved ``metrics.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from irlib.data.uned import UnEDKnn
from irlib.eval.records import eval_record
from irlib.eval.universal import Benchmark, uned_benchmark
from irlib.experts.experts import Expert, ExpertIndex, ExpertSet
from irlib.experts.routers import Decision, DomainSupport, Router, RouterInputs, RouterTraining
from irlib.io import atomic_path, write_json
from irlib.provenance import library_versions, write_run


@dataclass
class ExpertsReport:
    """The outcome of :func:`evaluate_experts`.

    Attributes:
        metrics: the content of ``metrics.json``: ``metrics[system]`` holds ``kind`` (universal, expert, router),
            the scorer's ``R@1``, ``mMP@k``, ``mAP@k``, ``per_domain`` and ``official_rounded``, ``routing``
            (``accuracy``, ``per_domain``, ``fallback_rate`` in percent, ``experts_used``; None for a single model)
            and ``cost`` (``parameters``, ``parameters_added``, ``index_bytes``, ``ms_per_query``: ``embed``,
            ``route``, ``search``, ``total``; ``embed`` and ``total`` None where an expert's time is unknown).
        per_query: one row per (system, query): the scorer's columns, ``expert`` searched (``"mixture"`` for a soft
            one), its ``target``, ``confidence``, ``fallback`` and ``support`` (cosine to the nearest training
            domain, where the far-from-every-domain test runs).
        decisions: router system -> its :class:`Decision`.
    """

    metrics: dict[str, Any]
    per_query: pd.DataFrame
    decisions: dict[str, Decision]

    def table(self) -> pd.DataFrame:
        """:func:`systems_table` of this report."""
        return systems_table(self.metrics)


def evaluate_experts(
    knn: UnEDKnn,
    experts: ExpertSet,
    routers: Mapping[str, Router],
    training: RouterTraining | None = None,
    *,
    universal: str,
    router_embedding: str | None = None,
    k: int = 5,
    far_quantile: float | None = None,
    progress: bool = True,
) -> ExpertsReport:
    """Evaluate the universal model ``universal``, every expert alone and every router (system name -> unfitted
    router, e.g. ``{"oracle": OracleRouter(), ...}``) on the merged UnED benchmark ``knn``.

    ``router_embedding``: the expert whose descriptors are the shared embedding routers read (default
    ``universal``). ``training``: what the learned routers and the far-from-every-domain test learn from.
    ``far_quantile``: a query whose cosine to the nearest domain mean (in the shared embedding) is below this
    quantile of the training images' own values goes to the fallback expert, for every router but the oracle
    (:class:`~irlib.experts.routers.DomainSupport`); None: no such test.
    """
    t_start = time.perf_counter()
    bench = uned_benchmark(knn, k=k)
    embedding_name = router_embedding or universal
    _check(bench, experts, routers, universal, embedding_name)
    if far_quantile is not None and (training is None or experts.fallback is None):
        raise ValueError("the far-from-every-domain test needs router training data and a fallback expert")
    index = ExpertIndex(experts)
    targets = experts.targets(knn.query_domains)
    names = experts.names
    rankings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    search_ms: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    tables = []
    for name in tqdm(names, desc="expert indexes", unit="expert", disable=not progress):
        t0 = time.perf_counter()
        rankings[name] = index.search(name, experts[name].queries, bench.depth)
        search_ms[name] = _ms_per_query(t0, len(targets))
        scores, per_query = bench.scorer(rankings[name][1], rankings[name][0])
        cost = _single_cost(experts, index, name, search_ms[name])
        kind = "universal" if name == universal else "expert"
        metrics[name] = {"kind": kind, **scores, "routing": None, "cost": cost}
        tables.append(_rows(per_query, name, np.full(len(targets), name), targets, names))
    support = DomainSupport(training, far_quantile) if far_quantile is not None else None
    inputs = RouterInputs(
        embedding=experts[embedding_name].queries,
        domains=knn.query_domains,
        expert_scores={e: _scores_without_self(*rankings[e], bench.query_in_database, k) for e in names},
    )
    decisions: dict[str, Decision] = {}
    fit_seconds: dict[str, float] = {}
    for system, router in tqdm(routers.items(), desc="routers", unit="router", disable=not progress):
        t0 = time.perf_counter()
        router.fit(experts, training, progress=progress)
        fit_seconds[system] = round(time.perf_counter() - t0, 3)
        metrics[system], table, decisions[system] = _routed_system(
            system, router, bench, experts, index, inputs, support, embedding_name, search_ms
        )
        tables.append(table)
    base = metrics[universal]["cost"]["parameters"]
    for entry in metrics.values():
        entry["cost"]["parameters_added"] = entry["cost"]["parameters"] - base
    fit_total = sum(fit_seconds.values())
    settings = {
        "n_queries": len(targets),
        "n_db": len(bench.database_images),
        "depth": bench.depth,
        "universal": universal,
        "router_embedding": embedding_name,
        "fallback": experts.fallback,
        "far_quantile": far_quantile,
        "far_threshold": support.threshold if support is not None else None,
        "experts": {e.name: _expert_record(e, index) for e in experts},
        "routers": {
            s: r.options() | {"parameters": r.parameters, "fit_seconds": fit_seconds[s]} for s, r in routers.items()
        },
        "router_training_images": len(training.labels) if training is not None else 0,
        "dataset_info": bench.info,
        "versions": library_versions(),
        "seconds": {
            "fit_routers": round(fit_total, 3),
            "search_route_and_metrics": round(time.perf_counter() - t_start - fit_total, 3),
        },
    }
    record = {
        "dataset": bench.name,
        "benchmark": bench.protocol,
        "method": "experts",
        "backbone": None,
        "metrics": metrics,
        "settings": settings,
    }
    return ExpertsReport(record, pd.concat(tables).set_index(["system", "query"]), decisions)


def _check(bench: Benchmark, experts: ExpertSet, routers: Mapping[str, Router], universal: str, embedding: str) -> None:
    """Every expert describes this benchmark's images; system names are distinct."""
    for e in experts:
        if len(e.queries) != len(bench.query_images) or len(e.database) != len(bench.database_images):
            raise ValueError(
                f"expert {e.name!r} describes {len(e.queries)} queries and {len(e.database)} database images; the "
                f"benchmark has {len(bench.query_images)} and {len(bench.database_images)}"
            )
    unknown = [n for n in (universal, embedding) if n not in experts.names]
    if unknown:
        raise ValueError(
            f"no expert named {unknown[0]!r} (the universal model or the router embedding): {experts.names}"
        )
    clash = sorted(set(routers) & set(experts.names))
    if clash:
        raise ValueError(f"router systems {clash} are named like experts: every system needs its own name")


def _routed_system(
    system: str,
    router: Router,
    bench: Benchmark,
    experts: ExpertSet,
    index: ExpertIndex,
    inputs: RouterInputs,
    support: DomainSupport | None,
    embedding: str,
    search_ms: Mapping[str, float],
) -> tuple[dict[str, Any], pd.DataFrame, Decision]:
    """Route (timed, with the far-from-every-domain test unless the router is the oracle), search where routed
    (timed) and score one fitted router: its ``metrics.json`` entry, per-query rows and decision."""
    n = len(inputs.embedding)
    far_test = support is not None and router.kind != "oracle"
    t0 = time.perf_counter()
    closeness = support(inputs.embedding) if far_test else None
    decision = router.decide(inputs, None if closeness is None else closeness < support.threshold)
    route_ms = _ms_per_query(t0, n)
    queries = [experts[e].queries for e in experts.names]
    t0 = time.perf_counter()
    scores, ids = index.search_routed(decision.weights, queries, bench.depth)
    routed_ms = _ms_per_query(t0, n)
    result, per_query = bench.scorer(ids, scores)
    cost = _router_cost(experts, index, router, decision, embedding, support if far_test else None)
    embed_ms = cost["ms_per_query"]["embed"]
    cost["ms_per_query"] = _times(embed_ms, route_ms, _search_ms(experts, router, decision, search_ms, routed_ms))
    targets = experts.targets(inputs.domains)
    entry = {
        "kind": "router",
        **result,
        "routing": _routing(decision, targets, inputs.domains, experts.names),
        "cost": cost,
    }
    names = np.array(experts.names)
    searched = np.where(decision.weights.max(1) == 1, names[decision.choice], "mixture")
    return entry, _rows(per_query, system, searched, targets, experts.names, decision, closeness), decision


def _expert_record(expert: Expert, index: ExpertIndex) -> dict[str, Any]:
    """What a run records of an expert."""
    return {
        "domains": list(expert.domains),
        "dim": expert.dim,
        "parameters": expert.parameters,
        "embed_ms": expert.embed_ms,
        "requires": list(expert.requires),
        "index_bytes": index.nbytes([expert.name]),
        "info": dict(expert.info),
    }


def _ms_per_query(t0: float, n: int) -> float:
    return (time.perf_counter() - t0) * 1000 / max(n, 1)


def _times(embed: float | None, route: float, search: float) -> dict[str, float | None]:
    total = None if embed is None else embed + route + search
    return {"embed": embed, "route": route, "search": search, "total": total}


def _single_cost(experts: ExpertSet, index: ExpertIndex, name: str, search_ms: float) -> dict[str, Any]:
    return {
        "parameters": experts.parameters([name]),
        "index_bytes": index.nbytes([name]),
        "ms_per_query": _times(experts.embed_ms([name]), 0.0, search_ms),
    }


def _router_cost(
    experts: ExpertSet,
    index: ExpertIndex,
    router: Router,
    decision: Decision,
    embedding: str,
    support: DomainSupport | None,
) -> dict[str, Any]:
    """Parameters and index bytes of what the routed system keeps (the shared embedding where it reads it, every
    routable expert, the fallback, the router, the domain means of the far test ``support``), and the mean time to
    embed what each query runs (``ms_per_query["embed"]``)."""
    base = [embedding] if router.needs_embedding or support is not None else []
    kept = experts.routable + ([experts.fallback] if experts.fallback else [])
    names = np.array(experts.names)
    everyone = set(experts.routable) if router.searches_all else set()
    runs = [tuple(sorted(set(base) | everyone | {names[c]})) for c in decision.choice]
    times = {used: experts.embed_ms(list(used)) for used in set(runs)}
    embed = None if any(t is None for t in times.values()) else float(np.mean([times[u] for u in runs]))
    extra = support.means.size if support is not None else 0
    return {
        "parameters": experts.parameters(base + kept) + router.parameters + extra,
        "index_bytes": index.nbytes(kept),
        "ms_per_query": {"embed": embed},
    }


def _search_ms(
    experts: ExpertSet, router: Router, decision: Decision, search_ms: Mapping[str, float], routed_ms: float
) -> float:
    """Search ms per query of a routed system: the routed search as measured, or, for a router that decides from
    every expert's top-k (their searches measured alone, the winner's ranking reused), the sum of those searches
    and the fallback's share."""
    if not router.searches_all or router.soft:
        return routed_ms
    fallback = search_ms[experts.fallback] * decision.fallback.mean() if experts.fallback else 0.0
    return sum(search_ms[e] for e in experts.routable) + float(fallback)


def _routing(decision: Decision, targets: np.ndarray, domains: np.ndarray, experts: Sequence[str]) -> dict[str, Any]:
    """Routing accuracy (chosen vs target expert), per domain (in query order), fallback rate (percent) and queries
    per expert."""
    correct = decision.choice == targets
    domains = np.asarray(domains)
    used = np.bincount(decision.choice, minlength=len(experts))
    return {
        "accuracy": _percent(correct.mean()),
        "per_domain": {d: _percent(correct[domains == d].mean()) for d in dict.fromkeys(domains.tolist())},
        "fallback_rate": _percent(decision.fallback.mean()),
        "experts_used": {name: int(n) for name, n in zip(experts, used, strict=True)},
    }


def _percent(v: float) -> float:
    return round(float(v) * 100, 4)


def _scores_without_self(scores: np.ndarray, ids: np.ndarray, in_database: np.ndarray | None, k: int) -> np.ndarray:
    """``(n, k)`` top scores of a ranking without each query's own database entry (a query of a domain whose query
    split is its index split finds itself first), so confidences compare neighbours only."""
    if in_database is None:
        return scores[:, :k]
    own = ids == np.asarray(in_database)[:, None]
    order = np.argsort(own, axis=1, kind="stable")  # the query's own entry moves last, the others keep their order
    return np.take_along_axis(scores, order, axis=1)[:, :k]


def _rows(
    per_query: pd.DataFrame,
    system: str,
    searched: np.ndarray,
    targets: np.ndarray,
    names: Sequence[str],
    decision: Decision | None = None,
    support: np.ndarray | None = None,
) -> pd.DataFrame:
    """The scorer's per-query table of one system with what was searched and why."""
    n = len(per_query)
    rows = per_query.reset_index()
    rows.insert(0, "system", system)
    rows["expert"] = searched
    rows["target"] = np.array(names)[targets]
    rows["confidence"] = decision.confidence if decision is not None else np.full(n, np.nan)
    rows["fallback"] = decision.fallback if decision is not None else np.zeros(n, dtype=bool)
    rows["support"] = support if support is not None else np.full(n, np.nan)
    return rows


def save_report(report: ExpertsReport, out: str | os.PathLike) -> Path:
    """Write ``metrics.json``, ``per_query.csv`` and ``run.json`` into ``out`` (atomically); returns ``out``."""
    out = Path(out)
    write_json(out / "metrics.json", report.metrics)
    with atomic_path(out / "per_query.csv") as tmp:
        report.per_query.to_csv(tmp, float_format="%.4f")
    write_run(out, eval_record(report.metrics, out))
    return out


def systems_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per system of a report's ``metrics.json`` content: kind, averaged and per-domain R@1 and mMP@k
    (percent), routing accuracy and fallback rate (percent), parameters added (millions), index memory (MiB) and
    CPU ms per query (embed + route + search)."""
    k = metrics["settings"]["dataset_info"]["k"]
    mmp = f"mMP@{k}"
    rows = {}
    for system, m in metrics["metrics"].items():
        row: dict[str, Any] = {"kind": m["kind"], "R@1": m["R@1"], mmp: m[mmp]}
        for d, values in m["per_domain"].items():
            row[f"{d} R@1"], row[f"{d} {mmp}"] = values["R@1"], values[mmp]
        routing = m["routing"] or {}
        row["routing accuracy"] = routing.get("accuracy", np.nan)
        row["fallback %"] = routing.get("fallback_rate", np.nan)
        cost = m["cost"]
        row["params added (M)"] = cost["parameters_added"] / 1e6
        row["index (MiB)"] = cost["index_bytes"] / 2**20
        total = cost["ms_per_query"]["total"]
        row["ms/query"] = np.nan if total is None else total
        rows[system] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("system")
