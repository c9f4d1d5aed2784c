"""Preprocessing throughput: the pipeline's vectorised core vs the notebook's per-row approach.

Usage::

    .venv/bin/python benchmarks/preprocessing.py            # 100,000 generated products
    .venv/bin/python benchmarks/preprocessing.py --short    # 5,000 (CI smoke run)

Both sides run on the same rows of ``generate_tables(SampleSpec(n_products=N, with_images=False))``,
each in its own fresh process (so peak RSS is its own), stage by stage:

* cleaning -- ``clean_products`` vs the notebook's ``clean_dataset`` (train and test);
* text -- title + description of every generated row (train and test): ``preprocess_text`` (plus
  ``normalize_raw_text``, which the pipeline also produces) vs ``TextPreprocessor._process_text``
  per row; missing text is ``""`` on both sides, so both see exactly the same rows;
* characteristics -- ``characteristics_table`` vs per-row ``_process_characteristics`` +
  ``CharExtractor`` (train);
* labels -- ``derive_labels`` vs the notebook's label cells (train).

Agreement: a row's outputs (preprocessed title and description; for train rows also the four
labels, compared after the cast to the label vocabulary that both pipelines end with, so an
out-of-vocabulary value counts as missing) are compared with the notebook's. The comparison is made
on the rows where the notebook is NOT buggy, defined mechanically: the row's notebook output is the
same with and without every documented bug fix (``NotebookFixes.all()``), and its characteristics
cell did not make the notebook raise. Residual differences are then the tokeniser (razdel in the
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
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

BENCH_DIR = Path(__file__).resolve().parent
LABELS = ("sex", "age_restrictions", "season", "fragility")
FIELDS = ("title", "description", *LABELS)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _all_text(train: pd.DataFrame, test: pd.DataFrame, column: str) -> pd.Series:
    return pd.concat([train[column], test[column]], ignore_index=True).astype(object)


def _run_pipeline(train: pd.DataFrame, test: pd.DataFrame) -> tuple[dict, pd.DataFrame, dict]:
    from wb_pipeline.core.characteristics import characteristics_table
    from wb_pipeline.core.cleaning import CleaningConfig, clean_products
    from wb_pipeline.core.labels import derive_labels
    from wb_pipeline.core.text import normalize_raw_text, preprocess_text

    timings = {}
    start = time.perf_counter()
    clean_products({"train": train, "test": test}, None, CleaningConfig(require_image=False))
    timings["cleaning"] = time.perf_counter() - start

    start = time.perf_counter()
    titles, descriptions = _all_text(train, test, "title"), _all_text(train, test, "description")
    title = preprocess_text(titles, "title")
    description = preprocess_text(descriptions, "description")
    normalize_raw_text(titles), normalize_raw_text(descriptions)
    timings["text"] = time.perf_counter() - start

    start = time.perf_counter()
    table = characteristics_table(train["nm"], train["characteristics"])
    timings["characteristics"] = time.perf_counter() - start

    start = time.perf_counter()
    labels = derive_labels(table.long, train["nm"]).labels
    timings["labels"] = time.perf_counter() - start

    out = pd.DataFrame({"title": title.to_numpy(dtype=object), "description": description.to_numpy(dtype=object)})
    for label in LABELS:
        out[label] = pd.Series(labels[label].astype(object).to_numpy(), dtype=object).reindex(out.index)
    return timings, out, {"rejected_cells": len(table.rejections)}


def _run_notebook(train: pd.DataFrame, test: pd.DataFrame) -> tuple[dict, pd.DataFrame, dict]:
    sys.path.insert(0, str(BENCH_DIR))
    import notebook_baseline as nb

    timings = {}
    start = time.perf_counter()
    nb.clean_dataset(train), nb.clean_dataset(test)
    timings["cleaning"] = time.perf_counter() - start

    start = time.perf_counter()
    titles, descriptions = _all_text(train, test, "title"), _all_text(train, test, "description")
    preprocessor = nb.TextPreprocessor()
    title = preprocessor.transform(titles, "title")
    description = preprocessor.transform(descriptions, "description")
    timings["text"] = time.perf_counter() - start

    start = time.perf_counter()
    raw_values, crashed = nb.extract_characteristics(train["characteristics"])
    timings["characteristics"] = time.perf_counter() - start

    start = time.perf_counter()
    labels = nb.derive_labels(raw_values)
    timings["labels"] = time.perf_counter() - start
    peak_before_fixed_runs = _peak_rss_mib()

    # Untimed: the same steps with every documented bug fixed, to find the rows the bugs touch.
    fixed = nb.NotebookFixes.all()
    fixed_text = nb.TextPreprocessor(fixes=fixed)
    fixed_labels = nb.derive_labels(raw_values, fixed)

    out = pd.DataFrame({"title": title.to_numpy(dtype=object), "description": description.to_numpy(dtype=object)})
    out["title_fixed"] = fixed_text.transform(titles, "title").to_numpy(dtype=object)
    out["description_fixed"] = fixed_text.transform(descriptions, "description").to_numpy(dtype=object)
    for label in LABELS:
        for column, frame in ((label, labels), (f"{label}_fixed", fixed_labels)):
            # The notebook can leave lists or floats in a label column; keep them as text.
            values = [v if isinstance(v, str) or v is None or v is np.nan else repr(v) for v in frame[label]]
            out[column] = pd.Series(values, dtype=object).reindex(out.index)
    out["crashed"] = pd.Series(crashed.to_numpy(), dtype=object).reindex(out.index).fillna(False).astype(bool)
    return timings, out, {"peak_rss_mib": peak_before_fixed_runs, "crashed_cells": int(crashed.sum())}


def worker(side: str, data_dir: Path, out_dir: Path) -> None:
    """Run one side in this (fresh) process and write its timings and outputs."""
    train = pd.read_parquet(data_dir / "train.parquet")
    test = pd.read_parquet(data_dir / "test.parquet")
    for frame in (train, test):
        frame["nm"] = frame["nm"].astype(str)
    rss_loaded = psutil.Process().memory_info().rss / 2**20
    runner = _run_pipeline if side == "pipeline" else _run_notebook
    timings, outputs, extra = runner(train, test)
    stats = {"timings": timings, "rss_loaded_mib": rss_loaded, "peak_rss_mib": _peak_rss_mib(), **extra}
    outputs.to_parquet(out_dir / f"{side}.parquet")
    (out_dir / f"{side}.json").write_text(json.dumps(stats))


def _as_label(value, vocabulary) -> str | None:
    return value if isinstance(value, str) and value in vocabulary else None


def compare(pipeline: pd.DataFrame, notebook: pd.DataFrame, n_train: int) -> dict:
    """Agreement of the pipeline with the notebook on the rows where the notebook is not buggy."""
    from wb_pipeline.core.schema import label_vocabularies

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
    clean = ~buggy
    return {
        "rows": len(pipeline),
        "notebook_buggy_rows": int(buggy.sum()),
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
    parser.add_argument("--worker", choices=["pipeline", "notebook"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.out)
        return

    from wb_pipeline.sample_data.generator import SampleSpec, generate_tables

    n_products = 5_000 if args.short else args.n
    train, test = generate_tables(SampleSpec(n_products=n_products, seed=args.seed, with_images=False))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        train.to_parquet(tmp_dir / "train.parquet")
        test.to_parquet(tmp_dir / "test.parquet")
        stats, outputs = {}, {}
        for side in ("notebook", "pipeline"):
            subprocess.run(
                [sys.executable, __file__, "--worker", side, "--data", str(tmp_dir), "--out", str(tmp_dir)],
                check=True,
            )
            stats[side] = json.loads((tmp_dir / f"{side}.json").read_text())
            outputs[side] = pd.read_parquet(tmp_dir / f"{side}.parquet")
    agreement = compare(outputs["pipeline"], outputs["notebook"], n_train=len(train))
    _print_table(n_products, len(train), len(test), stats, agreement)


def _print_table(n_products: int, n_train: int, n_test: int, stats: dict, agreement: dict) -> None:
    nb, ours = stats["notebook"], stats["pipeline"]
    print(f"\nPreprocessing benchmark: {n_products:,} generated products ({n_train:,} train, {n_test:,} test)")
    print(f"{'stage':<18}{'notebook s':>12}{'pipeline s':>12}{'speed-up':>10}")
    for stage in ("cleaning", "text", "characteristics", "labels"):
        a, b = nb["timings"][stage], ours["timings"][stage]
        print(f"{stage:<18}{a:>12.2f}{b:>12.2f}{a / b:>9.1f}x")
    total_nb, total_ours = sum(nb["timings"].values()), sum(ours["timings"].values())
    print(f"{'total':<18}{total_nb:>12.2f}{total_ours:>12.2f}{total_nb / total_ours:>9.1f}x")
    print(f"{'rows/s':<18}{n_products / total_nb:>12,.0f}{n_products / total_ours:>12,.0f}")
    print(f"{'peak RSS MiB':<18}{nb['peak_rss_mib']:>12.0f}{ours['peak_rss_mib']:>12.0f}")
    print(f"{'RSS after load':<18}{nb['rss_loaded_mib']:>12.0f}{ours['rss_loaded_mib']:>12.0f}")
    print(f"notebook raised on {nb['crashed_cells']:,} characteristics cells; pipeline rejected "
          f"{ours['rejected_cells']:,} with a reason")
    compared = agreement["compared_rows"]
    print(f"rows where the notebook is buggy (output changes when its bugs are fixed, or it raised): "
          f"{agreement['notebook_buggy_rows']:,} of {agreement['rows']:,}")
    print("  of which: " + ", ".join(f"{k} {v:,}" for k, v in agreement["buggy_per_field"].items()))
    print(f"identical outputs on the other {compared:,} rows: {agreement['identical_rows'] / max(compared, 1):.2%}")
    print("  per field: " + ", ".join(f"{f} {v:.2%}" for f, v in agreement["per_field"].items()))


if __name__ == "__main__":
    main()
