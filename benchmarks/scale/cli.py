"""The scale benchmark's command line (`python -m benchmarks.scale`)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

from benchmarks.paths import MODELS_DIR

from .benchmark import run_benchmark
from .memory import machine_info, process_peak_rss_mib
from .pipeline import ensure_dataset
from .report import compare, summary_lines, write_outputs
from .stages import (
    DASK_WORKERS,
    DEFAULT_BASELINE_SUBSET,
    DEFAULT_PRODUCTS,
    OUT_DIR,
    SHORT_BASELINE_SUBSET,
    SHORT_PRODUCTS,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=sys.modules["benchmarks.scale"].__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=None, help=f"generated products (default {DEFAULT_PRODUCTS:,})")
    parser.add_argument(
        "--short", action="store_true", help=f"{SHORT_PRODUCTS:,} products, subset {SHORT_BASELINE_SUBSET} (CI)"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument(
        "--shards", type=int, default=None, help="product shards (default: the pipeline's, WB_PIPELINE_SHARDS else 4)"
    )
    parser.add_argument(
        "--executor",
        choices=("in_process", "multiprocess"),
        default="in_process",
        help="in_process: one process (as before); multiprocess: each step its own process, one "
        "at a time, its peak RSS measured there",
    )
    parser.add_argument(
        "--dask",
        action="store_true",
        help=f"also run the same selection on a local dask cluster ({DASK_WORKERS} worker "
        "processes x 1 thread) and report its wall time against the measured run's",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="print the shard-step peaks of earlier results files side by side, and exit",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="results, generated data and run folders")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="converted / exported models (reused)")
    parser.add_argument(
        "--baseline-subset",
        type=int,
        default=None,
        help=f"products in the text baseline (default {DEFAULT_BASELINE_SUBSET}, short {SHORT_BASELINE_SUBSET})",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="repetitions of the text baseline timings, median reported (default 3, short 1)",
    )
    parser.add_argument(
        "--keep-data",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the generated dataset for the next run (reused when its spec matches)",
    )
    parser.add_argument("--keep-storage", action="store_true", help="keep the run's output storage folder")
    parser.add_argument("--log-level", default=None, help="Dagster console log level (default: INFO, short: WARNING)")
    args = parser.parse_args()
    if args.compare:
        print(compare(args.compare))
        return 0
    n_products = args.products or (SHORT_PRODUCTS if args.short else DEFAULT_PRODUCTS)
    subset = args.baseline_subset or (SHORT_BASELINE_SUBSET if args.short else DEFAULT_BASELINE_SUBSET)
    reps = args.reps or (1 if args.short else 3)
    if n_products < 2 or subset < 1 or reps < 1 or (args.shards is not None and args.shards < 1):
        parser.error("--products must be >= 2, --baseline-subset, --reps and --shards >= 1")
    log_level = args.log_level or ("WARNING" if args.short else "INFO")

    load_start = os.getloadavg()
    machine = machine_info()
    data_dir = args.out / f"data-{n_products}-{args.seed}"
    print(f"scale benchmark: {n_products:,} products in {data_dir} ...", file=sys.stderr, flush=True)
    data = ensure_dataset(data_dir, n_products, args.seed)
    products = int(data["manifest"]["counts"]["products"])
    args.models.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f"run-{n_products}-", dir=args.out))
    try:
        results = run_benchmark(
            data_dir,
            work_dir,
            args.models,
            n_products=products,
            baseline_subset=subset,
            reps=reps,
            log_level=log_level,
            n_shards=args.shards,
            executor=args.executor,
            dask=args.dask,
        )
    finally:
        if not args.keep_storage:
            shutil.rmtree(work_dir, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    results["machine"] = machine
    results["load_average"] = {"start": load_start, "end": os.getloadavg()}
    results["data"] = {k: v for k, v in data.items() if k != "manifest"} | {
        "folder": str(data_dir),
        "counts": data["manifest"]["counts"],
    }
    results["process_peak_rss_mib"] = process_peak_rss_mib()
    json_path, md_path = write_outputs(results, args.out)

    print(
        f"\nScale benchmark: {products:,} generated products ({data['manifest']['counts']['train']:,} train, "
        f"{data['manifest']['counts']['test']:,} test), {results['n_shards']} shards, one "
        f"{args.executor.replace('_', '-')} Dagster run"
    )
    print(
        tabulate(
            results["table"]["lines"],
            headers=results["table"]["header"],
            disable_numparse=True,
            colalign=("left", *["right"] * (len(results["table"]["header"]) - 1)),
        )
    )
    for line in summary_lines(results):
        print(line)
    print(f"\nEvery step ({results['shards']['measured_in']} peak RSS):")
    print(
        tabulate(
            results["step_table"]["lines"],
            headers=results["step_table"]["header"],
            disable_numparse=True,
            colalign=("left", *["right"] * (len(results["step_table"]["header"]) - 1)),
        )
    )
    print(f"(results in {json_path} and {md_path})")
    return 0
