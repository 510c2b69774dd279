"""Command line, ``python -m irlib <command>``: ``download``, ``eval``, ``extract``, ``make-demo-data``, ``summarize``,
``sweep``, ``train``."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from irlib.data.revisited import CROP_MODES, Distractors
from irlib.eval.extract import PRESETS, ExtractConfig, preset
from irlib.eval.rerank import BATCH_DEPENDENT_RERANKERS, RERANKERS
from irlib.eval.search import SEARCHES
from irlib.eval.universal import BENCHMARKS, Benchmark, load_benchmark


def _scale(text: str) -> float:
    """A scale such as ``0.7071``, ``1``, ``sqrt2`` or ``1/sqrt2``."""
    table = {"sqrt2": math.sqrt(2), "1/sqrt2": 1 / math.sqrt(2)}
    try:
        return table[text] if text in table else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a scale: {text!r} (a number, sqrt2 or 1/sqrt2)") from None


PREEMPTED = 75
"""Exit status of a preempted training (EX_TEMPFAIL: a scheduler requeues it; ``--resume`` continues it)."""


def _assignments(items: Sequence[str], option: str) -> dict[str, Any]:
    """``NAME=VALUE`` items as a dict, values read as YAML (``3`` -> int, ``0.15`` -> float, ``true`` -> bool)."""
    import yaml

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{option} expects NAME=VALUE, got {item!r}")
        out[name] = yaml.safe_load(value)
    return out


def _dba(values: Sequence[str] | None) -> dict[str, Any] | None:
    """``--dba K ALPHA`` as ``{"k": int, "alpha": float}``; a K that is not a whole number raises ValueError."""
    if values is None:
        return None
    k, alpha = values
    try:
        return {"k": int(k), "alpha": float(alpha)}
    except ValueError:
        raise ValueError(f"--dba expects K ALPHA: an integer K and a number ALPHA, got {k!r} {alpha!r}") from None


def _add_distractor_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--distractors",
        type=Path,
        required=required,
        help="folder with revisitop1m.txt and jpg/" + ("" if required else " to append to the database"),
    )
    p.add_argument(
        "--skip-missing-distractors", action="store_true", help="use the listed distractors that exist (counted)"
    )


def _yaml_mapping(text: str) -> dict[str, Any]:
    """A command-line YAML mapping (``'{a: 1}'``); anything else is an argparse error naming what was given."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not YAML: {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{pooling: spca}}', got {text!r}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="gem", help="model method (see irlib.models.list_models())")
    p.add_argument("--backbone", default="resnet50", help="timm backbone name")
    p.add_argument("--pretrained", action="store_true", help="start from the backbone's pretrained weights")
    p.add_argument("--weights", type=Path, help="local state dict of the model or its backbone")
    p.add_argument(
        "--model-kwargs",
        type=_yaml_mapping,
        default={},
        metavar="YAML",
        help="the method's arguments as YAML, e.g. '{pooling: spca, batch_attention: batchformer, whitening: 512}' "
        "for --method compose (a training run's model_kwargs)",
    )


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a method's official test pipeline (resize, crop rounding, scales); other options override it",
    )
    p.add_argument("--image-size", type=int, help="longest image side, images are only shrunk (default 1024)")
    p.add_argument("--scales", type=_scale, nargs="+", help="multi-scale factors (default 1/sqrt2 1 sqrt2)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per forward pass (default: 1 on CPU, 16 on GPU)"
    )
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available; each rank's GPU)")


def _extract_config(args: argparse.Namespace, **chosen: Any) -> ExtractConfig:
    """The preset (or defaults) with the options given on the command line; ``chosen`` adds command-specific ones."""
    chosen |= {
        "image_size": args.image_size,
        "scales": tuple(args.scales) if args.scales else None,
        "batch_size": args.batch_size,
        "num_workers": args.workers or None,
        "device": args.device,
    }
    overrides = {k: v for k, v in chosen.items() if v is not None}
    return preset(args.preset, **overrides) if args.preset else ExtractConfig(**overrides)


def _create_model(args: argparse.Namespace) -> nn.Module:
    from irlib.models import create_model

    return create_model(
        args.method, backbone=args.backbone, pretrained=args.pretrained, weights=args.weights, **args.model_kwargs
    )


def _distractors(args: argparse.Namespace, list_file: str = "revisitop1m.txt") -> Distractors:
    on_missing = "skip" if args.skip_missing_distractors else "error"
    distractors = Distractors.from_list(args.distractors, list_file, on_missing=on_missing)
    if distractors.missing:
        print(f"{len(distractors.missing)} listed distractors are missing; using {len(distractors.paths)}")
    return distractors


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on a revisited-format dataset (Easy/Medium/Hard) or a universal benchmark "
        f"({', '.join(BENCHMARKS.names())}) with its official protocol",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset-dir", type=Path, help="folder with gnd_<name>.pkl and jpg/")
    where.add_argument("--data-root", type=Path, help="folder holding <dataset>/ (with --dataset)")
    p.add_argument(
        "--dataset",
        help=f"dataset under --data-root: a revisited one (e.g. roxford5k) or {', '.join(BENCHMARKS.names())}",
    )
    p.add_argument("--protocol", choices=("merged", "separate"), help="uned: merged index (default) or per domain")
    p.add_argument("--domains", nargs="+", help="uned: the domains to evaluate (default all)")
    p.add_argument("--query-boxes", action="store_true", help="ilias: crop queries to their first box (default full)")
    p.add_argument(
        "--database-features",
        type=Path,
        help="universal benchmarks: the database descriptors from `irlib extract --dataset NAME` (same model)",
    )
    _add_distractor_args(p, required=False)
    _add_model_args(p)
    _add_pipeline_args(p)
    p.add_argument("--no-crop", action="store_true", help="do not crop queries to their box")
    p.add_argument("--crop-mode", choices=CROP_MODES, help="box rounding (default round, as revisitop)")
    _add_runtime_args(p)
    p.add_argument("--fp16", action="store_true", help="store descriptors as float16")
    p.add_argument("--cache-dir", type=Path, help="reuse descriptors extracted before with the same settings")
    p.add_argument(
        "--distractor-features",
        type=Path,
        help="+1M from a folder written by `irlib extract` (same model and settings) instead of --distractors",
    )
    p.add_argument(
        "--rerank",
        choices=RERANKERS,
        help="rerank the ranking (shortlist from descriptors only); batch-dependent (a pair's score depends on the "
        f"rest of the shortlist): {', '.join(sorted(BATCH_DEPENDENT_RERANKERS))}",
    )
    p.add_argument(
        "--rerank-param", nargs="*", default=[], metavar="NAME=VALUE", help="reranker parameters, e.g. M=400 K=9"
    )
    p.add_argument(
        "--dba", nargs=2, metavar=("K", "ALPHA"), help="alpha-DBA of the database first: K neighbours (integer), ALPHA"
    )
    p.add_argument(
        "--search",
        choices=SEARCHES,
        default="exact",
        help="exact: score the whole database (default); faiss-flat / ivfpq: each query's top --shortlist from a "
        "faiss index, re-scored exactly (ivfpq also measures recall@100 against exact search)",
    )
    p.add_argument("--shortlist", type=int, help="faiss-flat / ivfpq: ranking length per query (default 1000)")
    p.add_argument("--nprobe", type=int, help="ivfpq: inverted lists scanned per query (default 16)")
    p.add_argument("--nlist", type=int, help="ivfpq: inverted lists (default 1024)")
    p.add_argument("--pq-m", dest="m", type=int, help="ivfpq: PQ sub-vectors, bytes per image at 8 bits (default 64)")
    p.add_argument("--pq-nbits", dest="nbits", type=int, help="ivfpq: bits per PQ sub-vector code (default 8)")
    p.add_argument("--train-size", type=int, help="ivfpq: training sample of database rows (default 65536)")
    p.add_argument("--out", type=Path, required=True, help="run folder for metrics.json and per_query.csv")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty --out")


_SEARCH_OPTIONS = ("shortlist", "nprobe", "nlist", "m", "nbits", "train_size")


def _search_options(args: argparse.Namespace) -> dict[str, int]:
    """The search parameters given on the command line (``--nprobe`` ...), named as ``search_params`` names them."""
    return {name: getattr(args, name) for name in _SEARCH_OPTIONS if getattr(args, name) is not None}


def _run_eval(args: argparse.Namespace) -> int:
    from irlib.data.registry import load_dataset
    from irlib.eval.pipeline import evaluate_model, save_result, summary_table

    if args.data_root is not None and not args.dataset:
        raise SystemExit("irlib eval: --data-root needs --dataset NAME")
    if args.dataset in BENCHMARKS:
        return _run_benchmark_eval(args)
    folder = args.dataset_dir if args.dataset_dir is not None else Path(args.data_root) / args.dataset
    dataset = load_dataset("revisited", folder, name=args.dataset)
    if args.distractors is not None:
        dataset = dataset.with_distractors(_distractors(args))
    cfg = _extract_config(
        args,
        crop_mode=args.crop_mode,
        crop_queries=False if args.no_crop else None,
        fp16=args.fp16 or None,
    )
    model = _create_model(args)
    with _run_folder(args.out, args.force) as out:
        result = evaluate_model(
            model,
            dataset,
            cfg,
            cache_dir=args.cache_dir,
            distractor_features=args.distractor_features,
            search=args.search,
            search_params=_search_options(args),
            rerank=args.rerank,
            rerank_params=_assignments(args.rerank_param, "--rerank-param"),
            dba=_dba(args.dba),
        )
        save_result(result, out)
    name = f"{args.method}/{args.backbone}" + (f" + {args.rerank}" if args.rerank else "")
    print(summary_table({name: result.metrics}).round(2).to_string())
    recall = result.metrics["settings"]["search"].get("recall@100")
    if recall:
        print(
            f"{args.search} recall@{recall['k']} against exact search: {recall['ranking']:.4f} (shortlist re-scored "
            f"exactly), {recall['index_order']:.4f} (index order)"
        )
    print(f"wrote {out / 'metrics.json'}")
    return 0


@contextlib.contextmanager
def _run_folder(out: Path, force: bool) -> Iterator[Path]:
    """The evaluation's ``--out`` folder (refused if it holds a run, unless ``force``); a failed evaluation removes it
    again when it created it and nothing was written."""
    from irlib.eval.pipeline import prepare_out_dir

    created = not out.exists()
    folder = prepare_out_dir(out, force=force)
    try:
        yield folder
    except BaseException:
        if created and not any(folder.iterdir()):  # leave no empty folder behind a failed run
            folder.rmdir()
        raise


_BENCHMARK_OPTIONS = {"protocol": "--protocol", "domains": "--domains", "query_boxes": "--query-boxes"}


def _benchmark(args: argparse.Namespace) -> Benchmark:
    """The universal benchmark ``--dataset`` under ``--data-root`` (or ``--dataset-dir``) with the options given."""
    options = {k: getattr(args, k, None) for k in _BENCHMARK_OPTIONS if getattr(args, k, None) not in (None, False)}
    takes = inspect.signature(BENCHMARKS.get(args.dataset)).parameters
    wrong = [_BENCHMARK_OPTIONS[k] for k in options if k not in takes]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} does not apply to {args.dataset}")
    root = args.data_root if args.data_root is not None else getattr(args, "dataset_dir", None)
    return load_benchmark(args.dataset, root, **options)


def _run_benchmark_eval(args: argparse.Namespace) -> int:
    from irlib.eval.pipeline import save_result, summary_table
    from irlib.eval.universal import evaluate_benchmark

    revisited_only = {
        "--distractors": args.distractors,
        "--distractor-features": args.distractor_features,
        "--rerank": args.rerank,
        "--dba": args.dba,
        "--no-crop": args.no_crop,
    }
    given = [flag for flag, value in revisited_only.items() if value]
    if given:
        raise ValueError(f"{', '.join(given)} apply to revisited datasets, not to {args.dataset}")
    bench = _benchmark(args)
    if args.preset is None:
        args.preset = bench.preset
    cfg = _extract_config(args, crop_mode=args.crop_mode, fp16=args.fp16 or None)
    model = _create_model(args)
    with _run_folder(args.out, args.force) as out:
        result = evaluate_benchmark(
            model,
            bench,
            cfg,
            cache_dir=args.cache_dir,
            database_features=args.database_features,
            search=args.search,
            search_params=_search_options(args),
        )
        save_result(result, out)
    print(summary_table({f"{args.method}/{args.backbone}": result.metrics}).round(2).to_string())
    print(f"wrote {out / 'metrics.json'}")
    return 0


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract distractor (R1M) or benchmark database descriptors into resumable fp16 chunks "
        "(one process, or `torchrun --nproc_per_node=N -m irlib extract ...`)",
    )
    _add_distractor_args(p, required=False)
    p.add_argument("--list-file", default="revisitop1m.txt", help="image list inside --distractors")
    p.add_argument("--data-root", type=Path, help="instead of --distractors: the root of --dataset")
    p.add_argument("--dataset", choices=BENCHMARKS.names(), help="extract this benchmark's database (with --data-root)")
    p.add_argument("--domains", nargs="+", help="uned: the domains whose index to extract (default all)")
    p.add_argument("--out", type=Path, required=True, help="feature folder; rerun the same command to resume")
    _add_model_args(p)
    _add_pipeline_args(p)
    _add_runtime_args(p)
    p.add_argument("--chunk-size", type=int, default=1024, help="images per chunk file (keep it when resuming)")


def _run_extract(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from irlib.eval.shards import extract_sharded, read_meta
    from irlib.train.run import init_distributed

    if (args.distractors is None) == (args.dataset is None) or (args.dataset is None) != (args.data_root is None):
        raise SystemExit("irlib extract: give either --distractors or --data-root with --dataset")
    if args.dataset is not None:
        bench = _benchmark(args)
        images, args.preset = bench.database_images, args.preset or bench.preset
    else:
        images = _distractors(args, args.list_file).paths
    cfg = _extract_config(args)
    started = init_distributed()
    try:
        path = extract_sharded(_create_model(args), images, args.out, cfg, chunk_size=args.chunk_size)
        if not dist.is_initialized() or dist.get_rank() == 0:
            meta = read_meta(args.out)
            print(f"wrote {path}: {meta['n_images']} x {meta['dim']} float16")
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-demo-data", help="generate the embedded demo dataset (deterministic)")
    p.add_argument("--out", type=Path, required=True, help="folder to write demo/ and train/ into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="regenerate even if the same data exists")


def _run_demo(args: argparse.Namespace) -> int:
    from irlib.data.synthetic import DemoConfig, make_demo_data

    path = make_demo_data(args.out, DemoConfig(seed=args.seed), force=args.force)
    print(f"demo data ready in {path}")
    return 0


def _add_summarize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summarize", help="print the metrics.json files under folders side by side")
    p.add_argument("runs", type=Path, nargs="+", help="run folders (searched recursively for metrics.json)")


def _run_summarize(args: argparse.Namespace) -> int:
    from irlib.eval.pipeline import summary_table

    runs = {}
    for root in args.runs:
        for path in sorted([root] if root.is_file() else root.rglob("metrics.json")):
            try:
                runs[str(path.parent)] = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{path} is not a readable metrics.json ({err}): rerun that evaluation or remove the file"
                ) from None
    if not runs:
        raise SystemExit(f"irlib summarize: no metrics.json under {', '.join(map(str, args.runs))}")
    print(summary_table(runs).round(2).to_string())
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a notebook with papermill over a parameter grid into OUT/NAME/<point>/ (resumable)"
    )
    p.add_argument("notebook", type=Path, help="the parameterised notebook (a cell tagged `parameters`)")
    p.add_argument("--name", help="sweep name: the folder under --out (default: the notebook's stem)")
    p.add_argument(
        "-p",
        "--param",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter and its values (read as YAML); repeat for a grid (cartesian product); a dotted name sets "
        "one key of a dict parameter (-p model_kwargs.pooling gem spca)",
    )
    p.add_argument("--out", type=Path, default=Path("runs"), help="folder of sweeps (default: runs)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel (default: python3)")
    p.add_argument("--cwd", type=Path, help="working folder of the notebook (default: the notebook's folder)")


def _run_sweep(args: argparse.Namespace) -> int:
    import yaml

    from irlib.results.sweep import run_sweep, summary

    grid = {}
    for name, *values in args.param:
        if not values:
            raise ValueError(f"-p {name} needs at least one value")
        if name in grid:
            raise ValueError(f"-p {name} is given twice")
        grid[name] = [yaml.safe_load(v) for v in values]
    results = run_sweep(args.notebook, args.name, grid, out=args.out, kernel=args.kernel, cwd=args.cwd)
    print(summary(results).to_string(index=False))
    failed = [r.name for r in results if r.status == "failed"]
    if failed:
        print(f"irlib sweep: {len(failed)} of {len(results)} points failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config (one process, or `torchrun --nproc_per_node=N -m irlib train ...`)",
    )
    p.add_argument("--config", type=Path, required=True, help="YAML of TrainConfig fields; `recipe: NAME` starts there")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override fields (values in YAML)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")
    p.add_argument("--force", action="store_true", help="start afresh even if OUT_DIR holds a checkpoint")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: apply changed training fields from the checkpoint's step on (recorded in the run)",
    )


def _run_train(args: argparse.Namespace) -> int:
    from irlib.train.config import TrainConfig
    from irlib.train.run import train

    cfg = TrainConfig.from_yaml(args.config)
    try:
        cfg = cfg.replace(**_assignments(args.set, "--set"))
    except ValueError as err:
        raise ValueError(f"--set: {err}") from None
    result = train(cfg, resume=args.resume, overwrite=args.force, allow_changes=args.allow_config_change)
    print(json.dumps(result))
    if result.get("preempted"):
        print(f"irlib train: preempted at step {result.get('step')}; resume with --resume", file=sys.stderr)
        return PREEMPTED
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    from irlib.data.download import list_downloads

    p = sub.add_parser("download", help="download datasets into --root (resumable, checksum-verified)")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"datasets: {', '.join(list_downloads())}")
    p.add_argument("--root", type=Path, default=Path("data"), help="folder to download into (default: data)")
    p.add_argument("--mirror", help="base URL replacing the scheme and host of every URL (the path is kept)")
    p.add_argument("--retries", type=int, default=5, help="attempts after the first for each file (default 5)")
    p.add_argument("--force", action="store_true", help="download again an existing file that fails verification")
    p.add_argument("--list", action="store_true", help="list the datasets (or the files of NAMEs), download nothing")


def _run_download(args: argparse.Namespace) -> int:
    from irlib.data.download import DATASETS, describe, download, list_downloads

    unknown = [name for name in args.names if name not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset {', '.join(unknown)}; available: {', '.join(list_downloads())}")
    if args.list:
        for name in args.names or list_downloads():
            print(describe(name))
            if args.names:
                print("\n".join(f"  {res.url} -> {res.dest}" for res in DATASETS[name]))
        return 0
    if not args.names:
        raise SystemExit(f"irlib download: name one or more datasets ({', '.join(list_downloads())}), or --list")
    for name in args.names:
        folder = download(name, args.root, mirror=args.mirror, retries=args.retries, force=args.force)
        print(f"{name} ready in {folder}")
    return 0


_COMMANDS = {
    "download": _run_download,
    "eval": _run_eval,
    "extract": _run_extract,
    "make-demo-data": _run_demo,
    "summarize": _run_summarize,
    "sweep": _run_sweep,
    "train": _run_train,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="irlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_download, _add_eval, _add_extract, _add_demo, _add_summarize, _add_sweep, _add_train):
        add(sub)
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, OSError, RuntimeError, FloatingPointError) as err:
        print(f"irlib {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
