"""Drift of new-product drops against the catalogue, both statistics, with the REAL default encoders.

Usage::

    .venv/bin/python -m benchmarks.drop_drift            # 400-product catalogue, drops of 40
    .venv/bin/python -m benchmarks.drop_drift --short    # 160 products, drops of 30, 2 in-distribution drops

A generated catalogue (seed 11) gets three or four drops: `in-distribution` (the generator at
another seed: same categories, same language), `other-categories-en` (the generator with only
long-tail categories and English titles), `flipkart` (real products of `../shared/real/flipkart`
re-laid as a drop, when that folder exists; read only) and `in-distribution-2` (another seed). It
runs `reembed_new_products` (ingest + embed, real encoders), then per drop and modality the domain
classifier's held-out AUC and MMD² with its permutation p-value against the main catalogue (the
same functions `drop_drift` uses). Nothing is trained; thresholds are not tuned to these numbers.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from benchmarks.paths import MODELS_DIR
from wb_pipeline.core.models.classification import product_groups
from wb_pipeline.core.models.prediction import product_features
from wb_pipeline.core.monitoring import drift
from wb_pipeline.definitions import build_definitions
from wb_pipeline.defs.automation.jobs import product_drops
from wb_pipeline.sample_data import SampleSpec, write_sample
from wb_pipeline.sample_data.drops import write_drop

REAL_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "real" / "flipkart"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--real", type=Path, default=REAL_DEFAULT)
    parser.add_argument(
        "--null-drops", type=int, default=None, help="in-distribution drops, other generator seeds (default 6; short 2)"
    )
    parser.add_argument("--c", type=float, nargs="+", default=[1.0, 10.0], help="domain classifier C values")
    parser.add_argument("--models-dir", default=str(MODELS_DIR))
    args = parser.parse_args(argv)
    if args.null_drops is None:
        args.null_drops = 2 if args.short else 6
    if not 1 <= args.null_drops <= 6:
        parser.error("--null-drops must be 1..6 (seeds 91-96; 97 and 98 are the out-of-distribution drops)")
    root = Path(tempfile.mkdtemp(prefix="drop_drift_"))
    try:  # the run's storage is hundreds of MB: never left behind, even on a failure
        return measure_drops(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_drops(args: argparse.Namespace, root: Path) -> int:
    """The catalogue and its drops under `root`, one `reembed_new_products` run, the table."""
    n_catalogue, n_drop = (160, 30) if args.short else (400, 40)
    raw, incoming, sources = root / "raw", root / "incoming", root / "sources"
    write_sample(raw, SampleSpec(n_products=n_catalogue, seed=11))
    # Seeds must differ between sources: the generator's nm sequence follows the seed, and a repeated nm
    # is rejected as `duplicate_nm` (the out-of-distribution drops use 97 and 98, above the null drops' 91-96).
    specs = {
        f"in-distribution-{i}": SampleSpec(n_products=2 * n_drop, seed=90 + i) for i in range(1, args.null_drops + 1)
    }
    specs["other-categories-en"] = SampleSpec(
        n_products=2 * n_drop, seed=97, long_tail_fraction=1.0, english_title_rate=1.0
    )
    specs["other-categories-en-grey-noisy"] = SampleSpec(
        n_products=2 * n_drop,
        seed=98,
        long_tail_fraction=1.0,
        english_title_rate=1.0,
        grayscale_image_rate=0.6,
        image_noise_sigma=20.0,
        min_defects_from=10**9,
    )
    placed: dict[str, list[str]] = {}
    for name, spec in specs.items():
        write_sample(sources / name, spec)
        placed[name] = write_drop(sources / name, incoming / name, n_drop, seed=1)
    if args.real.exists():
        placed["flipkart"] = write_drop(args.real, incoming / "flipkart", n_drop, seed=1, splits=("train",))
    defs = build_definitions(
        raw_dir=str(raw), storage_dir=str(root / "storage"), incoming_dir=str(incoming), models_dir=args.models_dir
    )
    (root / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        drops = sorted(p.name for p in incoming.iterdir())
        instance.add_dynamic_partitions(product_drops.name, drops)
        started = time.perf_counter()
        result = defs.resolve_job_def("reembed_new_products").execute_in_process(instance=instance)
        assert result.success
        print(f"ingest + embed: {time.perf_counter() - started:.0f} s")
        clean = defs.load_asset_value("clean_products", instance=instance).drop_duplicates("nm").reset_index(drop=True)
        text = defs.load_asset_value("text_embeddings", instance=instance)
        image = defs.load_asset_value("image_embeddings", instance=instance)
        index = defs.load_asset_value("image_index", instance=instance)
        rejected = defs.load_asset_value("rejected_products", instance=instance)
    groups = product_groups(clean, index, "duplicates")
    main_mask = (clean["batch"] == "main").to_numpy()
    ref, _ = product_features(clean.loc[main_mask, "nm"], text, image)
    rows = []
    for name in drops:
        mask = (clean["batch"] == name).to_numpy()
        if mask.sum() < 2:  # nothing to judge: say so instead of failing the whole table
            reasons = rejected.loc[rejected["nm"].astype(str).isin(placed[name]), "reason"].value_counts().to_dict()
            print(
                f"drop {name}: {int(mask.sum())} clean products of {len(placed[name])} placed "
                f"(rejected: {reasons}; batches in clean_products: "
                f"{clean['batch'].value_counts().to_dict()}), not judged"
            )
            continue
        new, _ = product_features(clean.loc[mask, "nm"], text, image)
        for modality in ("text", "image"):
            t0 = time.perf_counter()
            aucs = {
                f"auc_C{c:g}": round(
                    drift.domain_classifier_auc(
                        ref[modality], new[modality], np.r_[groups[main_mask], groups[mask]], c=c
                    ),
                    3,
                )
                for c in args.c
            }
            t1 = time.perf_counter()
            mmd2, p, _ = drift.mmd_permutation_test(ref[modality], new[modality], permutations=200)
            t2 = time.perf_counter()
            rows.append(
                {
                    "drop": name,
                    "modality": modality,
                    "products": int(mask.sum()),
                    **aucs,
                    "mmd2": round(mmd2, 4),
                    "mmd_p": round(p, 4),
                    "auc_s": round((t1 - t0) / len(args.c), 2),
                    "mmd_s": round(t2 - t1, 2),
                }
            )
    print(f"catalogue: {int(main_mask.sum())} clean products")
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
