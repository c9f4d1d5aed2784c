"""The data-weighted product vector for the joint space: which text share s recovers the known classes.

Usage::

    .venv/bin/python -m benchmarks.product_space_share storage/eval/flipkart              # after `make eval`
    .venv/bin/python -m benchmarks.product_space_share storage/eval/mango --seeds 3 --halves 50 --recipes umap,pca64
    .venv/bin/python -m benchmarks.product_space_share storage/eval/flipkart --short      # 1 seed, 10 halves, PCA-64

STORAGE_DIR is a run's storage folder (its `assets/` hold text_embeddings, image_embeddings,
joint_embeddings, product_labels, clean_products and image_index). Each side's encoder vectors are
centred and scaled to unit mean squared norm (`standardise`); the product vector for a text share s
is unit([√s·T, √(1−s)·I]) (`product_vector`). s is chosen on the grid 0, 0.1, …, 1 by equal-k AMI
(KMeans at k = the number of known classes of category / sub_category, PCA-64 recipe, mean over the
seeds and the two targets), CROSS-FITTED: chosen on one random half of the labelled products, scored
on the other half, over `--halves` random halves × both directions (`crossfit_share`). Without labels
the fallback is the ridge R² rule, s = (1 − R²(text|image)) / ((1 − R²(text|image)) + (1 − R²(image|text))),
group 5-fold over duplicate groups (`r2_rule_share`).

Prints, per recipe, the equal-k AMI mean ± sd over seeds of text, image, the plain concatenation,
today's joint vector (joint_embeddings' combined_joint), the product vector at the chosen s and at
the R² rule's s; with the chosen s, how often each s was chosen and the held-out scores. The write-up
is docs/DESIGN-NOTES.md, "The joint space on photo-led catalogues (open)". Never passes or fails on
a number.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold, KFold, cross_val_predict

from wb_pipeline.core.data.storage import as_upath, read_parquet
from wb_pipeline.core.embeddings.vectors import read_embedding_table
from wb_pipeline.core.model_selection.folds import duplicate_groups
from wb_pipeline.core.models import clustering
from wb_pipeline.core.models.clustering import CLUSTERING_RECIPES, ClusteringConfig, known_targets

SHARE_GRID = tuple(round(0.1 * i, 1) for i in range(11))
CHOICE_RECIPE = "pca64"  # s is chosen under the PCA-64 recipe (a grid of UMAP fits costs ~10× more)
SPLIT_SEED = 12345


# ---------------------------------------------------------------------------------------------
# Pure functions


def standardise(x: np.ndarray) -> np.ndarray:
    """Centred and scaled to unit mean squared norm (each side then carries the same total variance)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    scale = np.sqrt((centred**2).sum(axis=1).mean())
    return centred / max(scale, 1e-12)


def product_vector(text: np.ndarray, image: np.ndarray, share: float) -> np.ndarray:
    """unit([√s·text, √(1−s)·image]) as float32 [n, text dim + image dim]; s = the text's share."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"product_vector: share must be in [0, 1], got {share}")
    joined = np.hstack([np.sqrt(share) * np.asarray(text), np.sqrt(1.0 - share) * np.asarray(image)])
    norms = np.maximum(np.linalg.norm(joined, axis=1, keepdims=True), 1e-12)
    return (joined / norms).astype(np.float32)


def grid_labels(
    text: np.ndarray,
    image: np.ndarray,
    k_by_target: Mapping[str, int],
    config: ClusteringConfig,
    seeds: Sequence[int],
    grid: Sequence[float] = SHARE_GRID,
) -> dict[tuple[float, int, str], np.ndarray]:
    """KMeans labels at k = known classes, per (share, seed, target), of the standardised sides'
    product vector (every product clustered; only the scoring is split)."""
    text, image = standardise(text), standardise(image)
    labels = {}
    for share in grid:
        vectors = product_vector(text, image, share)
        for seed in seeds:
            seeded = replace(config, seed=int(seed))
            _, points = clustering.reduce_for_clustering(vectors, seeded)
            kmeans = clustering.KMeansByK(points, seeded)
            for target, k in k_by_target.items():
                labels[(float(share), int(seed), target)] = kmeans(max(2, min(k, len(points) - 1)))
    return labels


def masked_ami(values: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    """AMI of `labels` against the known `values` among the rows of `mask`."""
    known = mask & pd.Series(values, dtype=object).notna().to_numpy()
    if known.sum() < 2:
        return float("nan")
    return clustering.label_agreement(np.asarray(values, dtype=object)[known], labels[known])["ami"]


class ShareChoice(NamedTuple):
    share: float  # the most frequent choice over the folds (ties: the smaller share)
    held_out: dict[str, tuple[float, float]]  # per target: held-out AMI of each fold's choice, mean and sd
    frequency: dict[float, int]  # how many folds chose each share


def crossfit_share(
    text: np.ndarray,
    image: np.ndarray,
    targets: Mapping[str, np.ndarray],
    config: ClusteringConfig = CLUSTERING_RECIPES[CHOICE_RECIPE],
    seeds: Sequence[int] = (0,),
    halves: int = 10,
    grid: Sequence[float] = SHARE_GRID,
    split_seed: int = SPLIT_SEED,
) -> ShareChoice:
    """The text share chosen by equal-k AMI (mean over seeds and targets) on one random half of the
    labelled products and scored on the other half, over `halves` random halves × both directions."""
    k_by_target = clustering.known_class_counts(targets)
    if not k_by_target:
        raise ValueError("crossfit_share: no target with 2 or more known classes")
    targets = {t: np.asarray(targets[t], dtype=object) for t in k_by_target}
    labels = grid_labels(text, image, k_by_target, config, seeds, grid)
    n = len(text)
    labelled = np.zeros(n, bool)
    for values in targets.values():
        labelled |= pd.Series(values, dtype=object).notna().to_numpy()
    labelled_rows = np.flatnonzero(labelled)
    rng = np.random.default_rng(split_seed)

    def score(share: float, mask: np.ndarray, target: str) -> float:
        return float(
            np.mean([masked_ami(targets[target], labels[(float(share), int(s), target)], mask) for s in seeds])
        )

    chosen, held = [], {t: [] for t in targets}
    for _ in range(halves):
        first = np.zeros(n, bool)
        first[rng.permutation(labelled_rows)[: len(labelled_rows) // 2]] = True
        second = labelled & ~first
        for select, evaluate in ((first, second), (second, first)):
            means = [np.nanmean([score(share, select, t) for t in targets]) for share in grid]
            best = float(grid[int(np.nanargmax(means))])
            chosen.append(best)
            for t in targets:
                held[t].append(score(best, evaluate, t))
    counts = Counter(chosen)
    share = min(counts, key=lambda s: (-counts[s], s))
    return ShareChoice(
        share=share,
        held_out={t: (float(np.nanmean(v)), float(np.nanstd(v))) for t, v in held.items()},
        frequency={s: counts[s] for s in sorted(counts)},
    )


def r2_rule_share(
    text: np.ndarray, image: np.ndarray, groups: np.ndarray | None = None, alpha: float = 10.0, folds: int = 5
) -> tuple[float, dict[str, float]]:
    """The label-free share: each side weighted by what the other does not predict (ridge, 5-fold R²,
    folds by duplicate group when `groups` is given); returns (s, {"text|image": R², "image|text": R²})."""
    text, image = standardise(text), standardise(image)
    splitter = GroupKFold(folds) if groups is not None else KFold(folds, shuffle=True, random_state=0)
    r2 = {}
    for source, goal, name in ((image, text, "text|image"), (text, image, "image|text")):
        predicted = cross_val_predict(Ridge(alpha=alpha), source, goal, cv=splitter, groups=groups)
        r2[name] = float(1.0 - ((goal - predicted) ** 2).sum() / (goal**2).sum())  # goal is centred
    unique_text = max(1.0 - r2["text|image"], 0.0)
    unique_image = max(1.0 - r2["image|text"], 0.0)
    total = unique_text + unique_image
    return (unique_text / total if total > 0 else 0.5), r2


# ---------------------------------------------------------------------------------------------
# A run's stored vectors


def load_run(storage_dir: str | Path) -> dict[str, object]:
    """Row-aligned (by text_embeddings' nm) encoder vectors, today's joint vector, targets and duplicate groups."""
    from wb_pipeline.core.models.contrastive import joint_matrix, product_keys  # torch: only when run

    assets = Path(storage_dir) / "assets"

    def read(name: str) -> pd.DataFrame:
        return read_parquet(as_upath(assets / f"{name}.parquet"))

    text = read_embedding_table(as_upath(assets / "text_embeddings.parquet"))
    image = read_embedding_table(as_upath(assets / "image_embeddings.parquet")).subset(text.nm)
    nm = [str(v) for v in text.nm]
    joint_frame = read("joint_embeddings").drop_duplicates("nm").astype({"nm": str}).set_index("nm")
    joint = joint_matrix(joint_frame.loc[nm].reset_index(), "combined_joint")
    keys = product_keys(nm, read("clean_products"), read("image_index"))
    return {
        "text": text.vectors,
        "image": image.vectors,
        "joint": joint,
        "targets": known_targets(read("product_labels"), text.nm),
        "groups": duplicate_groups(keys["title_key"], keys["image_key"]),
    }


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
    choice = crossfit_share(text, image, targets, CLUSTERING_RECIPES[CHOICE_RECIPE], seeds, args.halves)
    t1 = time.perf_counter()
    rule_share, r2 = r2_rule_share(text, image, run["groups"])
    t2 = time.perf_counter()

    chosen_name = f"raw @ chosen s = {choice.share:.1f}"
    rule_name = f"raw @ R² rule s = {rule_share:.2f}"
    standard_text, standard_image = standardise(text), standardise(image)
    spaces = {
        "text": text,
        "image": image,
        "plain concatenation": np.hstack([text, image]) / np.sqrt(2.0),
        "joint today (combined_joint)": run["joint"],
        chosen_name: product_vector(standard_text, standard_image, choice.share),
        rule_name: product_vector(standard_text, standard_image, rule_share),
    }
    per_seed = clustering.equal_k_over_recipes(spaces, targets, {r: CLUSTERING_RECIPES[r] for r in recipes}, seeds)
    t3 = time.perf_counter()

    folds = sum(choice.frequency.values())
    print(
        f"s chosen by cross-fitted equal-k AMI ({CHOICE_RECIPE}, {args.halves} halves × 2 = {folds} folds): "
        f"{choice.share:.1f}; chosen {', '.join(f'{s:.1f}: {c}' for s, c in choice.frequency.items())}; "
        f"held-out AMI of each fold's choice "
        + ", ".join(f"{t} {m:.3f} ± {sd:.3f}" for t, (m, sd) in choice.held_out.items())
        + f" ({t1 - t0:.0f} s)"
    )
    print(
        f"R² rule (ridge, group 5-fold): text|image {r2['text|image']:.3f}, image|text {r2['image|text']:.3f} "
        f"-> s = {rule_share:.3f} ({t2 - t1:.1f} s)"
    )
    print(f"equal-k AMI, mean ± sd over {len(seeds)} seed(s) ({t3 - t2:.0f} s; total {t3 - started:.0f} s):")
    print(summary_table(per_seed, list(spaces), list(k_by_target)).to_markdown(index=False, disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
