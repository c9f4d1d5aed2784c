"""Preprocessing throughput: the pipeline's vectorised core vs the notebook's per-row approach.

Usage::

    .venv/bin/python benchmarks/preprocessing.py            # 100,000 generated products
    .venv/bin/python benchmarks/preprocessing.py --short    # 5,000 (CI smoke run)

Both sides run on the same rows of ``generate_tables(SampleSpec(n_products=N, with_images=False))``,
each in its own fresh process (so peak RSS is its own), stage by stage. The pipeline side calls
exactly what the assets call, in the same order, on the same intermediate tables:

* cleaning -- ``clean_products`` (train and test, no image index) vs the notebook's
  ``clean_dataset`` (train and test);
* text -- ``build_product_text`` on the clean products (preprocessed AND natural title and
  description, the second fill) vs ``TextPreprocessor._process_text`` per row on every generated
  row's title and description (missing text is ``""``) plus the notebook's second fill;
* characteristics -- ``characteristics_table`` on the clean train products vs per-row
  ``_process_characteristics`` + ``CharExtractor`` (all train rows);
* labels -- ``derive_labels`` + ``assemble_labels`` vs the notebook's label cells (train).

Agreement: a row's outputs (preprocessed title and description; for train rows also the four
labels, compared after the cast to the label vocabulary that both pipelines end with, so an
out-of-vocabulary value counts as missing) are compared with the notebook's. The comparison is made
on the rows where the notebook is NOT buggy, defined mechanically: the row's notebook output is the
same with and without every documented bug fix (``NotebookFixes.all()``), and its characteristics
cell did not make the notebook raise; the fixes include the intended cleaning rule (fill a
missing title or description instead of dropping the row). Rows the pipeline's cleaning rejects
have no pipeline output and are left out (and counted). Residual differences are then the tokeniser (razdel in the
baseline vs the pipeline's regex tokeniser), the safe parser, and the label rules' refinements.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

BENCH_DIR = Path(__file__).resolve().parent
LABELS = ("sex", "age_restrictions", "season", "fragility")
FIELDS = ("title", "description", *LABELS)


class _Stopwatch:
    """Wall-clock and CPU seconds (all threads of this process) per stage.

    CPU seconds are the robust number on a shared machine: other processes stretch wall time,
    hardly CPU time.
    """

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name] = time.perf_counter() - wall
        self.cpu[name] = time.process_time() - cpu


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _all_text(train: pd.DataFrame, test: pd.DataFrame, column: str) -> pd.Series:
    return pd.concat([train[column], test[column]], ignore_index=True).astype(object)


def _run_pipeline(
    train: pd.DataFrame, test: pd.DataFrame, outputs: bool = True
) -> tuple[_Stopwatch, pd.DataFrame | None, dict]:
    """Exactly what the assets call: clean_and_rejected_products, product_text, parsed_characteristics,
    product_labels (without an image index: the benchmark has no images)."""
    from wb_pipeline.core.data.characteristics import characteristics_table
    from wb_pipeline.core.data.cleaning import CleaningConfig, clean_products
    from wb_pipeline.core.labels.rules import derive_labels
    from wb_pipeline.core.labels.table import assemble_labels
    from wb_pipeline.core.text.preprocessing import TextPreprocessingConfig
    from wb_pipeline.core.text.product_text import build_product_text

    watch = _Stopwatch()
    with watch.stage("cleaning"):
        clean = clean_products({"train": train, "test": test}, None, CleaningConfig(require_image=False)).clean

    with watch.stage("text"):
        product_text = build_product_text(clean, TextPreprocessingConfig())

    with watch.stage("characteristics"):
        clean_train = clean[clean["split"] == "train"]
        table = characteristics_table(clean_train["nm"], clean_train["characteristics"])

    with watch.stage("labels"):
        derivation = derive_labels(table.long, clean_train["nm"])
        labels = assemble_labels(clean, derivation.labels)

    extra = {"rejected_cells": len(table.rejections)}
    if not outputs:
        return watch, None, extra
    # Outputs in the generated row order; a row the pipeline's cleaning rejected has none.
    all_nm = pd.concat([train["nm"], test["nm"]], ignore_index=True).astype(object)
    present = all_nm.isin(set(clean["nm"])) & ~all_nm.duplicated()
    out = pd.DataFrame({"present": present.to_numpy()})
    by_nm = product_text.set_index("nm")
    for field, column in (("title", "title_preprocessed"), ("description", "description_preprocessed")):
        out[field] = all_nm.map(by_nm[column].astype(object)).where(present, None).to_numpy(dtype=object)
    label_by_nm = labels.set_index("nm")
    for label in LABELS:
        values = all_nm.map(label_by_nm[label].astype(object)).where(present, None)
        out[label] = pd.Series(values.to_numpy(dtype=object), dtype=object)
    return watch, out, extra


def _run_notebook(
    train: pd.DataFrame, test: pd.DataFrame, outputs: bool = True
) -> tuple[_Stopwatch, pd.DataFrame | None, dict]:
    sys.path.insert(0, str(BENCH_DIR))
    import notebook_baseline as nb

    watch = _Stopwatch()
    with watch.stage("cleaning"):
        nb.clean_dataset(train), nb.clean_dataset(test)

    with watch.stage("text"):
        titles, descriptions = _all_text(train, test, "title"), _all_text(train, test, "description")
        preprocessor = nb.TextPreprocessor()
        title = preprocessor.transform(titles, "title")
        description = preprocessor.transform(descriptions, "description")
        title, description = nb.fill_empty_preprocessed(title, description)

    with watch.stage("characteristics"):
        raw_values, crashed = nb.extract_characteristics(train["characteristics"])

    with watch.stage("labels"):
        labels = nb.derive_labels(raw_values)
    extra = {"peak_rss_mib": _peak_rss_mib(), "crashed_cells": int(crashed.sum())}
    if not outputs:
        return watch, None, extra

    # Untimed: the same steps with every documented bug fixed, to find the rows the bugs touch.
    fixed = nb.NotebookFixes.all()
    fixed_text = nb.TextPreprocessor(fixes=fixed)
    fixed_labels = nb.derive_labels(raw_values, fixed)

    out = pd.DataFrame({"title": title.to_numpy(dtype=object), "description": description.to_numpy(dtype=object)})
    if fixed.cleaning:
        titles, descriptions = nb.fill_missing_text(titles, descriptions)
    title_fixed, description_fixed = nb.fill_empty_preprocessed(
        fixed_text.transform(titles, "title"), fixed_text.transform(descriptions, "description")
    )
    out["title_fixed"] = title_fixed.to_numpy(dtype=object)
    out["description_fixed"] = description_fixed.to_numpy(dtype=object)
    for label in LABELS:
        for column, frame in ((label, labels), (f"{label}_fixed", fixed_labels)):
            # The notebook can leave lists or floats in a label column; keep them as text.
            values = [v if isinstance(v, str) or v is None or v is np.nan else repr(v) for v in frame[label]]
            out[column] = pd.Series(values, dtype=object).reindex(out.index)
    out["crashed"] = pd.Series(crashed.to_numpy(), dtype=object).reindex(out.index).fillna(False).astype(bool)
    return watch, out, extra


def worker(side: str, data_dir: Path, out_dir: Path, outputs: bool) -> None:
    """Run one side in this (fresh) process and write its timings (and outputs, if asked)."""
    train = pd.read_parquet(data_dir / "train.parquet")
    test = pd.read_parquet(data_dir / "test.parquet")
    for frame in (train, test):
        frame["nm"] = frame["nm"].astype(str)
    rss_loaded = psutil.Process().memory_info().rss / 2**20
    runner = _run_pipeline if side == "pipeline" else _run_notebook
    watch, table, extra = runner(train, test, outputs)
    stats = {
        "timings": watch.wall,
        "cpu_timings": watch.cpu,
        "rss_loaded_mib": rss_loaded,
        "peak_rss_mib": _peak_rss_mib(),
        **extra,
    }
    if table is not None:
        table.to_parquet(out_dir / f"{side}.parquet")
    (out_dir / f"{side}.json").write_text(json.dumps(stats))


def _as_label(value, vocabulary) -> str | None:
    return value if isinstance(value, str) and value in vocabulary else None


def compare(pipeline: pd.DataFrame, notebook: pd.DataFrame, n_train: int) -> dict:
    """Agreement of the pipeline with the notebook on the rows where the notebook is not buggy."""
    from wb_pipeline.core.data.schema import label_vocabularies

    vocab = label_vocabularies()
    is_train = pd.Series(pipeline.index < n_train, index=pipeline.index)
    buggy = notebook["crashed"].copy()
    same = pd.Series(True, index=pipeline.index)
    per_field, buggy_per_field = {}, {"characteristics_cell_raised": int(buggy.sum())}
    for field in FIELDS:
        if field in LABELS:
            ours = pipeline[field].map(lambda v: _as_label(v, vocab[field]))
            theirs = notebook[field].map(lambda v: _as_label(v, vocab[field]))
            fixed = notebook[f"{field}_fixed"].map(lambda v: _as_label(v, vocab[field]))
            applies = is_train
        else:
            ours, theirs, fixed = pipeline[field], notebook[field], notebook[f"{field}_fixed"]
            applies = pd.Series(True, index=pipeline.index)
        equal = (ours.fillna("\0") == theirs.fillna("\0")) | ~applies
        field_buggy = applies & (theirs.fillna("\0") != fixed.fillna("\0"))
        buggy_per_field[field] = int(field_buggy.sum())
        buggy |= field_buggy
        same &= equal
        per_field[field] = equal
    present = pipeline["present"].astype(bool)
    clean = ~buggy & present
    return {
        "rows": len(pipeline),
        "notebook_buggy_rows": int(buggy.sum()),
        "pipeline_rejected_rows": int((~present).sum()),
        "identical_rows": int((same & clean).sum()),
        "compared_rows": int(clean.sum()),
        "buggy_per_field": buggy_per_field,
        "per_field": {f: float(per_field[f][clean & (is_train if f in LABELS else True)].mean()) for f in FIELDS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="number of generated products")
    parser.add_argument("--short", action="store_true", help="5,000 products (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run both sides this many times (alternating which goes first); report per-stage medians",
    )
    parser.add_argument("--worker", choices=["pipeline", "notebook"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timings-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.out, outputs=not args.timings_only)
        return

    from wb_pipeline.sample_data.generator import SampleSpec, generate_tables

    n_products = 5_000 if args.short else args.n
    train, test = generate_tables(SampleSpec(n_products=n_products, seed=args.seed, with_images=False))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        train.to_parquet(tmp_dir / "train.parquet")
        test.to_parquet(tmp_dir / "test.parquet")
        runs: dict[str, list[dict]] = {"notebook": [], "pipeline": []}
        outputs = {}
        for repeat in range(max(args.repeats, 1)):
            order = ("notebook", "pipeline") if repeat % 2 == 0 else ("pipeline", "notebook")
            for side in order:
                command = [sys.executable, __file__, "--worker", side, "--data", str(tmp_dir), "--out", str(tmp_dir)]
                subprocess.run(command + ([] if repeat == 0 else ["--timings-only"]), check=True)
                runs[side].append(json.loads((tmp_dir / f"{side}.json").read_text()))
                if repeat == 0:
                    outputs[side] = pd.read_parquet(tmp_dir / f"{side}.parquet")
        stats = {side: _median_stats(side_runs) for side, side_runs in runs.items()}
    agreement = compare(outputs["pipeline"], outputs["notebook"], n_train=len(train))
    _print_table(n_products, len(train), len(test), stats, agreement)


def _median_stats(runs: list[dict]) -> dict:
    """Per-stage median wall and CPU seconds over the runs; memory and counts from the first run."""
    stats = dict(runs[0])
    for key in ("timings", "cpu_timings"):
        stats[key] = {stage: float(np.median([run[key][stage] for run in runs])) for stage in runs[0][key]}
    stats["runs"] = len(runs)
    return stats


def _print_table(n_products: int, n_train: int, n_test: int, stats: dict, agreement: dict) -> None:
    nb, ours = stats["notebook"], stats["pipeline"]
    runs = f", median of {nb['runs']} runs per side" if nb["runs"] > 1 else ""
    print(f"\nPreprocessing benchmark: {n_products:,} generated products ({n_train:,} train, {n_test:,} test){runs}")
    print(
        f"{'stage':<18}{'notebook s':>12}{'pipeline s':>12}{'speed-up':>10}"
        f"{'notebook cpu s':>16}{'pipeline cpu s':>16}{'cpu speed-up':>14}"
    )
    for stage in ("cleaning", "text", "characteristics", "labels", "total"):
        if stage == "total":
            a, b = sum(nb["timings"].values()), sum(ours["timings"].values())
            c, d = sum(nb["cpu_timings"].values()), sum(ours["cpu_timings"].values())
        else:
            a, b = nb["timings"][stage], ours["timings"][stage]
            c, d = nb["cpu_timings"][stage], ours["cpu_timings"][stage]
        print(f"{stage:<18}{a:>12.2f}{b:>12.2f}{a / b:>9.1f}x{c:>16.2f}{d:>16.2f}{c / d:>13.1f}x")
    total_nb, total_ours = sum(nb["timings"].values()), sum(ours["timings"].values())
    print(f"{'rows/s':<18}{n_products / total_nb:>12,.0f}{n_products / total_ours:>12,.0f}")
    print(f"{'peak RSS MiB':<18}{nb['peak_rss_mib']:>12.0f}{ours['peak_rss_mib']:>12.0f}")
    print(f"{'RSS after load':<18}{nb['rss_loaded_mib']:>12.0f}{ours['rss_loaded_mib']:>12.0f}")
    print(
        f"notebook raised on {nb['crashed_cells']:,} characteristics cells; pipeline rejected "
        f"{ours['rejected_cells']:,} with a reason"
    )
    compared = agreement["compared_rows"]
    print(
        f"rows where the notebook is buggy (output changes when its bugs are fixed, or it raised): "
        f"{agreement['notebook_buggy_rows']:,} of {agreement['rows']:,}"
    )
    print("  of which: " + ", ".join(f"{k} {v:,}" for k, v in agreement["buggy_per_field"].items()))
    print(f"rows the pipeline's cleaning rejected (no output to compare): {agreement['pipeline_rejected_rows']:,}")
    print(f"identical outputs on the other {compared:,} rows: {agreement['identical_rows'] / max(compared, 1):.2%}")
    print("  per field: " + ", ".join(f"{f} {v:.2%}" for f, v in agreement["per_field"].items()))


if __name__ == "__main__":
    main()
