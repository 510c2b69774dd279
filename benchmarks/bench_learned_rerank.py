"""Learned (AMES) reranking: its speed on a 1,000-image shortlist for 70 queries against SuperGlobal's in the same run,
its database bytes per image, and (``--quality``) what training on the demo buys over the initial ranking.

Speed problem: 70 queries, a database of 4,993 + 3,000 images (ROxf's size plus distractors), D = 2048 float32 unit
descriptors around 600 centres (``bench_rerank.make_data``), shortlists of M = 1,000; every image has its full count of
binary local descriptors (``n_query`` per query, ``n_db`` per database image, random bits), the reranker the default
:class:`irlib.models.ames.AMESConfig` (random weights: speed does not depend on them). Both rerankers reorder the same
initial shortlists (checked: same tail, same set of ids in the head). The paper's sizes (5 layers, FFN 1024,
model_dim 128) are timed on ``--paper-queries`` queries and scaled to 70.

Quality (``--quality``): :func:`irlib.train.reranker.demo_study` on the demo data: train a reranker for the pretrained
GeM/EfficientNet-Lite0 (the demo training split minus its planted test-overlap landmarks), then Easy/Medium/Hard mAP
of no reranking, α-QE, SuperGlobal and the learned reranker on the demo test set, with training seconds.

Run: ``.venv/bin/python benchmarks/bench_learned_rerank.py [--repeats 3] [--quality]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_rerank import best_time, make_data

from irlib.eval.rerank import initial_ranks, learned_rerank, superglobal_rerank
from irlib.io import sha256_file
from irlib.models.ames import AMES, AMESConfig, BinaryLocals, pack_codes, save_reranker


def random_locals(n: int, width: int, bits: int, seed: int) -> BinaryLocals:
    g = torch.Generator().manual_seed(seed)
    codes = torch.where(torch.rand(n, width, bits, generator=g) < 0.5, -1.0, 1.0)
    return pack_codes(codes, torch.full((n,), width))


def time_learned(config: AMESConfig, Q, X, ranks, M: int, repeats: int, folder: Path) -> tuple[float, np.ndarray]:
    """Best time of :func:`learned_rerank` over ``repeats`` and its ranks, for a random reranker of ``config``."""
    torch.manual_seed(0)
    model = AMES(config)
    model.init_for_matching()
    path = folder / f"reranker-{config.layers}-{config.model_dim}.pt"
    save_reranker(model, path, {"lam": 0.5, "gamma": 0.5})
    sha = sha256_file(path)
    ql = dataclasses.replace(random_locals(len(Q), config.n_query, config.bits, 1), source=sha)
    xl = dataclasses.replace(random_locals(len(X), config.n_db, config.bits, 2), source=sha)
    seconds, out = best_time(
        lambda: learned_rerank(Q, X, reranker=str(path), M=M, ranks=ranks, query_locals=ql, database_locals=xl),
        repeats,
    )
    return seconds, out.ranks


def speed(args: argparse.Namespace) -> None:
    Q, X = make_data(args.n_queries, args.n_db, args.dim)
    ranks = initial_ranks(Q, X)
    config = AMESConfig(in_dim=args.dim)
    config = dataclasses.replace(
        config,
        n_query=args.n_query or config.n_query,
        n_db=args.n_db_locals or config.n_db,
        model_dim=args.model_dim or config.model_dim,
        ffn=args.ffn or config.ffn,
    )
    print(f"Q {Q.shape}, X {X.shape} float32, M={args.M}; reranker {config}; torch threads {torch.get_num_threads()}")
    print(
        f"database bytes per image: {X[:1].nbytes} (global) + {config.bytes_per_db_image} (binary locals: "
        f"{config.n_db} x {config.bits // 8} B + a 2-byte count)"
    )
    t_sg, sg = best_time(lambda: superglobal_rerank(Q, X, M=args.M, ranks=ranks), args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        t_learned, learned = time_learned(config, Q, X, ranks, args.M, args.repeats, Path(folder))
        m = args.M
        np.testing.assert_array_equal(learned[m:], ranks[m:])
        np.testing.assert_array_equal(np.sort(learned[:m], 0), np.sort(sg.ranks[:m], 0))
        print(f"same shortlists and tails; {np.mean(learned[:m] != ranks[:m]):.0%} of the head moved")
        print(f"SuperGlobal (M={m}, K=9):             {t_sg:6.2f} s")
        print(f"learned, default sizes:               {t_learned:6.2f} s  ({t_learned / t_sg:.2f}x SuperGlobal's)")
        if args.paper_queries:
            paper = dataclasses.replace(config, model_dim=128, layers=5, ffn=1024)
            n = args.paper_queries
            t_paper, _ = time_learned(paper, Q[:n], X, ranks[:, :n], args.M, 1, Path(folder))
            print(
                f"learned, the paper's sizes (5 layers, FFN 1024, d 128), {n} queries timed: "
                f"{t_paper:6.2f} s -> {t_paper * len(Q) / n:6.1f} s for {len(Q)}"
            )


def quality(args: argparse.Namespace) -> None:
    from irlib.train.reranker import demo_study

    t0 = time.perf_counter()
    table = demo_study(args.demo_dir, progress=False, seed=args.seed, out_dir=args.out, cache_dir=f"{args.out}/cache")
    print(table.round(2).to_string())
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    print(
        f"training: {summary['train_seconds']:.1f} s for {summary['steps']} steps; lam={summary['lam']}, "
        f"gamma={summary['gamma']} chosen on held-out training landmarks (mAP {summary['holdout_map']}); "
        f"everything {time.perf_counter() - t0:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-queries", type=int, default=70)
    parser.add_argument("--n-db", type=int, default=4993 + 3000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--M", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-query", type=int, help="local descriptors per query (default: AMESConfig's)")
    parser.add_argument("--n-db-locals", type=int, help="local descriptors per database image (default: AMESConfig's)")
    parser.add_argument("--model-dim", type=int, help="token size (default: AMESConfig's)")
    parser.add_argument("--ffn", type=int, help="FFN width (default: AMESConfig's)")
    parser.add_argument("--paper-queries", type=int, default=2, help="queries timed with the paper's sizes (0: skip)")
    parser.add_argument("--quality", action="store_true", help="train on the demo and compare mAP instead")
    parser.add_argument("--demo-dir", default="data/demo")
    parser.add_argument("--seed", type=int, default=0, help="--quality: the training seed")
    parser.add_argument("--out", default="runs/bench_learned_rerank", help="--quality: the training run's folder")
    args = parser.parse_args()
    quality(args) if args.quality else speed(args)


if __name__ == "__main__":
    main()
