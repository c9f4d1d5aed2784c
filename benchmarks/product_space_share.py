"""The data-weighted product vector for the joint space: which text share s recovers the known classes.

Usage::

    .venv/bin/python -m benchmarks.product_space_share storage/eval/flipkart              # after `make eval`
    .venv/bin/python -m benchmarks.product_space_share storage/eval/mango --seeds 3 --halves 50 --recipes umap,pca64
    .venv/bin/python -m benchmarks.product_space_share storage/eval/flipkart --short      # 1 seed, 10 halves, PCA-64

STORAGE_DIR is a run's storage folder (its `assets/` hold text_embeddings, image_embeddings,
joint_embeddings and product_labels). The product vector and the choice of the text's share s are the
pipeline's own (`wb_pipeline.core.models.product_space`, what `contrastive_model` runs): s by
cross-fitted equal-k AMI on the PCA-64 recipe over `--halves` random halves, and the ridge R² rule
that decides without known classes.

Prints, per recipe, the equal-k AMI mean ± sd over seeds of text, image, the plain concatenation,
the run's joint vectors (joint_embeddings: the heads' concatenation and the product vector the run
chose), the product vector at the chosen s and at the R² rule's s; with the chosen s, how often each s
was chosen and the held-out score. The write-up is docs/DESIGN-NOTES.md, "The joint space on photo-led
catalogues". Never passes or fails on a number.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wb_pipeline.core.data.storage import as_upath, read_parquet
from wb_pipeline.core.embeddings.vectors import read_embedding_table
from wb_pipeline.core.models import clustering, product_space
from wb_pipeline.core.models.clustering import CLUSTERING_RECIPES, known_targets

# ---------------------------------------------------------------------------------------------
# Pure functions


def load_run(storage_dir: str | Path) -> dict[str, object]:
    """Row-aligned (by text_embeddings' nm) encoder vectors, the run's joint vectors and the known classes."""
    from wb_pipeline.core.models.contrastive import JOINT_COLUMNS, joint_matrix  # torch: only when run

    assets = Path(storage_dir) / "assets"
    text = read_embedding_table(as_upath(assets / "text_embeddings.parquet"))
    image = read_embedding_table(as_upath(assets / "image_embeddings.parquet")).subset(text.nm)
    nm = [str(v) for v in text.nm]
    frame = read_parquet(as_upath(assets / "joint_embeddings.parquet")).drop_duplicates("nm").astype({"nm": str})
    frame = frame.set_index("nm").loc[nm].reset_index()
    joint = {column: joint_matrix(frame, column) for column in JOINT_COLUMNS if column in frame.columns}
    labels = read_parquet(as_upath(assets / "product_labels.parquet"))
    return {"text": text.vectors, "image": image.vectors, "joint": joint, "targets": known_targets(labels, text.nm)}


def summary_table(per_seed: pd.DataFrame, spaces: Sequence[str], targets: Sequence[str]) -> pd.DataFrame:
    """AMI 'mean ± sd' over seeds (the mean alone for one seed), one row per space, one column per (recipe, target)."""
    stats = per_seed.groupby(["recipe", "target", "space"])["ami"].agg(["mean", "std"])
    rows = []
    for space in spaces:
        row = {"space": space}
        for recipe in per_seed["recipe"].unique():
            for target in targets:
                mean, sd = stats.loc[(recipe, target, space)]
                row[f"{recipe} {target}"] = f"{mean:.3f}" if np.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("storage_dir", help="a `make eval` output folder, e.g. storage/eval/flipkart")
    parser.add_argument("--seeds", type=int, default=3, help="KMeans / reduction seeds (0..N-1)")
    parser.add_argument("--halves", type=int, default=50, help="random half-splits for the cross-fitted choice")
    parser.add_argument("--recipes", default="umap,pca64", help=f"of {sorted(CLUSTERING_RECIPES)}")
    parser.add_argument("--short", action="store_true", help="1 seed, 10 halves, PCA-64 only")
    args = parser.parse_args(argv)
    if args.short:
        args.seeds, args.halves, args.recipes = 1, 10, "pca64"
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in CLUSTERING_RECIPES]
    if unknown or not recipes or args.seeds < 1 or args.halves < 1:
        parser.error(f"--recipes from {sorted(CLUSTERING_RECIPES)}, --seeds and --halves >= 1")
    seeds = tuple(range(args.seeds))

    started = time.perf_counter()
    run = load_run(args.storage_dir)
    text, image, targets = run["text"], run["image"], run["targets"]
    k_by_target = clustering.known_class_counts(targets)
    if not k_by_target:
        print(f"{args.storage_dir}: no target with 2 or more known classes; nothing to compare")
        return 0
    labelled = {t: int(pd.Series(v, dtype=object).notna().sum()) for t, v in targets.items()}
    print(
        f"{args.storage_dir}: {len(text)} products, text {text.shape[1]}-d, image {image.shape[1]}-d; "
        f"labelled {labelled}, k {k_by_target}; seeds {list(seeds)}"
    )

    t0 = time.perf_counter()
    choice = product_space.choose_text_share(text, image, targets, halves=args.halves, seeds=seeds)
    t1 = time.perf_counter()
    rule_share, text_given_image, image_given_text = product_space.r2_text_share(text, image)
    t2 = time.perf_counter()

    chosen_name = f"raw @ chosen s = {choice.share:.1f}"
    rule_name = f"raw @ R² rule s = {rule_share:.2f}"
    spaces = {"text": text, "image": image, "plain concatenation": np.hstack([text, image]) / np.sqrt(2.0)}
    for column, name in (("heads_joint", "joint heads"), ("combined_joint", "the run's combined_joint")):
        if column in run["joint"]:
            spaces[name] = run["joint"][column]
    spaces[chosen_name] = product_space.weighted_vectors(text, image, choice.share)
    spaces[rule_name] = product_space.weighted_vectors(text, image, rule_share)
    per_seed = clustering.equal_k_over_recipes(spaces, targets, {r: CLUSTERING_RECIPES[r] for r in recipes}, seeds)
    t3 = time.perf_counter()

    print(
        f"s chosen by {choice.rule} ({args.halves} halves × 2): {choice.share:.1f}; chosen "
        f"{', '.join(f'{s:.1f}: {c}' for s, c in sorted(choice.chosen_counts.items()))}; held-out AMI "
        f"{'—' if choice.held_out_ami is None else f'{choice.held_out_ami:.3f}'} ({t1 - t0:.0f} s)"
    )
    print(
        f"R² rule (ridge, 5-fold): text|image {text_given_image:.3f}, image|text {image_given_text:.3f} "
        f"-> s = {rule_share:.3f} ({t2 - t1:.1f} s)"
    )
    print(f"equal-k AMI, mean ± sd over {len(seeds)} seed(s) ({t3 - t2:.0f} s; total {t3 - started:.0f} s):")
    print(summary_table(per_seed, list(spaces), list(k_by_target)).to_markdown(index=False, disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
