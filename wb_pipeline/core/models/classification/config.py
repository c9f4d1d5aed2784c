"""What the classification steps share: the labels and model names, the settings (`ClassificationConfig`),
one label's rows and groups (`prepare_label` -> `LabelData`, or a `LabelSkip` saying why not)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from wb_pipeline.core.data import schema
from wb_pipeline.core.model_selection.folds import (
    MAX_TITLE_PRODUCTS,
    brand_groups,
    duplicate_groups,
    specific_keys,
)
from wb_pipeline.core.models.fusion import (
    LateFusionClassifier,
)

LABELS = (*schema.DERIVED_LABEL_COLUMNS, *schema.TEST_LABEL_COLUMNS)


MODALITIES = ("text", "image")


UNIMODAL_MODELS = ("text", "image")


JOINT_MODEL = "joint"  # a regression on the joint space's combined vectors (only when they are given)


BASE_MODELS = ("text", "image", "early_fusion", JOINT_MODEL)


# The feature blocks each base model reads, in order; early fusion scales and weighs its two blocks.
MODEL_BLOCKS = {"text": ("text",), "image": ("image",), "early_fusion": MODALITIES, JOINT_MODEL: ("joint",)}


FUSION_MODELS = ("mean_probability", "late_fusion")


ZERO_SHOT_MODEL = "zero_shot"


ALL_MODELS = (*BASE_MODELS, *FUSION_MODELS)


OUTER, INNER = "outer", "inner"


PROBABILITY_COLUMNS = ("label", "model", "stage", "fold", "row", "nm", "y", "group", "proba")


@dataclass(frozen=True)
class ClassificationConfig:
    """Settings of the classifiers and of the validation scheme (seeds fixed)."""

    labels: tuple[str, ...] = LABELS
    n_splits: int = 5
    inner_splits: int = 3
    group_by: str = "duplicates"  # 'duplicates' (same specific title or same image) or 'brand'
    # A title shared by more products than this is generic, not a duplicate key (core.model_selection.folds).
    max_title_products: int = MAX_TITLE_PRODUCTS
    seed: int = 0
    min_labelled_rows: int = 30
    min_class_rows: int = 5  # rarer classes are dropped (counted); must be >= n_splits
    c_values: tuple[float, ...] = (1.0, 10.0)
    class_weights: tuple[str, ...] = ("none", "balanced")
    # Every feature block is divided by the root of its total variance on the training rows, so a
    # 1,280-d image block and a 384-d text block enter a regression on the same footing; early fusion
    # then weighs the image block by one of these factors, chosen by the inner folds with C.
    early_fusion_image_weights: tuple[float, ...] = (0.5, 1.0, 2.0)
    max_iter: int = 1000
    # One BLAS thread: on 2 shared cores, multi-threaded OpenBLAS made a 0.05 s fit take 2-3 s.
    blas_threads: int = 1
    # Speed of the nested CV (issue 14); none of these changes which problem a fit solves:
    # - row_space: when a training part has fewer rows than columns, solve the regression in the row
    #   space of its (scaled) design matrix (an exact rotation: an L2-penalised linear model's weights
    #   lie in that span), then map the weights back — e.g. 271 rows × 1,664 early-fusion columns;
    # - warm_start: along each inner fold's grid, start a fit from the previous setting's solution
    #   (C ascending within a class weight, then the next class weight) instead of from zero;
    # - n_jobs: outer folds run in that many processes (loky), each with `blas_threads` BLAS threads;
    #   results do not depend on it (every fit is deterministic and the folds are merged in order).
    #   2 = the 2 cores `make run` has: 1.35x (base models) / 1.43x (late fusion) faster than 1 with a
    #   core mostly idle; ~0.8-1.1x when other work already fills both cores (then set it to 1).
    row_space: bool = True
    warm_start: bool = True
    n_jobs: int = 2
    # LogisticRegression's solver, on the same penalised problem: newton-cg (Hessian-vector products, few
    # iterations) was 1.6-1.9x faster than warm-started lbfgs in the row space (benchmarks/classification_speed).
    solver: str = "newton-cg"  # newton-cg | lbfgs
    # Late fusion: which base models' out-of-fold probabilities it reads (those present), and the
    # tabular product features (price, brand frequency, out-of-fold brand target encoding, count of
    # characteristics). It boosts from its best input (see `core.models.fusion.LateFusionClassifier`).
    fusion_inputs: tuple[str, ...] = BASE_MODELS
    fusion_tabular: bool = True
    fusion_brand_smoothing: float = 10.0
    # Where the booster starts: bagged (the mixture of the inputs and their mean weighted by how often each
    # has the best macro-F1 over `fusion_start_bootstrap` resamples of the training rows) | auto (the
    # inputs' mean, or the best input when it beats the mean) | mean | best_block | block:<i>
    fusion_boost_from: str = "bagged"
    fusion_start_bootstrap: int = 200
    fusion_n_estimators: int = 200  # the most trees; early stopping on inner folds picks how many (maybe 0)
    fusion_early_stopping_rounds: int = 20
    fusion_gate_on_macro_f1: bool = True  # keep trees only when they raise inner out-of-fold macro-F1 ...
    fusion_gate_margin_se: float = 1.0  # ... by more than this many paired-bootstrap standard errors of the gain
    fusion_num_leaves: int = 4
    fusion_max_depth: int = 2
    fusion_learning_rate: float = 0.05
    fusion_min_child_samples: int = 20
    fusion_lambda_l2: float = 1.0
    fusion_class_weight: str = "balanced"
    # One LightGBM thread: on 2 shared cores, 2 OpenMP threads made a 2 s meta-model fit take ~110 s.
    fusion_n_jobs: int = 1

    def __post_init__(self) -> None:
        if self.group_by not in ("duplicates", "brand"):
            raise ValueError(f"group_by must be 'duplicates' or 'brand', got {self.group_by!r}")
        if self.min_class_rows < self.n_splits:
            raise ValueError(f"min_class_rows ({self.min_class_rows}) must be >= n_splits ({self.n_splits})")
        if self.inner_splits < 2 or self.n_splits < 2:
            raise ValueError("n_splits and inner_splits must be at least 2")
        unknown = set(self.class_weights) - {"none", "balanced"}
        if unknown or not self.class_weights or not self.c_values:
            raise ValueError(
                f"class_weights must be a non-empty subset of none/balanced (got {self.class_weights}) "
                f"and c_values non-empty (got {self.c_values})"
            )
        if not self.early_fusion_image_weights or min(self.early_fusion_image_weights) <= 0:
            raise ValueError(f"early_fusion_image_weights must be positive (got {self.early_fusion_image_weights})")
        if self.solver not in ("lbfgs", "newton-cg"):
            raise ValueError(f"solver must be 'lbfgs' or 'newton-cg', got {self.solver!r}")
        unknown_inputs = set(self.fusion_inputs) - set(BASE_MODELS)
        if unknown_inputs or not self.fusion_inputs:
            raise ValueError(f"fusion_inputs must be a non-empty subset of {BASE_MODELS}, got {self.fusion_inputs}")

    def late_fusion(self, classes: Sequence, n_prob_blocks: int = len(UNIMODAL_MODELS)) -> LateFusionClassifier:
        return LateFusionClassifier(
            classes=list(classes),
            n_prob_blocks=n_prob_blocks,
            boost_from=self.fusion_boost_from,
            n_estimators=self.fusion_n_estimators,
            num_leaves=self.fusion_num_leaves,
            max_depth=self.fusion_max_depth,
            learning_rate=self.fusion_learning_rate,
            min_child_samples=self.fusion_min_child_samples,
            lambda_l2=self.fusion_lambda_l2,
            class_weight=None if self.fusion_class_weight == "none" else self.fusion_class_weight,
            early_stopping_rounds=self.fusion_early_stopping_rounds,
            gate_on_macro_f1=self.fusion_gate_on_macro_f1,
            gate_margin_se=self.fusion_gate_margin_se,
            inner_splits=self.inner_splits,
            start_bootstrap=self.fusion_start_bootstrap,
            random_state=self.seed,
            n_jobs=self.fusion_n_jobs,
        )


@dataclass(frozen=True)
class LabelSkip:
    """A label that is not trained, with a machine-readable reason and a sentence for humans."""

    label: str
    reason: str  # absent | too_few_labelled | too_few_classes | too_few_groups
    detail: str


@dataclass
class LabelData:
    """The labelled rows of one label, row-aligned: ids, targets, groups and features."""

    label: str
    nm: np.ndarray
    y: np.ndarray
    classes: list[str]
    groups: np.ndarray
    features: dict[str, np.ndarray]
    dropped_classes: dict[str, int] = field(default_factory=dict)

    @property
    def positive_class(self) -> str | None:
        """For a binary label: the rarer class (хрупкий, isadult=True), whose F1 is reported."""
        if len(self.classes) != 2:
            return None
        counts = pd.Series(self.y).value_counts()
        return str(min(self.classes, key=lambda c: (counts.get(c, 0), c)))

    @property
    def models(self) -> tuple[str, ...]:
        """The base models this label can train: the joint one only when joint vectors were given."""
        return available_models(self.features)

    def blocks(self, model: str) -> list[np.ndarray]:
        return [self.features[block] for block in MODEL_BLOCKS[model]]


def available_models(features: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    return tuple(m for m in BASE_MODELS if all(block in features for block in MODEL_BLOCKS[m]))


def product_groups(
    clean_products: pd.DataFrame,
    image_index: pd.DataFrame | None,
    group_by: str,
    max_title_products: int = MAX_TITLE_PRODUCTS,
) -> np.ndarray:
    """Group id per clean product (row order kept): duplicate components or brands. Duplicates share
    a specific title (case-insensitive; one carried by at most `max_title_products` products, see
    `core.model_selection.folds.specific_keys`) or the image's content hash."""
    if group_by == "brand":
        if "brand" not in clean_products.columns:
            raise ValueError("group_by='brand' but clean_products has no 'brand' column")
        return brand_groups(clean_products["brand"])
    titles = clean_products["title"].astype("string").str.strip().str.casefold()
    keys = [specific_keys(titles.astype(object).to_numpy(), max_title_products)]
    if image_index is not None and "content_hash" in image_index.columns:
        hashes = clean_products[["nm"]].merge(
            image_index[["nm", "content_hash"]].drop_duplicates("nm"), on="nm", how="left"
        )["content_hash"]
        keys.append(hashes.astype(object).to_numpy())
    return duplicate_groups(*keys)


def prepare_label(
    labels: pd.DataFrame,
    label: str,
    features: Mapping[str, np.ndarray],
    groups: np.ndarray,
    config: ClassificationConfig,
) -> LabelData | LabelSkip:
    """The trainable rows of `label` (features row-aligned with `labels`), or why it is skipped."""
    if label not in labels.columns:
        return LabelSkip(label, "absent", f"no '{label}' column in the labels table")
    known = labels[label].notna().to_numpy()
    n_known = int(known.sum())
    if n_known < config.min_labelled_rows:
        return LabelSkip(
            label, "too_few_labelled", f"{n_known} labelled rows < min_labelled_rows={config.min_labelled_rows}"
        )
    y_all = labels.loc[known, label].astype(str).to_numpy(dtype=object)
    counts = pd.Series(y_all).value_counts()
    rare = counts[counts < config.min_class_rows]
    keep_rows = np.flatnonzero(known)[~np.isin(y_all, rare.index.to_numpy())]
    classes = sorted(counts[counts >= config.min_class_rows].index.astype(str))
    dropped = {str(k): int(v) for k, v in rare.items()}
    if len(classes) < 2:
        return LabelSkip(
            label,
            "too_few_classes",
            f"{len(classes)} class(es) with >= {config.min_class_rows} rows (rarer classes: {dropped})",
        )
    if len(keep_rows) < config.min_labelled_rows:
        return LabelSkip(
            label,
            "too_few_labelled",
            f"{len(keep_rows)} rows left after dropping rare classes < {config.min_labelled_rows}",
        )
    label_groups = np.asarray(groups)[keep_rows]
    n_groups = len(np.unique(label_groups))
    if n_groups < config.n_splits * config.inner_splits:
        return LabelSkip(
            label,
            "too_few_groups",
            f"{n_groups} duplicate groups < n_splits*inner_splits={config.n_splits * config.inner_splits}",
        )
    return LabelData(
        label=label,
        nm=labels["nm"].to_numpy(dtype=object)[keep_rows],
        y=labels[label].astype(str).to_numpy(dtype=object)[keep_rows],
        classes=classes,
        groups=label_groups,
        features={name: np.asarray(matrix, dtype=np.float32)[keep_rows] for name, matrix in features.items()},
        dropped_classes=dropped,
    )
