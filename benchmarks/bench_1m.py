"""ROxf+1M evaluation from features: irlib's memory-mapped fp16 pipeline against the straightforward one.

Problem (generated, seeded): 70 query descriptors and a 1,001,001 x 2048 float16 database on disk (4.1 GB, the
4,993 ROxf images followed by 996,008 distractors), unit vectors drawn around 4,004 cluster centres (about 250
images each; queries from the same clusters). Signal is planted on the real ROxf ground truth as in
``bench_evaluator.py``: a positive's score is lifted by 2.5 (easy), 1.5 (hard) or 1.0 (junk) standard deviations of
the background scores, so positives spread over the whole ranking.

Each pipeline runs in its own process (peak memory does not mix), on the same files:

- irlib: what ``evaluate_model`` / ``rescore`` run on ROxf+1M features, ``search_database(Q, StackedDatabase(test,
  distractors))`` with the default exact search, then ``Ranking.evaluate`` (``evaluate(gnd, scores=...)``: positions
  counted, nothing sorted). ``test`` is the first 4,993 rows in memory as float32 (as extracted), ``distractors`` the
  other rows of the float16 file, memory-mapped; scores are computed a block of 4,096 rows at a time into one
  ``(n_q, N)`` float32 matrix.
- baseline, the straightforward pipeline (revisitop's ``example_evaluate.py``): the database loaded as float32
  (8.2 GB), the full score matrix ``X @ Q.T`` ``(N, n_q)``, ``np.argsort`` of each column (stable, so ties break by
  database index as irlib's do) and ``compute_map`` for Easy, Medium and Hard.

Both must give identical mAPs and per-query APs. With ``--rerank superglobal`` (or another shortlist reranker, default
parameters), a third process times the same production call with that reranker (its shortlist read from the
memory map). Then IVF-PQ (``build_index(..., "ivfpq")``) is built over the
same memory map, and its recall@100 against the exact top-100 is printed for a few ``nprobe``, with and without
re-scoring its top-1000 exactly (``refine``).

Run: ``.venv/bin/python benchmarks/bench_1m.py [--n-db 1001001] [--dim 2048] [--rerank superglobal] [--ivf-n N]
[--skip-ivfpq] [--dir DIR]``; a quick check: ``--n-db 100000 --dim 256 --nlist 256 --m 32``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

KAPPAS = [1, 5, 10]
SIGNAL = {"easy": 2.5, "hard": 1.5, "junk": 1.0}  # in standard deviations of the background scores
CLUSTER_SIZE = 250  # images per cluster centre on average
CENTRE_WEIGHT = 1.0  # descriptor = normalise(weight * centre + noise), |centre| = |noise| = 1 on average


def load_gnd(path: Path) -> list[dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        cfg = pickle.load(f)
    return [{k: np.asarray(q[k], dtype=np.int64) for k in ("easy", "hard", "junk")} for q in cfg["gnd"]]


def generate(folder: Path, gnd: list[dict[str, np.ndarray]], n_db: int, dim: int, seed: int = 0) -> None:
    """Write ``queries.npy`` ``(n_q, dim)`` float32 and ``db.npy`` ``(n_db, dim)`` float16, block by block."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n_db // CLUSTER_SIZE), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n: int) -> np.ndarray:
        x = CENTRE_WEIGHT * centres[rng.integers(0, len(centres), n)]
        x += rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
        return x

    queries = draw(len(gnd))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.save(folder / "queries.npy", queries)
    # x + t * sqrt(1 + w^2) * q, normalised, scores t standard deviations above the background for query q
    lift = np.zeros((test_db_size(gnd), dim))
    for i, q in enumerate(gnd):
        for field, t in SIGNAL.items():
            lift[q[field]] += t * np.sqrt((1 + CENTRE_WEIGHT**2) / dim) * queries[i]
    db = np.lib.format.open_memmap(folder / "db.npy", mode="w+", dtype=np.float16, shape=(n_db, dim))
    block = 1 << 15
    for s in range(0, n_db, block):
        e = min(s + block, n_db)
        x = draw(e - s)
        if s < len(lift):
            x[: min(e, len(lift)) - s] += lift[s:e].astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        db[s:e] = x
    db.flush()


class MemoryWatch:
    """Peak anonymous memory (``RssAnon``, sampled every 10 ms) next to the kernel's peak RSS (``VmHWM``), which
    also counts the clean, reclaimable file pages of a memory map."""

    def __init__(self) -> None:
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_anon = max(self.peak_anon, self._status("RssAnon"))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.peak_anon = max(self.peak_anon, self._status("RssAnon"))
        # VmHWM, not getrusage's ru_maxrss: Linux carries the forked parent's peak over exec into ru_maxrss
        return {"peak_rss_gib": self._status("VmHWM") / 2**30, "peak_anon_gib": self.peak_anon / 2**30}


def test_db_size(gnd: list[dict[str, np.ndarray]]) -> int:
    """Rows of the test database: those up to the largest id the ground truth names (ROxf: 4,993)."""
    return 1 + max(int(ids.max()) for q in gnd for ids in q.values() if ids.size)


def run_irlib(folder: Path, gnd: list[dict[str, np.ndarray]], rerank: str | None = None) -> dict:
    """The production path: ``search_database`` on the test features followed by the memory-mapped distractors."""
    from irlib.eval.pipeline import search_database
    from irlib.eval.search import StackedDatabase

    t0 = time.perf_counter()
    db = np.load(folder / "db.npy", mmap_mode="r")
    n_test = test_db_size(gnd)
    database = StackedDatabase(np.asarray(db[:n_test], dtype=np.float32), db[n_test:])
    ranking = search_database(np.load(folder / "queries.npy"), database, rerank=rerank)
    t1 = time.perf_counter()
    res = ranking.evaluate(gnd, KAPPAS)
    t2 = time.perf_counter()
    return {"search_s": t1 - t0, "metrics_s": t2 - t1, "results": res, "rerank": ranking.rerank}


def run_baseline(folder: Path, gnd: list[dict[str, np.ndarray]]) -> dict:
    from irlib.eval.revisited import PROTOCOLS, compute_map, protocol_gnd

    t0 = time.perf_counter()
    X = np.load(folder / "db.npy", mmap_mode="r").astype(np.float32)
    Q = np.load(folder / "queries.npy")
    sim = X @ Q.T  # (N, n_q)
    t1 = time.perf_counter()
    ranks = np.argsort(-sim, axis=0, kind="stable")
    res = {}
    for p in PROTOCOLS:
        m, aps, pr, prs = compute_map(ranks, protocol_gnd(gnd, p), KAPPAS)
        res[p] = {"map": m, "aps": aps, "mp@k": pr, "p@k": prs}
    t2 = time.perf_counter()
    return {"search_s": t1 - t0, "metrics_s": t2 - t1, "results": res}


def run_ivfpq(folder: Path, args: argparse.Namespace) -> dict:
    import faiss

    from irlib.eval.search import build_index, recall_at_k, refine, search_index, similarity_chunked

    db = np.load(folder / "db.npy", mmap_mode="r")[: args.ivf_n or None]
    queries = np.load(folder / "queries.npy")
    t0 = time.perf_counter()
    scores = similarity_chunked(queries, db)
    top = np.argpartition(-scores, 100, axis=1)[:, :100]
    exact = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    t_exact = time.perf_counter() - t0
    del scores
    t0 = time.perf_counter()
    index = build_index(db, "ivfpq", nlist=args.nlist, m=args.m, nbits=8, train_size=args.train_size, seed=0)
    t_build = time.perf_counter() - t0
    recalls = {}
    for nprobe in (8, 32, 128):
        faiss.extract_index_ivf(index).nprobe = nprobe
        t0 = time.perf_counter()
        _, ids = search_index(index, queries, 1000)
        t1 = time.perf_counter()
        _, refined = refine(queries, db, ids, 100)
        recalls[nprobe] = {
            "recall@100": recall_at_k(ids, exact, 100),
            "refined_recall@100": recall_at_k(refined, exact, 100),
            "search_s": t1 - t0,
            "refine_s": time.perf_counter() - t1,
        }
    return {"n": len(db), "exact_s": t_exact, "build_s": t_build, "recalls": recalls, "code_bytes": args.m}


def child(args: argparse.Namespace) -> None:
    """One pipeline in this process; results (with peak memory) pickled to ``DIR/<name>.pkl``."""
    folder = args.dir
    watch = MemoryWatch()
    if args.child == "ivfpq":
        out = run_ivfpq(folder, args)
    elif args.child == "baseline":
        out = run_baseline(folder, load_gnd(args.gnd))
    else:
        out = run_irlib(folder, load_gnd(args.gnd), args.rerank if args.child == "irlib_rerank" else None)
    out |= watch.stop()
    with open(folder / f"{args.child}.pkl", "wb") as f:
        pickle.dump(out, f)


def spawn(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--dir", str(args.dir), "--gnd", str(args.gnd)]
    cmd += ["--ivf-n", str(args.ivf_n), "--nlist", str(args.nlist), "--m", str(args.m)]
    cmd += ["--train-size", str(args.train_size)] + (["--rerank", args.rerank] if args.rerank else [])
    t0 = time.perf_counter()
    # faiss's OpenMP threads spin while waiting; passive waiting keeps a busy 2-core machine from stalling them
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    wall = time.perf_counter() - t0
    with open(args.dir / f"{name}.pkl", "rb") as f:
        return pickle.load(f) | {"process_s": wall}


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-db", type=int, default=1_001_001)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--gnd", type=Path, default=here.parents[1] / "shared/data/revisitop/gnd_roxford5k.pkl")
    parser.add_argument("--dir", type=Path, help="folder for the generated files (default: a temporary folder)")
    parser.add_argument("--ivf-n", type=int, default=0, help="IVF-PQ on the first N database rows (0: all)")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    parser.add_argument("--m", type=int, default=64, help="PQ sub-vectors (bytes per image at 8 bits)")
    parser.add_argument("--train-size", type=int, default=65536, help="IVF-PQ training sample")
    parser.add_argument("--skip-ivfpq", action="store_true")
    parser.add_argument(
        "--rerank",
        choices=("superglobal", "k_reciprocal", "diffusion"),
        help="also time the production path with this reranker (default parameters)",
    )
    parser.add_argument("--child", choices=("irlib", "irlib_rerank", "baseline", "ivfpq"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        args.dir = Path(tmp)
        gnd = load_gnd(args.gnd)
        t0 = time.perf_counter()
        generate(args.dir, gnd, args.n_db, args.dim)
        size = (args.dir / "db.npy").stat().st_size
        print(
            f"generated {len(gnd)} queries, db {args.n_db} x {args.dim} float16 ({size / 1e9:.2f} GB) in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        runs = {name: spawn(name, args) for name in ("irlib", "baseline")}
        # One (N, n_q) GEMM and 4,096-row blocks may round a score differently in the last bit (BLAS kernels differ
        # by CPU), which can swap two near-tied images; the metrics must agree to that level.
        gap = 0.0
        for p in ("easy", "medium", "hard"):
            a, b = runs["irlib"]["results"][p], runs["baseline"]["results"][p]
            for key in ("map", "aps", "mp@k"):
                gap = max(gap, float(np.abs(np.asarray(a[key]) - np.asarray(b[key])).max()))
        assert gap <= 1e-6, gap
        maps = ", ".join(f"{p} {runs['irlib']['results'][p]['map'] * 100:.2f}" for p in ("easy", "medium", "hard"))
        print(f"E/M/H mAP, per-query AP and mP@k agree (largest difference {gap:.1e}): {maps}")
        print("pipeline   search+scores  metrics   total   process   peak RSS   peak anonymous")
        for name, r in runs.items():
            print(
                f"{name:9s}  {r['search_s']:11.2f} s  {r['metrics_s']:6.2f} s  {r['search_s'] + r['metrics_s']:5.2f} s"
                f"  {r['process_s']:6.2f} s  {r['peak_rss_gib']:6.2f} GiB  {r['peak_anon_gib']:6.2f} GiB"
            )
        a, b = runs["irlib"], runs["baseline"]
        ratio = (b["search_s"] + b["metrics_s"]) / (a["search_s"] + a["metrics_s"])
        print(f"irlib: {ratio:.1f}x faster, {b['peak_anon_gib'] / a['peak_anon_gib']:.1f}x less anonymous memory")
        if args.rerank:
            r = spawn("irlib_rerank", args)
            params = ", ".join(f"{k}={v}" for k, v in r["rerank"]["params"].items())
            maps = ", ".join(f"{p} {r['results'][p]['map'] * 100:.2f}" for p in ("easy", "medium", "hard"))
            print(
                f"irlib + {args.rerank} ({params}): search+rerank {r['search_s']:.2f} s (+"
                f"{r['search_s'] - a['search_s']:.2f} s), metrics {r['metrics_s']:.2f} s, peak anonymous "
                f"{r['peak_anon_gib']:.2f} GiB; mAP {maps}"
            )
        if not args.skip_ivfpq:
            r = spawn("ivfpq", args)
            print(
                f"IVF-PQ over {r['n']} rows (nlist {args.nlist}, {r['code_bytes']} B/code, train {args.train_size}): "
                f"build {r['build_s']:.0f} s, peak RSS {r['peak_rss_gib']:.2f} GiB "
                f"(anonymous {r['peak_anon_gib']:.2f}); exact top-100 {r['exact_s']:.1f} s"
            )
            for nprobe, v in r["recalls"].items():
                print(
                    f"  nprobe {nprobe:4d}: recall@100 {v['recall@100']:.3f} (top-1000 search "
                    f"{v['search_s'] * 1000:.0f} ms); its top-1000 re-scored exactly: recall@100 "
                    f"{v['refined_recall@100']:.3f} (+{v['refine_s'] * 1000:.0f} ms)"
                )


if __name__ == "__main__":
    main()
