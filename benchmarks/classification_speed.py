"""The classification steps before / after issue 14's speed-ups, measured in the same process.

Usage::

    .venv/bin/python -m benchmarks.classification_speed --storage storage/   # a full run's saved embeddings
    .venv/bin/python -m benchmarks.classification_speed --short              # synthetic 360 products (CI)

What `label_classifiers` and `fusion_classifier` compute (nested CV of the base regressions, final
refits; late fusion's CV and final meta-model, `core.models.classification`), once per variant, variants
interleaved over `--reps` rounds so outside load hits all alike (the median is printed):

- **before**: every regression solved by lbfgs on all its columns from zero (`solver="lbfgs"`,
  `row_space=False`, `warm_start=False`) — the code before issue 14 (the inner folds, computed once
  per outer fold instead of once per base model, are the same folds);
- **row space**: a training part with fewer rows than columns solved in its rows' span (exact);
- **row space + warm starts**: + warm-started grid chains (C ascending within a class weight), lbfgs;
- **newton-cg, n_jobs=1**: the same with newton-cg;
- **now (default)**: that, with the outer folds in `n_jobs` (2) processes (helps only where a core
  is idle; the workers' CPU is not in the CPU column).

Per variant: wall and CPU seconds of the base models and of late fusion, the wall ratio to
`before`, and quality against `before` on the same rows: per label × model the held-out macro-F1
difference (largest |Δ|), the share of rows whose predicted class is the same, and of per-fold chosen
settings that are the same. Never passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import numpy as np
import pandas as pd

from wb_pipeline.core.models import classification as core
from wb_pipeline.core.models.classification import cross_validation

SHORT_PRODUCTS = 360


def saved_inputs(storage_dir: str):
    """(labels, features, groups, tabular) from a run's storage (through the pipeline's IO manager)."""
    from wb_pipeline.core.models.fusion import tabular_features
    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.classification.assets import _features

    defs = build_definitions(storage_dir=storage_dir)
    load = defs.load_asset_value
    labels = load("product_labels").reset_index(drop=True)
    clean_products, image_index = load("clean_products"), load("image_index")
    clean = labels[["nm"]].merge(clean_products.drop_duplicates("nm"), on="nm", how="left")
    groups = core.product_groups(clean, image_index, core.ClassificationConfig().group_by)
    features = _features(labels, load("text_embeddings"), load("image_embeddings"), load("joint_embeddings"))
    tabular = tabular_features(clean_products["nm"], clean_products, load("product_characteristics"))
    return labels, features, groups, tabular


def synthetic_inputs(n: int = SHORT_PRODUCTS, seed: int = 0):
    """Three labels (3, 8 and 2 classes) readable from noisy text / image / joint blocks; the image block
    is wider than an inner training part (as EfficientNet's 1,280 columns are for a few hundred rows)."""
    rng = np.random.default_rng(seed)
    targets = {"sex": rng.integers(0, 3, n), "category": rng.integers(0, 8, n), "fragility": rng.integers(0, 2, n)}
    features = {}
    for name, dim, noise in (("text", 48, 2.0), ("image", 256, 3.0), ("joint", 32, 2.5)):
        signal = sum(
            rng.normal(size=(k, dim))[t]
            for k, t in ((3, targets["sex"]), (8, targets["category"]), (2, targets["fragility"]))
        )
        features[name] = (signal + noise * rng.normal(size=(n, dim))).astype(np.float32)
    nm = [str(10_000 + i) for i in range(n)]
    labels = pd.DataFrame(
        {
            "nm": nm,
            "split": "train",
            **{label: pd.Categorical([f"{label}{v}" for v in values]) for label, values in targets.items()},
        }
    )
    tabular = pd.DataFrame(
        {
            "nm": nm,
            "brand": [f"b{v}" for v in rng.integers(0, 30, n)],
            "log_price": rng.normal(6, 1, n),
            "brand_frequency": rng.random(n),
            "n_characteristics": rng.integers(0, 20, n).astype(float),
        }
    )
    return labels, features, np.arange(n), tabular


def run_variant(labels, features, groups, tabular, config: core.ClassificationConfig) -> dict:
    """Base models (nested CV + final refits) then late fusion (CV + final), as the two assets run them."""
    wall, cpu = time.perf_counter(), time.process_time()
    frames, choices = [], []
    for label in config.labels:
        data = core.prepare_label(labels, label, features, groups, config)
        if isinstance(data, core.LabelSkip):
            continue
        cv = core.cross_validate_label(data, config)
        core.fit_final_base_models(data, cv.final_settings, config)
        frames.append(cv.probabilities)
        choices.append(cv.choices[cv.choices["chosen"]])
    base_wall, base_cpu = time.perf_counter() - wall, time.process_time() - cpu
    probabilities = pd.concat(frames, ignore_index=True)
    wall, cpu = time.perf_counter(), time.process_time()
    fused = []
    for label in probabilities["label"].unique():
        classes = core.label_classes(probabilities, label)
        fused.append(core.cross_validate_fusion(probabilities, label, classes, config, tabular)[0])
        core.fit_final_late_fusion(probabilities, label, classes, config, tabular)
    fusion_wall, fusion_cpu = time.perf_counter() - wall, time.process_time() - cpu
    outer = pd.concat([probabilities[probabilities["stage"] == core.OUTER], *fused], ignore_index=True)
    return {
        "base_wall": base_wall,
        "base_cpu": base_cpu,
        "fusion_wall": fusion_wall,
        "fusion_cpu": fusion_cpu,
        "outer": outer.sort_values(["label", "model", "row"], ignore_index=True),
        "choices": pd.concat(choices, ignore_index=True)[
            ["label", "model", "fold", "C", "class_weight", "image_weight"]
        ],
    }


def quality(result: dict) -> pd.DataFrame:
    rows = []
    for (label, model), part in result["outer"].groupby(["label", "model"], sort=False):
        classes = core.label_classes(result["outer"][result["outer"]["label"] == label], label)
        rows.append(
            {
                "label": label,
                "model": model,
                "macro_f1": cross_validation._macro_f1(
                    part["y"].to_numpy(), np.vstack(part["proba"].to_numpy()), classes
                ),
                "predicted": core.predicted_classes(part, classes),
            }
        )
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help=f"synthetic {SHORT_PRODUCTS} products, 1 round (CI)")
    parser.add_argument("--storage", help="a storage folder holding a full run's assets (default: synthetic)")
    parser.add_argument("--reps", type=int, default=None, help="rounds of all variants (default 2, short 1)")
    parser.add_argument("--variants", nargs="*", help="names to run (default: all)")
    args = parser.parse_args()
    inputs = saved_inputs(args.storage) if args.storage and not args.short else synthetic_inputs()
    reps = args.reps or (1 if args.short else 2)
    default = core.ClassificationConfig()
    before = dataclasses.replace(default, row_space=False, warm_start=False, solver="lbfgs", n_jobs=1)
    variants = {
        "before": before,
        "row space": dataclasses.replace(before, row_space=True),
        "row space + warm starts": dataclasses.replace(before, row_space=True, warm_start=True),
        "newton-cg, n_jobs=1": dataclasses.replace(default, n_jobs=1),
        f"now (default: newton-cg, n_jobs={default.n_jobs})": default,
    }
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants or k == "before"}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, config in variants.items():
            runs[name].append(run_variant(*inputs, config))
    print(f"{len(inputs[0])} products, {reps} round(s), variants interleaved; medians")
    print(
        "| variant | base models wall s | CPU s | ratio to before | late fusion wall s | CPU s | ratio to before "
        "| max abs Δ macro-F1 | same predicted class | same chosen settings |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    med = {
        name: {
            key: statistics.median(r[key] for r in result)
            for key in ("base_wall", "base_cpu", "fusion_wall", "fusion_cpu")
        }
        for name, result in runs.items()
    }
    reference = quality(runs["before"][0])
    for name, result in runs.items():
        own = quality(result[0])
        delta = (own["macro_f1"] - reference["macro_f1"]).abs().max()
        same = np.mean(np.concatenate([a == b for a, b in zip(own["predicted"], reference["predicted"])]))
        chosen = (result[0]["choices"].to_numpy() == runs["before"][0]["choices"].to_numpy()).all(axis=1).mean()
        m, b = med[name], med["before"]
        print(
            f"| {name} | {m['base_wall']:.1f} | {m['base_cpu']:.1f} | {b['base_wall'] / m['base_wall']:.2f}× "
            f"| {m['fusion_wall']:.1f} | {m['fusion_cpu']:.1f} | {b['fusion_wall'] / m['fusion_wall']:.2f}× "
            f"| {delta:.4f} | {same:.4f} | {chosen:.3f} |"
        )
    table = pd.concat(
        {name: quality(result[0]).set_index(["label", "model"])["macro_f1"] for name, result in runs.items()}, axis=1
    )
    print("\nheld-out macro-F1 per label × model\n")
    print(table.round(4).to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
