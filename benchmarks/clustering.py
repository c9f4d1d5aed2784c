"""The clustering step before / after sharing one reduction per space, in the same process.

Usage::

    .venv/bin/python -m benchmarks.clustering --storage storage/   # the embeddings a full run saved there
    .venv/bin/python -m benchmarks.clustering --short              # synthetic 600-product spaces (CI)

Variants, each `cluster_spaces` + `clustering_report` over the four spaces (text, image, early
concatenation, joint), after one small UMAP fit that pays numba's compilation for both:

- **baseline** (the step before issue 14): KMeans at the silhouette k and HDBSCAN, UMAP's own
  small-data distance path (`umap_precomputed_distances=False`), the 2-D picture from one more UMAP
  fit per space (`scatter_method="umap"`);
- **precomputed distances**: the baseline with the exact distance matrix computed in one compiled
  loop (`umap_precomputed_distances=True`);
- **now (default)**: that, plus the picture from the clustering space itself (no extra fit), plus
  KMeans at k = the number of known classes per target (the fair comparison: more work).

Prints wall and CPU seconds per variant, the ratio to the baseline, and whether the silhouette-k
KMeans and HDBSCAN labels are identical to the baseline's (they must be: same distances, seeds and
reduction). Never passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from wb_pipeline.core.models import clustering
from wb_pipeline.core.models.clustering import ClusteringConfig


def saved_spaces(storage_dir: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The four spaces and the known targets from a run's storage (through the pipeline's IO manager)."""
    from wb_pipeline.core.models.clustering import clustering_spaces
    from wb_pipeline.definitions import build_definitions

    defs = build_definitions(storage_dir=storage_dir)
    text, image, joint, labels = (
        defs.load_asset_value(name)
        for name in ("text_embeddings", "image_embeddings", "joint_embeddings", "product_labels")
    )
    return clustering_spaces(text, image, joint), clustering.known_targets(labels, text.nm)


def synthetic_spaces(n: int = 600, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Four noisy views of 12 categories (6 sub-categories each shared by two), a third of rows labelled."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 12, n)
    spaces = {}
    for position, (name, dim) in enumerate((("text", 48), ("image", 64), ("early_concat", 112), ("joint", 32))):
        centres = rng.normal(size=(12, dim)) * 3
        vectors = centres[category] + rng.normal(size=(n, dim)) * (1 + position % 2)
        spaces[name] = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    known = rng.random(n) < 0.34
    targets = {
        "category": np.where(known, [f"c{c}" for c in category], None).astype(object),
        "sub_category": np.where(known, [f"s{c // 2}" for c in category], None).astype(object),
    }
    return spaces, targets


def timed(spaces, targets, config: ClusteringConfig, equal_k: dict[str, int]):
    wall, cpu = time.perf_counter(), time.process_time()
    result = clustering.cluster_spaces(spaces, config, equal_k=equal_k)
    report = clustering.clustering_report(result, targets, {}, config)
    return result, report, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="synthetic 600-product spaces (CI)")
    parser.add_argument("--storage", help="a storage folder holding a full run's assets")
    args = parser.parse_args()
    spaces, targets = saved_spaces(args.storage) if args.storage and not args.short else synthetic_spaces()
    n = len(next(iter(spaces.values())))
    config = ClusteringConfig()
    warm_up = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    for precomputed in (False, True):  # numba compiles both paths before anything is timed
        clustering.umap_reduce(warm_up, 2, dataclasses.replace(config, umap_precomputed_distances=precomputed))
    equal_k = clustering.known_class_counts(targets)
    old_picture = dataclasses.replace(config, scatter_method="umap")
    variants = [
        (
            "baseline: UMAP's own distances, picture by one more UMAP per space",
            dataclasses.replace(old_picture, umap_precomputed_distances=False),
            {},
        ),
        ("precomputed exact distances", old_picture, {}),
        ("now: + picture from the clustering space, + equal-k KMeans", config, equal_k),
    ]
    print(f"{n} products, {len(spaces)} spaces, known classes {equal_k}")
    print("| variant | wall s | CPU s | wall ratio to baseline | CPU ratio | labels identical to baseline |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for name, variant_config, variant_equal_k in variants:
        result, report, wall, cpu = timed(spaces, targets, variant_config, variant_equal_k)
        baseline = baseline or (result, wall, cpu)
        same = all(
            np.array_equal(baseline[0][s].labels[a], result[s].labels[a]) for s in spaces for a in ("kmeans", "hdbscan")
        )
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {wall / baseline[1]:.2f} | {cpu / baseline[2]:.2f} | {same} |")
    print(clustering.lead_table(report, list(targets)).round(3).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
