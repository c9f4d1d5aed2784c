"""The equal-k clustering comparison over the joint trainer's seeds as well as UMAP/KMeans's.

On ~1k pairs the joint trainer's own seed moved the equal-k category AMI of the joint space by more
than the spaces differ (Flipkart 0.695 / 0.634 / 0.601 over training seeds 0 / 1 / 2 before the
distillation term; docs/DESIGN-NOTES.md), so a verdict from the run's one trained model is one draw.
Here the joint space is retrained on ALL pairs exactly as the `contrastive_model` asset trains it (the
run's saved config, only `seed` replaced) and re-clustered under the same clustering seeds; the
unimodal spaces do not depend on the training seed and are clustered once per clustering seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from wb_pipeline.core.models import clustering
from wb_pipeline.core.models.contrastive import ContrastiveConfig, train_joint_space


def retrained_joint_vectors(
    text: np.ndarray,
    image: np.ndarray,
    text_keys: Sequence,
    image_keys: Sequence,
    config: ContrastiveConfig,
    seeds: Sequence[int],
    text_share: float | None = None,
) -> dict[int, np.ndarray]:
    """training seed → the product vectors (as `joint_embeddings.combined_joint`) of the model trained on
    every pair with `config`'s seed replaced, with the run's product space (`text_share`; None: the heads'
    concatenation, a model saved without one)."""
    vectors = {}
    for seed in seeds:
        model, _ = train_joint_space(text, image, text_keys, image_keys, replace(config, seed=int(seed)))
        if text_share is not None:
            model.set_product_space(text, image, text_share)
        vectors[int(seed)] = model.product_vectors(text, image)
    return vectors


def equal_k_over_training_seeds(
    spaces: Mapping[str, np.ndarray],
    run_training_seed: int,
    retrained_joint: Mapping[int, np.ndarray],
    targets: Mapping[str, pd.Series | np.ndarray],
    recipes: Mapping[str, clustering.ClusteringConfig],
    cluster_seeds: Sequence[int],
) -> pd.DataFrame:
    """`clustering.equal_k_over_recipes` rows with a `train_seed` column: the run's spaces (its joint space
    under `run_training_seed`), then the joint space of each retrained model, every one under each
    recipe and `cluster_seeds`. `seed_comparison` then pools a space's rows over both kinds of seed."""
    parts = [
        clustering.equal_k_over_recipes(spaces, targets, recipes, cluster_seeds).assign(
            train_seed=int(run_training_seed)
        )
    ]
    for train_seed, vectors in retrained_joint.items():
        if int(train_seed) == int(run_training_seed):
            raise ValueError(f"equal_k_over_training_seeds: training seed {train_seed} is the run's own")
        parts.append(
            clustering.equal_k_over_recipes({"joint": vectors}, targets, recipes, cluster_seeds).assign(
                train_seed=int(train_seed)
            )
        )
    return pd.concat(parts, ignore_index=True)
