"""Universal evaluations at benchmark size: the UnED merged kNN and ILIAS search over 5M distractors, generated data.

Part 1, ``uned``: the UnED test protocol (``datasets.md`` §6.1, §6.3) on L2-normalised float32 descriptors of 64
dimensions (the reference's embedding size, Universal-Image-Embeddings ``configs/config_train_vit.py:50``), with the
per-domain query and index counts of the 8 domains times ``--scale`` (1.0: 241,986 queries, 1,397,126 index images).
Every index image belongs to a class of 2 to 6 images of its domain, drawn around the class centre (same-class cosine
about 0.5); class ids restart at 0 in every domain, so only the domain rule separates them. Queries of a test -> test
domain are its index rows (they throw their first neighbour); the others are new draws around a class of the index.

- irlib: what the evaluation runs, ``ShortlistSearch(index, "faiss-flat", {"shortlist": k + 1})`` (faiss
  ``IndexFlatIP``, then the top-(k + 1) re-scored exactly, ties by lower id; no score matrix) and
  ``uned_merged_metrics(ids, ..., ranks=True)``.
- baseline, the straightforward NumPy pipeline (the reference's ``knn_utils._run_knn`` is a full query-batch matmul
  then ``lax.top_k``): per block of ``--block`` queries the float32 score block ``Q_b @ X.T``, a stable ``np.argsort``
  of each row, then R@1 and MP@k per domain from label and domain comparisons and a ``(domain, label)`` count table.

Both must give the same top-(k + 1) ids and identical metrics (``==``).

Part 2, ``ilias``: 1,232 queries of 1,000 instances, 4,715 positives (``datasets.md`` §7.1) followed by ``--n-db``
distractors (default 5M) drawn around ``n_db / 500`` cluster centres, D = 128, top 1000. Exact search (``"faiss-flat"``
shortlist, as above) against IVF-PQ (``ShortlistSearch(..., "ivfpq", ...)``: ``--nlist`` lists, ``--m`` bytes per
image, its top-1000 re-scored exactly) for each ``--nprobe``: times, recall@1000 of the IVF-PQ top-1000 against the
exact one, and ``ilias_map_at_k(..., ids=...)`` of both on the planted positives.

Each pipeline runs in its own process on data it generates from the same seed (results come back as JSON and
``.npy``). Memory is the process's peak anonymous memory (``RssAnon`` sampled every 10 ms, ``bench_1m.MemoryWatch``;
this counts faiss's C++ allocations, which tracemalloc does not see), reported above the level reached once the
data was generated.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_universal.py [--part uned|ilias|both] [--scale 0.1] [--block 1024]
[--skip-baseline] [--n-db 5000000] [--dim 128] [--nlist 1024] [--m 32] [--nprobe 8 32 128] [--no-progress]``;
a quick check: ``--scale 0.01 --n-db 200000 --nlist 256``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from bench_1m import MemoryWatch
from tqdm import tqdm

from irlib.data.uned import DOMAINS, KNN_SPLITS, UNED_SIZES
from irlib.eval.metrics import ilias_map_at_k, uned_merged_metrics
from irlib.eval.search import ShortlistSearch, exact_top_k, recall_at_k, refine

UNED_DIM = 64
CLASS_SIZES = (2, 6)  # images per class of the generated UnED index, inclusive
CLASS_NOISE = 1.0  # descriptor = normalise(centre + CLASS_NOISE * z), |z| ~ 1: same-class cosine ~ 1 / (1 + 1)
ILIAS_QUERIES, ILIAS_INSTANCES, ILIAS_POSITIVES = 1_232, 1_000, 4_715
ILIAS_QUERY_NOISE = 0.5
ILIAS_POSITIVE_NOISE = (0.6, 1.6)  # uniform per positive: clutter and scale make some positives much harder
DISTRACTOR_CLUSTER = 500  # distractors per cluster centre on average


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _around(rng: np.random.Generator, centres: np.ndarray, noise: float | np.ndarray) -> np.ndarray:
    """``normalise(centres + noise * z)`` row by row, ``z ~ N(0, I / D)`` so that ``|z|`` is about 1."""
    z = rng.standard_normal(centres.shape, dtype=np.float32) / np.float32(np.sqrt(centres.shape[1]))
    return _unit(centres + np.asarray(noise, dtype=np.float32).reshape(-1, 1) * z)


@dataclass(frozen=True)
class UnedProblem:
    """Generated inputs of ``uned_merged_metrics``: descriptors ``(n_q, D)``, ``(n_db, D)`` float32, labels int64,
    domains as name arrays, ``throw_first`` per domain."""

    queries: np.ndarray
    index: np.ndarray
    query_labels: np.ndarray
    query_domains: np.ndarray
    index_labels: np.ndarray
    index_domains: np.ndarray
    throw_first: dict[str, bool]


def uned_sizes(scale: float) -> dict[str, tuple[int, int, bool]]:
    """``domain -> (n_queries, n_index, throw_first)``: UnED's test kNN sizes (``datasets.md`` §6.1) times ``scale``."""
    out = {}
    for d in DOMAINS:
        query_split, index_split = KNN_SPLITS["test"][d]
        n_index = max(CLASS_SIZES[1], round(UNED_SIZES[d][index_split] * scale))
        n_queries = max(1, round(UNED_SIZES[d][query_split] * scale))
        out[d] = (n_index if query_split == index_split else n_queries, n_index, query_split == index_split)
    return out


def make_uned(scale: float, seed: int = 0) -> UnedProblem:
    """The UnED-sized problem, domain after domain (index and queries in ``DOMAINS`` order)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("q", "x", "ql", "qd", "xl", "xd")}
    throw_first = {}
    for d, (n_q, n_x, throw) in uned_sizes(scale).items():
        sizes = rng.integers(CLASS_SIZES[0], CLASS_SIZES[1] + 1, n_x // CLASS_SIZES[0] + 1)
        labels = np.repeat(np.arange(len(sizes)), sizes)[:n_x]
        if labels[-1] != labels[-2]:  # the cut left a class of one
            labels[-1] = labels[-2]
        labels = rng.permutation(labels)
        centres = _unit(rng.standard_normal((labels.max() + 1, UNED_DIM), dtype=np.float32))
        x = _around(rng, centres[labels], CLASS_NOISE)
        if throw:
            q, q_labels = x, labels
        else:
            q_labels = labels[rng.integers(0, n_x, n_q)]
            q = _around(rng, centres[q_labels], CLASS_NOISE)
        for key, value in zip(parts, (q, x, q_labels, [d] * n_q, labels, [d] * n_x), strict=True):
            parts[key].append(np.asarray(value))
        throw_first[d] = throw
    q, x, ql, qd, xl, xd = (np.concatenate(v) for v in parts.values())
    return UnedProblem(q, x, ql.astype(np.int64), qd, xl.astype(np.int64), xd, throw_first)


def uned_irlib(p: UnedProblem, k: int, search: str) -> tuple[dict[str, float], np.ndarray, dict[str, float]]:
    """irlib's paths, then the merged metrics: ``"exact"`` (the evaluation's default, :func:`exact_top_k`: blocks of
    queries x blocks of the index, float64 sums, ties by lower id) or ``"faiss-flat"`` (a faiss flat index's top
    k + 1, re-scored exactly)."""
    t0 = time.perf_counter()
    if search == "exact":
        _, ids = exact_top_k(p.queries, p.index, k + 1)
    else:
        _, ids, _ = ShortlistSearch(p.index, "faiss-flat", {"shortlist": k + 1})(p.queries)
    t1 = time.perf_counter()
    metrics = uned_merged_metrics(
        ids, p.query_labels, p.query_domains, p.index_labels, p.index_domains, p.throw_first, k=k, ranks=True
    )
    return metrics, ids, {"search_s": t1 - t0, "metrics_s": time.perf_counter() - t1}


def uned_baseline(
    p: UnedProblem, k: int, block: int, progress: bool = True
) -> tuple[dict[str, float], np.ndarray, dict[str, float]]:
    """The straightforward pipeline: per query block, full float32 scores and a stable argsort of every row; then
    R@1, MP@k and AP@k (``knn_utils.py`` ``compute_knn_metrics``) per domain, vectorised over its queries."""
    depth = k + 1
    t0 = time.perf_counter()
    ids = np.empty((len(p.queries), depth), dtype=np.int64)
    for s in tqdm(range(0, len(p.queries), block), desc="baseline blocks", disable=not progress):
        scores = p.queries[s : s + block] @ p.index.T
        ids[s : s + block] = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    t1 = time.perf_counter()
    names, index_domain = np.unique(p.index_domains, return_inverse=True)
    query_domain = np.searchsorted(names, p.query_domains)
    keys, counts = np.unique(index_domain * (p.index_labels.max() + 1) + p.index_labels, return_counts=True)
    n_same = counts[np.searchsorted(keys, query_domain * (p.index_labels.max() + 1) + p.query_labels)]
    names = ("R@1", f"mMP@{k}", f"mAP@{k}")
    per_domain: dict[str, float] = {}
    for d in dict.fromkeys(p.query_domains.tolist()):
        rows = np.flatnonzero(p.query_domains == d)
        t = int(p.throw_first[d])
        nn = ids[rows, : k + t]
        correct = (p.index_labels[nn] == p.query_labels[rows, None]) & (index_domain[nn] == query_domain[rows, None])
        n_relevant = np.minimum(n_same[rows] - t, k)
        looked = np.arange(k + t) < np.minimum(k + t, n_same[rows])[:, None]
        mp = ((correct & looked).sum(axis=1) - t) / n_relevant
        hits = correct[:, t:]  # the reference's relevances_map after the thrown neighbour
        ap = (np.cumsum(hits, axis=1) / np.arange(1, k + 1) * hits).sum(axis=1) / n_relevant
        for name, values in zip(names, (correct[:, t], mp, ap), strict=True):
            per_domain[f"{d}/{name}"] = float(values.mean())
    means = {name: float(np.mean([v for key, v in per_domain.items() if key.endswith(f"/{name}")])) for name in names}
    metrics = means | per_domain
    return metrics, ids, {"search_s": t1 - t0, "metrics_s": time.perf_counter() - t1}


def make_ilias(n_db: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """ILIAS-sized data: queries ``(1232, dim)``, database ``(4715 + n_db, dim)`` float32 (positives first), and the
    positive ids of each query."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((ILIAS_INSTANCES, dim), dtype=np.float32))
    query_instance = np.r_[
        np.arange(ILIAS_INSTANCES), rng.integers(0, ILIAS_INSTANCES, ILIAS_QUERIES - ILIAS_INSTANCES)
    ]
    extra = rng.choice(ILIAS_INSTANCES, ILIAS_POSITIVES - 4 * ILIAS_INSTANCES, replace=False)
    positive_instance = np.sort(np.r_[np.repeat(np.arange(ILIAS_INSTANCES), 4), extra])
    queries = _around(rng, centres[query_instance], ILIAS_QUERY_NOISE)
    db = np.empty((ILIAS_POSITIVES + n_db, dim), dtype=np.float32)
    noise = rng.uniform(*ILIAS_POSITIVE_NOISE, ILIAS_POSITIVES)
    db[:ILIAS_POSITIVES] = _around(rng, centres[positive_instance], noise)
    clusters = _unit(rng.standard_normal((max(1, n_db // DISTRACTOR_CLUSTER), dim), dtype=np.float32))
    for s in range(ILIAS_POSITIVES, len(db), 1 << 18):
        e = min(s + (1 << 18), len(db))
        db[s:e] = _around(rng, clusters[rng.integers(0, len(clusters), e - s)], 1.0)
    starts = np.searchsorted(positive_instance, np.arange(ILIAS_INSTANCES + 1))
    positives = [np.arange(starts[i], starts[i + 1]) for i in query_instance]
    return queries, db, positives


def ilias_search(
    queries: np.ndarray, db: np.ndarray, positives: list[np.ndarray], args: argparse.Namespace, k: int = 1000
) -> dict:
    """Exact and IVF-PQ (each ``--nprobe``) top-``k`` of the ILIAS-sized data: times, recall@k, mAP@k."""
    t0 = time.perf_counter()
    exact = ShortlistSearch(db, "faiss-flat", {"shortlist": k})
    t1 = time.perf_counter()
    exact_scores, exact_ids, _ = exact(queries)
    out: dict = {"exact": {"build_s": t1 - t0, "search_s": time.perf_counter() - t1}}
    out["exact"]["map"] = ilias_map_at_k(exact_scores, positives, k, ids=exact_ids)
    t0 = time.perf_counter()
    refine(queries, db, exact_ids, k)  # the exact re-scoring inside every ShortlistSearch call, timed alone
    out["refine_s"] = time.perf_counter() - t0
    del exact
    params = {"shortlist": k, "nlist": args.nlist, "m": args.m, "train_size": args.train_size, "seed": args.seed}
    t0 = time.perf_counter()
    approx = ShortlistSearch(db, "ivfpq", params)
    out["ivfpq"] = {"build_s": time.perf_counter() - t0, "params": params, "runs": {}}
    for nprobe in args.nprobe:
        faiss.extract_index_ivf(approx.index).nprobe = nprobe
        t0 = time.perf_counter()
        scores, ids, _ = approx(queries)
        out["ivfpq"]["runs"][nprobe] = {
            "search_s": time.perf_counter() - t0,
            "recall": recall_at_k(ids, exact_ids, k),
            "map": ilias_map_at_k(scores, positives, k, ids=ids),
        }
    return out


def child(args: argparse.Namespace) -> None:
    """One pipeline in this process on freshly generated data; its numbers go to ``DIR/<name>.json`` (and the UnED
    top-(k + 1) ids to ``DIR/<name>.npy``)."""
    t0 = time.perf_counter()
    if args.child == "ilias":
        queries, db, positives = make_ilias(args.n_db, args.dim, args.seed)
        data = db.nbytes
    else:
        problem = make_uned(args.scale, args.seed)
        data = problem.queries.nbytes + problem.index.nbytes
    out: dict = {"generate_s": time.perf_counter() - t0, "data_gib": data / 2**30}
    out["start_anon_gib"] = MemoryWatch().stop()["peak_anon_gib"]  # the current level: data, libraries
    watch = MemoryWatch()
    if args.child == "ilias":
        out |= ilias_search(queries, db, positives, args) | {"n_db": len(db), "dim": args.dim}
    else:
        if args.child.startswith("irlib"):
            search = "exact" if args.child == "irlib-exact" else "faiss-flat"
            metrics, ids, times = uned_irlib(problem, args.k, search)
        else:
            metrics, ids, times = uned_baseline(problem, args.k, args.block, args.progress)
        np.save(args.dir / f"{args.child}.npy", ids)
        out |= {"metrics": metrics} | times
    out["peak_anon_gib"] = watch.stop()["peak_anon_gib"]
    (args.dir / f"{args.child}.json").write_text(json.dumps(out))


def spawn(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--dir", str(args.dir), "--scale", str(args.scale)]
    cmd += ["--k", str(args.k), "--block", str(args.block), "--seed", str(args.seed), "--n-db", str(args.n_db)]
    cmd += ["--dim", str(args.dim), "--nlist", str(args.nlist), "--m", str(args.m)]
    cmd += ["--train-size", str(args.train_size), "--nprobe", *map(str, args.nprobe)]
    cmd += [] if args.progress else ["--no-progress"]
    # faiss's OpenMP threads spin while waiting; passive waiting keeps a busy 2-core machine from stalling them
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    return json.loads((args.dir / f"{name}.json").read_text())


def report_uned(args: argparse.Namespace) -> None:
    sizes = uned_sizes(args.scale)
    n_q, n_x = sum(v[0] for v in sizes.values()), sum(v[1] for v in sizes.values())
    print(f"UnED merged kNN, scale {args.scale}: {n_q:,} queries x {n_x:,} index images, D={UNED_DIM}, k={args.k}")
    names = ("irlib-exact", "irlib") + (() if args.skip_baseline else ("baseline",))
    runs = {name: spawn(name, args) for name in names}
    for other in names[1:]:
        ours, theirs = (np.load(args.dir / f"{name}.npy", allow_pickle=False) for name in ("irlib-exact", other))
        differ = int((ours != theirs).any(axis=1).sum())
        assert runs["irlib-exact"]["metrics"] == runs[other]["metrics"], (runs[other]["metrics"], differ)
        print(f"{other}: identical metrics; top-{args.k + 1} ids differ in {differ} of {len(ours)} queries")
    m = runs["irlib-exact"]["metrics"]
    generated = runs["irlib-exact"]["generate_s"]
    print(f"R@1 {m['R@1']:.4f}, mMP@{args.k} {m[f'mMP@{args.k}']:.4f} (data generated in {generated:.1f} s)")
    print(f"{'pipeline':11s}     search  metrics      total  peak anonymous memory above the generated data")
    for name, r in runs.items():
        print(
            f"{name:11s}  {r['search_s']:7.2f} s  {r['metrics_s']:5.2f} s  {r['search_s'] + r['metrics_s']:7.2f} s  "
            f"+{r['peak_anon_gib'] - r['start_anon_gib']:.2f} GiB (over {r['start_anon_gib']:.2f} GiB; "
            f"descriptors {r['data_gib']:.2f} GiB)"
        )
    if not args.skip_baseline:
        b = runs["baseline"]
        for name in ("irlib-exact", "irlib"):
            a = runs[name]
            ratio = (b["search_s"] + b["metrics_s"]) / (a["search_s"] + a["metrics_s"])
            extra = (b["peak_anon_gib"] - b["start_anon_gib"]) / max(a["peak_anon_gib"] - a["start_anon_gib"], 1e-9)
            print(f"{name}: {ratio:.1f}x faster, {extra:.1f}x less memory above the data")


def report_ilias(args: argparse.Namespace) -> None:
    r = spawn("ilias", args)
    print(
        f"ILIAS-sized search: {ILIAS_QUERIES} queries x {r['n_db']:,} images (D={r['dim']}, "
        f"{r['data_gib']:.2f} GiB), top 1000; peak anonymous +{r['peak_anon_gib'] - r['start_anon_gib']:.2f} GiB"
    )
    print(f"(every search below includes re-scoring the 1000 ids of each query exactly, {r['refine_s']:.2f} s)")
    e = r["exact"]
    print(f"exact (faiss-flat + refine): build {e['build_s']:.1f} s, search {e['search_s']:.1f} s, ", end="")
    print(f"mAP@1000 {e['map']:.4f}")
    p = r["ivfpq"]
    print(f"IVF-PQ {p['params']}: build {p['build_s']:.1f} s")
    for nprobe, v in p["runs"].items():
        print(
            f"  nprobe {int(nprobe):4d}: search {v['search_s']:.2f} s ({e['search_s'] / v['search_s']:.1f}x exact), "
            f"recall@1000 {v['recall']:.4f}, mAP@1000 {v['map']:.4f} ({v['map'] - e['map']:+.4f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("uned", "ilias", "both"), default="both")
    parser.add_argument("--scale", type=float, default=0.1, help="UnED sizes times this (1.0: the full test sizes)")
    parser.add_argument("--k", type=int, default=5, help="UnED top-k (the benchmark's 5)")
    parser.add_argument("--block", type=int, default=1024, help="queries per score block of the UnED baseline")
    parser.add_argument("--skip-baseline", action="store_true", help="UnED: time irlib only (e.g. at --scale 1)")
    parser.add_argument("--n-db", type=int, default=5_000_000, help="ILIAS distractors")
    parser.add_argument("--dim", type=int, default=128, help="ILIAS descriptor size")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    parser.add_argument("--m", type=int, default=32, help="PQ sub-vectors (bytes per image at 8 bits)")
    parser.add_argument("--train-size", type=int, default=65536, help="IVF-PQ training sample")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("irlib", "irlib-exact", "baseline", "ilias"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.dir = Path(tmp)
        if args.part in ("uned", "both"):
            report_uned(args)
        if args.part in ("ilias", "both"):
            report_ilias(args)


if __name__ == "__main__":
    main()
