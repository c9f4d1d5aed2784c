"""How much of a product's vector each modality gets: the share s of the text in the joint space's
product vector [√s · text, √(1−s) · image], each side centred and scaled to unit mean squared norm.

Why it is read from the data: the plain concatenation [t, i]/√2 is photo-heavy by construction (the
image encoder's centred variance is 4–7× the text encoder's), which serves a catalogue whose photos
carry the structure and loses one whose titles do; balanced by variance it is the other way round. No
fixed share serves both (docs/DESIGN-NOTES.md, "The joint space on photo-led catalogues").

- With known classes (`category` / `sub_category` of some products): s from a grid by equal-k AMI
  (KMeans at k = the classes, on the PCA recipe: cheap, and the deciding recipe agrees), CROSS-FITTED:
  on each of `halves` random splits of the labelled products s is chosen on one half and scored on the
  other, both ways; the share chosen most often is kept and the held-out score reported with it.
- Without: the ridge R² rule — each side weighted by the share of it the other side cannot predict
  (s = (1 − R²(text | image)) / ((1 − R²(text | image)) + (1 − R²(image | text)))). Never below the
  trained heads' vector where measured, but not photo-led enough on a photo-led catalogue: the
  metadata says the share is unvalidated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, cross_val_predict

from wb_pipeline.core.models.clustering import (
    CLUSTERING_RECIPES,
    ClusteringConfig,
    KMeansByK,
    known_class_counts,
    label_agreement,
    reduce_for_clustering,
)
from wb_pipeline.core.models.contrastive.model import side_statistics

RULE_CROSS_FITTED = "cross_fitted_equal_k"
RULE_R2 = "r2_unique_information"
RULE_PINNED = "pinned"
R2_MAX_ROWS = 5000  # the ridge fits on a seeded sample above this (the share moves by < 0.01 beyond)


@dataclass(frozen=True)
class ShareChoice:
    """The text's share of the product vector and how it was chosen."""

    share: float
    rule: str
    held_out_ami: float | None = None  # mean equal-k AMI on the halves the share was NOT chosen on
    chosen_counts: dict[float, int] = field(default_factory=dict)  # share -> how often it won a half
    r2_text_given_image: float | None = None
    r2_image_given_text: float | None = None

    def metadata(self) -> dict[str, object]:
        return {
            "product_text_share": self.share,
            "product_share_rule": self.rule,
            "product_share_held_out_ami": None if self.held_out_ami is None else round(self.held_out_ami, 4),
            "product_share_chosen_counts": {str(k): v for k, v in sorted(self.chosen_counts.items())},
        }


def weighted_vectors(text: np.ndarray, image: np.ndarray, share: float) -> np.ndarray:
    """Unit rows [√s · standardised text, √(1−s) · standardised image], statistics from these rows."""
    (text_mean, text_scale), (image_mean, image_scale) = side_statistics(text), side_statistics(image)
    parts = [
        np.sqrt(share) * (np.asarray(text, np.float32) - text_mean) / text_scale,
        np.sqrt(1.0 - share) * (np.asarray(image, np.float32) - image_mean) / image_scale,
    ]
    both = np.hstack(parts).astype(np.float32)
    return both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)


def share_grid(step: float) -> tuple[float, ...]:
    count = int(round(1.0 / step))
    return tuple(round(i / count, 4) for i in range(count + 1))


def r2_text_share(text: np.ndarray, image: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(share, R²(text | image), R²(image | text)) by 5-fold ridge predictions, on ≤ `R2_MAX_ROWS` rows."""
    rows = np.arange(len(text))
    if len(rows) > R2_MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, R2_MAX_ROWS, replace=False))
    t, i = np.asarray(text, np.float32)[rows], np.asarray(image, np.float32)[rows]
    folds = KFold(n_splits=min(5, len(rows)), shuffle=True, random_state=seed)

    def r2(target: np.ndarray, source: np.ndarray) -> float:
        predicted = cross_val_predict(Ridge(alpha=1.0), source, target, cv=folds)
        return float(np.clip(r2_score(target, predicted, multioutput="variance_weighted"), 0.0, 1.0))

    text_given_image, image_given_text = r2(t, i), r2(i, t)
    unique_text, unique_image = 1.0 - text_given_image, 1.0 - image_given_text
    total = unique_text + unique_image
    return (0.5 if total <= 0 else unique_text / total), text_given_image, image_given_text


def _cluster_labels(
    text: np.ndarray,
    image: np.ndarray,
    grid: Sequence[float],
    classes: Mapping[str, int],
    config: ClusteringConfig,
    seeds: Sequence[int],
) -> dict[tuple[float, int, str], np.ndarray]:
    """KMeans labels at k = classes for every (share, seed, target), on ALL products."""
    labels = {}
    for share in grid:
        vectors = weighted_vectors(text, image, share)
        for seed in seeds:
            _, points = reduce_for_clustering(vectors, replace(config, seed=int(seed)))
            kmeans = KMeansByK(points, replace(config, seed=int(seed)))
            for target, k in classes.items():
                labels[(share, int(seed), target)] = kmeans(max(2, min(k, len(points) - 1)))
    return labels


def choose_text_share(
    text: np.ndarray,
    image: np.ndarray,
    targets: Mapping[str, pd.Series | np.ndarray],
    *,
    step: float = 0.1,
    halves: int = 20,
    min_labelled: int = 50,
    seeds: Sequence[int] = (0,),
    config: ClusteringConfig = CLUSTERING_RECIPES["pca64"],
    seed: int = 0,
) -> ShareChoice:
    """The text's share of the product vector: cross-fitted equal-k AMI when at least `min_labelled`
    products carry a known class, else the R² rule (module docstring)."""
    values = {name: pd.Series(v, dtype=object).reset_index(drop=True) for name, v in targets.items()}
    known = {name: v.notna().to_numpy() for name, v in values.items()}
    labelled = np.flatnonzero(np.any(np.stack(list(known.values())), axis=0)) if known else np.array([], int)
    classes = {name: k for name, k in known_class_counts(values).items() if k >= 2}
    if len(labelled) < max(2, min_labelled) or not classes:
        share, text_given_image, image_given_text = r2_text_share(text, image, seed)
        return ShareChoice(round(share, 4), RULE_R2, None, {}, text_given_image, image_given_text)
    grid = share_grid(step)
    labels = _cluster_labels(text, image, grid, classes, config, seeds)

    def score(share: float, rows: np.ndarray) -> float:
        amis = []
        for target in classes:
            mask = np.zeros(len(text), bool)
            mask[rows] = True
            mask &= known[target]
            if mask.sum() < 2:
                continue
            for s in seeds:
                amis.append(
                    label_agreement(values[target][mask].to_numpy(), labels[(share, int(s), target)][mask])["ami"]
                )
        return float(np.mean(amis)) if amis else float("nan")

    rng = np.random.default_rng(seed)
    chosen, held_out = [], []
    for _ in range(halves):
        order = rng.permutation(labelled)
        first, second = order[: len(order) // 2], order[len(order) // 2 :]
        for pick, check in ((first, second), (second, first)):
            scores = {share: score(share, pick) for share in grid}
            best = max(grid, key=lambda share: (np.nan_to_num(scores[share], nan=-1.0), -abs(share - 0.5)))
            chosen.append(best)
            held_out.append(score(best, check))
    counts = Counter(chosen)
    full = {share: score(share, labelled) for share in counts}
    share = max(counts, key=lambda s: (counts[s], full[s]))
    return ShareChoice(float(share), RULE_CROSS_FITTED, float(np.nanmean(held_out)), dict(counts))
