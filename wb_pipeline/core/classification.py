"""Per-label attribute classifiers on the embeddings, evaluated with nested, group-aware CV.

For each label (sex, age_restrictions, season, fragility, category, sub_category, isadult):

- `prepare_label` picks the labelled rows, drops classes too small for the folds (counted) and
  says why a label is skipped (`LabelSkip`) instead of raising;
- `cross_validate_label` runs the OUTER group-aware K-fold. Inside every outer training part an
  INNER group-aware K-fold chooses the LogisticRegression settings (class_weight, C) per modality
  by inner macro-F1 and yields inner out-of-fold probabilities; then the chosen model is refit on
  the whole outer training part and predicts the outer validation part. Modalities: text, image,
  early fusion (concatenated vectors). Its output (`PROBABILITY_COLUMNS`) holds the 'outer'
  predictions (every row once, by models that never saw it) and the 'inner' out-of-fold
  probabilities of the training rows of each outer fold;
- `cross_validate_fusion` trains the late-fusion meta-model of outer fold f ONLY on the 'inner'
  probabilities of fold f's training rows and predicts fold f's 'outer' probabilities, so nothing
  about a validation row ever reaches the meta-model; mean-probability fusion is the baseline;
- `zero_shot_predictions` scores each class name against the products' joint text-image vectors
  (argmax of cosines; nothing trained) on the SAME outer rows, as the baseline model 'zero_shot';
- `build_report` scores every model on the outer predictions (macro/weighted F1, minority-class
  F1 for binary labels, per-class F1, bootstrap intervals);
- `fit_final_models` refits every model on all labelled rows (the meta-model on the outer
  out-of-fold probabilities, as in stacking) for the test predictions.

Rare classes: a class with fewer than `min_class_rows` (>= n_splits) labelled rows cannot be
present in every fold, so its rows are DROPPED from training and evaluation of that label and
counted (`LabelData.dropped_classes`); the models never predict it. Merging them into an 'other'
class was rejected: 'other' is not a value of any label vocabulary and mixes unrelated classes.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd
from joblib import delayed
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits
from upath import UPath

from wb_pipeline.core import schema, storage, worker_pool
from wb_pipeline.core.fusion import (
    TABULAR_COLUMNS,
    BrandTargetEncoding,
    LateFusionClassifier,
    MeanProbabilityFusion,
    load_brand_encoding,
    load_late_fusion,
    out_of_fold_brand_encoding,
    save_brand_encoding,
    save_late_fusion,
)
from wb_pipeline.core.metrics import MetricsConfig, paired_macro_f1_gain, per_class_f1, scores_with_intervals
from wb_pipeline.core.validation import (
    MAX_TITLE_PRODUCTS,
    brand_groups,
    duplicate_groups,
    group_stratified_folds,
    specific_keys,
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
    # A title shared by more products than this is generic, not a duplicate key (core.validation).
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
    # characteristics). It boosts from its best input (see `core.fusion.LateFusionClassifier`).
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
            raise ValueError(f"class_weights must be a non-empty subset of none/balanced (got {self.class_weights}) "
                             f"and c_values non-empty (got {self.c_values})")
        if not self.early_fusion_image_weights or min(self.early_fusion_image_weights) <= 0:
            raise ValueError(f"early_fusion_image_weights must be positive (got {self.early_fusion_image_weights})")
        if self.solver not in ("lbfgs", "newton-cg"):
            raise ValueError(f"solver must be 'lbfgs' or 'newton-cg', got {self.solver!r}")
        unknown_inputs = set(self.fusion_inputs) - set(BASE_MODELS)
        if unknown_inputs or not self.fusion_inputs:
            raise ValueError(f"fusion_inputs must be a non-empty subset of {BASE_MODELS}, got {self.fusion_inputs}")

    def late_fusion(self, classes: Sequence, n_prob_blocks: int = len(UNIMODAL_MODELS)) -> LateFusionClassifier:
        return LateFusionClassifier(
            classes=list(classes), n_prob_blocks=n_prob_blocks, boost_from=self.fusion_boost_from,
            n_estimators=self.fusion_n_estimators, num_leaves=self.fusion_num_leaves,
            max_depth=self.fusion_max_depth, learning_rate=self.fusion_learning_rate,
            min_child_samples=self.fusion_min_child_samples, lambda_l2=self.fusion_lambda_l2,
            class_weight=None if self.fusion_class_weight == "none" else self.fusion_class_weight,
            early_stopping_rounds=self.fusion_early_stopping_rounds, gate_on_macro_f1=self.fusion_gate_on_macro_f1,
            gate_margin_se=self.fusion_gate_margin_se,
            inner_splits=self.inner_splits, start_bootstrap=self.fusion_start_bootstrap,
            random_state=self.seed, n_jobs=self.fusion_n_jobs,
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


@contextmanager
def _quiet_fits(config: ClassificationConfig) -> Iterator[None]:
    with threadpool_limits(limits=config.blas_threads), warnings.catch_warnings():
        # Expected inside small inner folds; the outer class counts are reported instead.
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn.model_selection")
        yield


def product_groups(clean_products: pd.DataFrame, image_index: pd.DataFrame | None, group_by: str,
                   max_title_products: int = MAX_TITLE_PRODUCTS) -> np.ndarray:
    """Group id per clean product (row order kept): duplicate components or brands. Duplicates share
    a specific title (case-insensitive; one carried by at most `max_title_products` products, see
    `core.validation.specific_keys`) or the image's content hash."""
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
        return LabelSkip(label, "too_few_labelled",
                         f"{n_known} labelled rows < min_labelled_rows={config.min_labelled_rows}")
    y_all = labels.loc[known, label].astype(str).to_numpy(dtype=object)
    counts = pd.Series(y_all).value_counts()
    rare = counts[counts < config.min_class_rows]
    keep_rows = np.flatnonzero(known)[~np.isin(y_all, rare.index.to_numpy())]
    classes = sorted(counts[counts >= config.min_class_rows].index.astype(str))
    dropped = {str(k): int(v) for k, v in rare.items()}
    if len(classes) < 2:
        return LabelSkip(label, "too_few_classes",
                         f"{len(classes)} class(es) with >= {config.min_class_rows} rows (rarer classes: {dropped})")
    if len(keep_rows) < config.min_labelled_rows:
        return LabelSkip(label, "too_few_labelled",
                         f"{len(keep_rows)} rows left after dropping rare classes < {config.min_labelled_rows}")
    label_groups = np.asarray(groups)[keep_rows]
    n_groups = len(np.unique(label_groups))
    if n_groups < config.n_splits * config.inner_splits:
        return LabelSkip(label, "too_few_groups",
                         f"{n_groups} duplicate groups < n_splits*inner_splits={config.n_splits * config.inner_splits}")
    return LabelData(
        label=label,
        nm=labels["nm"].to_numpy(dtype=object)[keep_rows],
        y=labels[label].astype(str).to_numpy(dtype=object)[keep_rows],
        classes=classes,
        groups=label_groups,
        features={name: np.asarray(matrix, dtype=np.float32)[keep_rows] for name, matrix in features.items()},
        dropped_classes=dropped,
    )


# --- unimodal logistic regressions -------------------------------------------------------------

Setting = tuple[float, str, float]  # (C, class_weight, image block weight — early fusion only)


def block_scales(blocks: Sequence[np.ndarray]) -> list[float]:
    """Per block: the root of its total variance (sum over columns), 1 for a constant block."""
    scales = []
    for block in blocks:
        total = float(np.asarray(block, dtype=np.float64).var(axis=0).sum())
        scales.append(np.sqrt(total) if total > 0 else 1.0)
    return scales


@dataclass
class _Design:
    """The scaled design matrix a regression is solved on, and how its weights map back to raw columns.

    `X` = the stacked blocks, each times its factor (`column_factors`); with `basis` (n × d, orthonormal
    rows spanning the rows of the scaled matrix), `X` holds the rows' coordinates in that basis instead
    (n × n, n < d). An L2-penalised linear model's weights lie in the span of its training rows
    (any other component changes no logit and only adds penalty), so solving on the coordinates and
    mapping back (`coef @ basis`) solves the same problem with n instead of d weights per class."""

    X: np.ndarray
    column_factors: np.ndarray
    basis: np.ndarray | None = None

    def raw_coef(self, coef: np.ndarray) -> np.ndarray:
        full = coef if self.basis is None else coef @ self.basis
        return (full * self.column_factors).astype(coef.dtype)


def _design(blocks: Sequence[np.ndarray], image_weight: float, row_space: bool) -> _Design:
    weights = [1.0, image_weight] if len(blocks) == 2 else [1.0] * len(blocks)
    factors = [w / s for w, s in zip(weights, block_scales(blocks))]
    X = np.hstack([np.asarray(b, dtype=np.float32) * np.float32(f) for b, f in zip(blocks, factors)])
    column_factors = np.concatenate([np.full(b.shape[1], f, dtype=np.float64) for b, f in zip(blocks, factors)])
    if not row_space or X.shape[0] >= X.shape[1]:
        return _Design(X, column_factors)
    # X.T = Q R (Householder, float64): Q's columns are an orthonormal basis of the rows' span and the
    # rows' coordinates in it are R.T. A rank-deficient X (duplicate rows) only gives zero columns,
    # whose weights the penalty keeps at 0.
    q, r = np.linalg.qr(X.T.astype(np.float64))
    return _Design(np.ascontiguousarray(r.T, dtype=np.float32), column_factors, np.ascontiguousarray(q.T, dtype=np.float32))


def _solve(design: _Design, y: np.ndarray, c_value: float, class_weight: str, max_iter: int,
           warm: LogisticRegression | None = None, solver: str = "lbfgs") -> tuple[LogisticRegression, LogisticRegression]:
    """(the solver's model on `design.X` — reusable as the next warm start —, a copy predicting on the RAW
    stacked blocks). With `warm`, the solver starts from that model's solution (same design, same y)."""
    weight = None if class_weight == "none" else class_weight
    if warm is None:
        fitted = LogisticRegression(C=c_value, class_weight=weight, max_iter=max_iter, warm_start=True, solver=solver)
    else:
        fitted = copy.deepcopy(warm).set_params(C=c_value, class_weight=weight)
    fitted.fit(design.X, y)
    raw = copy.copy(fitted)
    raw.coef_ = design.raw_coef(fitted.coef_)
    raw.n_features_in_ = len(design.column_factors)
    raw.set_params(warm_start=False)
    return fitted, raw


def fit_logistic(blocks: Sequence[np.ndarray], y: np.ndarray, setting: Setting, max_iter: int,
                 row_space: bool = False, solver: str = "lbfgs") -> LogisticRegression:
    """A LogisticRegression (multinomial; `solver`) on the horizontally stacked `blocks`, each divided by its
    `block_scales` value (and the second — the image block of early fusion — weighed by the setting).

    The scaling is folded into `coef_` afterwards, so the returned model predicts on the RAW stacked
    blocks (what `save_logistic` stores and every caller passes). `row_space`: solve in the row space of
    the scaled matrix when it has fewer rows than columns (the same problem; see `_Design`)."""
    c_value, class_weight, image_weight = setting
    return _solve(_design(blocks, image_weight, row_space), y, c_value, class_weight, max_iter, solver=solver)[1]


def aligned_proba(model, X: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """`model.predict_proba(X)` with one column per entry of `classes` (0 for classes it never saw)."""
    proba = model.predict_proba(X)
    out = np.zeros((len(X), len(classes)), dtype=np.float64)
    position = {c: i for i, c in enumerate(classes)}
    for column, label in enumerate(model.classes_):
        out[:, position[str(label)]] = proba[:, column]
    return out


def _single_class_proba(y: np.ndarray, n_rows: int, classes: Sequence[str]) -> np.ndarray:
    out = np.zeros((n_rows, len(classes)))
    out[:, list(classes).index(str(y[0]))] = 1.0
    return out


def _fit_predict(blocks_train, y_train, blocks_pred, setting: Setting, classes, config) -> np.ndarray:
    n_pred = len(blocks_pred[0])
    if len(np.unique(y_train)) < 2:  # a training part holding one class: predict it (no fit possible)
        return _single_class_proba(y_train, n_pred, classes)
    model = fit_logistic(blocks_train, y_train, setting, config.max_iter, config.row_space, config.solver)
    return aligned_proba(model, np.hstack(blocks_pred), classes)


def grid(config: ClassificationConfig, model: str = "text") -> list[Setting]:
    """Every (C, class_weight, image weight) the inner validation chooses from for `model`."""
    weights = config.early_fusion_image_weights if model == "early_fusion" else (1.0,)
    return [(float(c), w, float(iw)) for c in config.c_values for w in config.class_weights for iw in weights]


def _macro_f1(y_true, proba, classes) -> float:
    predicted = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)]
    return float(f1_score(y_true, predicted, labels=list(classes), average="macro", zero_division=0))


def _fit_order(settings: Sequence[Setting]) -> list[list[Setting]]:
    """The grid as warm-start chains: one per image weight (one design matrix each), walking each class
    weight's C values in ascending order, the class weights in their configured order."""
    chains: dict[float, list[Setting]] = {}
    for setting in settings:
        chains.setdefault(setting[2], []).append(setting)
    order = {w: i for i, w in enumerate(dict.fromkeys(s[1] for s in settings))}
    return [sorted(chain, key=lambda s: (order[s[1]], s[0])) for chain in chains.values()]


def _oof_for_grid(blocks, y, folds, classes, settings, config) -> dict[Setting, np.ndarray]:
    """Inner group-aware out-of-fold probabilities of every grid setting on the given inner `folds`.

    Per inner fold and image weight the design matrix is built once; the fits along it are warm-started
    from one another (`config.warm_start`)."""
    result = {setting: np.zeros((len(y), len(classes))) for setting in settings}
    for train, valid in folds:
        if len(np.unique(y[train])) < 2:  # a training part holding one class: predict it (no fit possible)
            for setting in settings:
                result[setting][valid] = _single_class_proba(y[train], len(valid), classes)
            continue
        X_valid = np.hstack([b[valid] for b in blocks])
        for chain in _fit_order(settings):
            design = _design([b[train] for b in blocks], chain[0][2], config.row_space)
            previous = None
            for c_value, class_weight, image_weight in chain:
                fitted, model = _solve(design, y[train], c_value, class_weight, config.max_iter,
                                       previous if config.warm_start else None, config.solver)
                previous = fitted
                result[(c_value, class_weight, image_weight)][valid] = aligned_proba(model, X_valid, classes)
    return result


def _rows(label, model, stage, fold, rows, data: LabelData, proba: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "label": label, "model": model, "stage": stage, "fold": fold, "row": rows,
        "nm": data.nm[rows], "y": data.y[rows], "group": np.asarray(data.groups)[rows],
        "proba": list(proba.astype(np.float64)),
    })


@dataclass
class LabelCV:
    """The probabilities of one label's nested CV, the chosen settings and the outer folds."""

    probabilities: pd.DataFrame
    choices: pd.DataFrame  # label, model, fold, C, class_weight, image_weight, inner_macro_f1
    final_settings: dict[str, Setting]


def _outer_fold(data: LabelData, fold: int, train: np.ndarray, valid: np.ndarray,
                config: ClassificationConfig) -> tuple[list[pd.DataFrame], list[dict]]:
    """One outer fold of `cross_validate_label`: every base model's inner grid, choice and outer fit."""
    frames, choices = [], []
    with _quiet_fits(config):
        # The inner folds depend only on the outer training rows: the same for every base model.
        inner_folds = group_stratified_folds(data.y[train], data.groups[train], config.inner_splits,
                                             config.seed + 1 + fold)
        for model in data.models:
            blocks = data.blocks(model)
            settings = grid(config, model)
            inner = _oof_for_grid([b[train] for b in blocks], data.y[train], inner_folds, data.classes,
                                  settings, config)
            inner_scores = {s: _macro_f1(data.y[train], inner[s], data.classes) for s in settings}
            best = max(settings, key=lambda s: (inner_scores[s], -settings.index(s)))
            for setting, score in inner_scores.items():
                choices.append({"label": data.label, "model": model, "fold": fold, "C": setting[0],
                                "class_weight": setting[1], "image_weight": setting[2],
                                "inner_macro_f1": score, "chosen": setting == best})
            # Every base model's inner out-of-fold probabilities: the late-fusion meta-model's training rows.
            frames.append(_rows(data.label, model, INNER, fold, train, data, inner[best]))
            outer = _fit_predict([b[train] for b in blocks], data.y[train], [b[valid] for b in blocks], best,
                                 data.classes, config)
            frames.append(_rows(data.label, model, OUTER, fold, valid, data, outer))
    return frames, choices


def _parallel(tasks: Sequence, n_jobs: int) -> list:
    """`joblib` over delayed `tasks` in order (in this process when n_jobs is 1 or there is one task); the
    pool ends at the latest with the process, never 300 s later (`core.worker_pool`)."""
    return worker_pool.parallel(tasks, n_jobs)


def cross_validate_label(data: LabelData, config: ClassificationConfig) -> LabelCV:
    """Nested group-aware CV of the text, image, early-fusion (and joint) logistic regressions; the outer
    folds run in `config.n_jobs` processes (the same results for any n_jobs)."""
    outer_folds = group_stratified_folds(data.y, data.groups, config.n_splits, config.seed)
    results = _parallel([delayed(_outer_fold)(data, fold, train, valid, config)
                         for fold, (train, valid) in enumerate(outer_folds)], config.n_jobs)
    frames = [frame for fold_frames, _ in results for frame in fold_frames]
    choices = [choice for _, fold_choices in results for choice in fold_choices]
    choice_frame = pd.DataFrame(choices)
    # Final settings: best mean inner macro-F1 over the outer folds (no outer score is used).
    mean_inner = choice_frame.groupby(["model", "C", "class_weight", "image_weight"], sort=False)["inner_macro_f1"].mean()
    final = {}
    for model in data.models:
        best_index = mean_inner.loc[model].idxmax()
        final[model] = (float(best_index[0]), str(best_index[1]), float(best_index[2]))
    return LabelCV(pd.concat(frames, ignore_index=True), choice_frame, final)


# --- late fusion on out-of-fold probabilities --------------------------------------------------

def label_classes(probabilities: pd.DataFrame, label: str) -> list[str]:
    """The class list of `label` in a probability frame: the sorted distinct targets of its rows.

    That is exactly how `prepare_label` builds `LabelData.classes` (every kept class has rows and the
    outer stage holds every row once), so the probability columns follow this order."""
    own = probabilities[probabilities["label"] == label]
    if own.empty:
        raise ValueError(f"no probabilities for label {label!r}")
    classes = sorted(own["y"].astype(str).unique())
    width = len(own["proba"].iloc[0])
    if width != len(classes):
        raise ValueError(f"label {label!r}: {len(classes)} classes in y but probability vectors of length {width}")
    return classes


def stacked(probabilities: pd.DataFrame, stage: str, fold: int | None, models: Sequence[str] = UNIMODAL_MODELS):
    """(rows, y, [P_model1 | P_model2 | ...]) for one stage/fold, rows aligned across models."""
    part = probabilities[probabilities["stage"] == stage]
    if fold is not None:
        part = part[part["fold"] == fold]
    blocks, rows, y = [], None, None
    for model in models:
        own = part[part["model"] == model].sort_values("row")
        if rows is None:
            rows, y = own["row"].to_numpy(), own["y"].to_numpy(dtype=object)
        elif not np.array_equal(rows, own["row"].to_numpy()):
            raise ValueError(f"probabilities of {models} cover different rows in stage {stage!r} fold {fold}")
        blocks.append(np.vstack(own["proba"].to_numpy()) if len(own) else np.zeros((0, 0)))
    return rows, y, np.hstack(blocks)


def fusion_inputs(probabilities: pd.DataFrame, config: ClassificationConfig) -> tuple[str, ...]:
    """The configured late-fusion inputs that this probability frame holds, in `BASE_MODELS` order."""
    present = set(probabilities["model"].unique())
    return tuple(m for m in BASE_MODELS if m in config.fusion_inputs and m in present)


def _encoded(y: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    position = {c: i for i, c in enumerate(classes)}
    return np.fromiter((position[str(v)] for v in y), dtype=np.int64, count=len(y))


def _tabular_block(tabular: pd.DataFrame | None, nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(numeric tabular columns [n, 3], brands [n]) for `nm` from a `core.fusion.tabular_features` frame."""
    part = tabular.drop_duplicates("nm").set_index("nm").reindex(pd.Index(nm, dtype=object))
    return part[list(TABULAR_COLUMNS)].to_numpy(dtype=np.float64), part["brand"].to_numpy(dtype=object)


def meta_features(probabilities: pd.DataFrame, stage: str, fold: int | None, inputs: Sequence[str],
                  tabular: pd.DataFrame | None, classes: Sequence[str], config: ClassificationConfig,
                  brand_encoding: BrandTargetEncoding | None = None):
    """(rows, y, groups, X, brand encoding fitted on these rows) of the late-fusion meta-model.

    X = [P_input1 | P_input2 | ... | tabular columns | brand encoding]. The brand encoding of these
    rows is computed out of fold (group-aware folds over these rows) when `brand_encoding` is None —
    the meta-model's own training rows — and with the given encoding otherwise (rows to predict)."""
    rows, y, X = stacked(probabilities, stage, fold, inputs)
    part = probabilities[(probabilities["stage"] == stage) & (probabilities["model"] == inputs[0])]
    if fold is not None:
        part = part[part["fold"] == fold]
    part = part.sort_values("row")
    groups = part["group"].to_numpy()
    fitted = None
    if tabular is not None:
        numeric, brands = _tabular_block(tabular, part["nm"].to_numpy(dtype=object))
        if brand_encoding is None:
            encoded = _encoded(y, classes)
            folds = group_stratified_folds(y, groups, config.inner_splits, config.seed)
            encoding = out_of_fold_brand_encoding(brands, encoded, len(classes), config.fusion_brand_smoothing, folds)
            fitted = BrandTargetEncoding(len(classes), config.fusion_brand_smoothing).fit(brands, encoded)
        else:
            encoding = brand_encoding.transform(brands)
        X = np.hstack([X, numeric, encoding])
    return rows, y, groups, X, fitted


def _fusion_fold(own: pd.DataFrame, fold: int, inputs: tuple[str, ...], tabular: pd.DataFrame | None,
                 classes: Sequence[str], config: ClassificationConfig) -> tuple[list[pd.DataFrame], dict]:
    """One outer fold of `cross_validate_fusion`: the meta-model on the fold's inner rows, the mean baseline."""
    by_row = own.drop_duplicates("row").set_index("row")
    _, y_inner, groups_inner, X_inner, encoding = meta_features(own, INNER, fold, inputs, tabular, classes, config)
    rows, y_outer, _, X_outer, _ = meta_features(own, OUTER, fold, inputs, tabular, classes, config, encoding)
    late = config.late_fusion(classes, len(inputs)).fit(X_inner, y_inner, groups=groups_inner)
    _, y_uni, X_uni_inner = stacked(own, INNER, fold)
    _, _, X_uni_outer = stacked(own, OUTER, fold)
    mean = MeanProbabilityFusion(classes=list(classes)).fit(X_uni_inner, y_uni)
    diagnostic = {"label": own["label"].iloc[0], "fold": int(fold), "inputs": ", ".join(inputs),
                  "tabular": tabular is not None, "start": fusion_start_name(late.start_, inputs, late.start_weights_),
                  "trees": int(late.n_trees_)}
    frames = []
    for name, proba in (("late_fusion", late.predict_proba(X_outer)),
                        ("mean_probability", mean.predict_proba(X_uni_outer))):
        frames.append(pd.DataFrame({
            "label": own["label"].iloc[0], "model": name, "stage": OUTER, "fold": int(fold), "row": rows,
            "nm": by_row["nm"].loc[rows].to_numpy(), "y": y_outer, "group": by_row["group"].loc[rows].to_numpy(),
            "proba": list(proba.astype(np.float64)),
        }))
    return frames, diagnostic


def cross_validate_fusion(probabilities: pd.DataFrame, label: str, classes: Sequence[str],
                          config: ClassificationConfig, tabular: pd.DataFrame | None = None
                          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Outer-fold predictions of late fusion (trained on inner OOF probabilities of the configured base
    models, plus `tabular` product features when given) and of mean-probability fusion (text + image);
    and one row per fold saying where the meta-model started and how many trees it kept. The folds run
    in `config.n_jobs` processes (the same results for any n_jobs)."""
    own = probabilities[probabilities["label"] == label]
    inputs = fusion_inputs(own, config)
    tabular = tabular if config.fusion_tabular else None
    if tabular is not None:  # only this label's products travel to the workers
        tabular = tabular[tabular["nm"].isin(set(own["nm"]))]
    folds = sorted(own.loc[own["stage"] == OUTER, "fold"].unique())
    results = _parallel([delayed(_fusion_fold)(own, fold, inputs, tabular, classes, config) for fold in folds],
                        config.n_jobs)
    frames = [frame for fold_frames, _ in results for frame in fold_frames]
    return pd.concat(frames, ignore_index=True), pd.DataFrame([diagnostic for _, diagnostic in results])


def fusion_start_name(start: str, inputs: Sequence[str], weights: Sequence[float] | None = None) -> str:
    """'mean of inputs', an input's name, or a mixture's weights ('text 0.62 + joint 0.38')."""
    if start == "mixture":
        return " + ".join(f"{name} {w:.2f}" for name, w in zip(inputs, weights) if round(w, 2) > 0) or "mixture"
    return "mean of inputs" if start == "mean" else inputs[int(start.split(":")[1])]


# --- zero-shot in the joint text-image space ---------------------------------------------------

def _default_class_phrases() -> dict[str, str]:
    # isadult's values are 'True'/'False', which say nothing to a text encoder: short descriptions instead.
    return {"isadult=True": "товары для взрослых", "isadult=False": "обычный товар"}


@dataclass(frozen=True)
class ZeroShotConfig:
    """How class names are scored against products in the joint space (nothing is trained).

    A class is encoded as `template.format(phrase)`, where the phrase is `class_phrases['<label>=<class>']`
    when given, else the class value itself ('для женщин', 'зима', a category name)."""

    joint_column: str = "combined_joint"  # which product vector: text_joint | image_joint | combined_joint
    template: str = "{}"  # the text encoder adds its own prompt ('passage: ' for e5)
    class_phrases: dict[str, str] = field(default_factory=_default_class_phrases)

    def __post_init__(self) -> None:
        # Imported here: core.contrastive imports torch (~0.6 GB per process), and every fold-parallel
        # worker process imports this module to run its folds, which need no torch.
        from wb_pipeline.core.contrastive import JOINT_COLUMNS

        if self.joint_column not in JOINT_COLUMNS:
            raise ValueError(f"ZeroShotConfig.joint_column must be one of {JOINT_COLUMNS}, got {self.joint_column!r}")
        if "{}" not in self.template:
            raise ValueError(f"ZeroShotConfig.template must hold '{{}}' for the class phrase, got {self.template!r}")
        malformed = [key for key in self.class_phrases if "=" not in key]
        if malformed:
            raise ValueError(f"ZeroShotConfig.class_phrases keys must read '<label>=<class>', got {malformed}")


def class_phrases(label: str, classes: Sequence[str], phrases: Mapping[str, str]) -> list[str]:
    """The text standing for each class of `label` (same order): its configured phrase or the class value."""
    return [str(phrases.get(f"{label}={c}", c)) for c in classes]


def softmax_over_cosines(cosines: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of cosine similarities divided by `temperature` (CLIP's class probabilities)."""
    if temperature <= 0:
        raise ValueError(f"softmax_over_cosines: temperature must be positive, got {temperature}")
    logits = np.asarray(cosines, dtype=np.float64) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def zero_shot_probabilities(product_vectors: np.ndarray, class_vectors: np.ndarray, temperature: float = 0.01) -> np.ndarray:
    """Softmax over cosine similarities between product vectors and class-name vectors of one space."""
    products = product_vectors / np.maximum(np.linalg.norm(product_vectors, axis=1, keepdims=True), 1e-12)
    names = class_vectors / np.maximum(np.linalg.norm(class_vectors, axis=1, keepdims=True), 1e-12)
    return softmax_over_cosines(products @ names.T, temperature)


def zero_shot_predictions(
    probabilities: pd.DataFrame,
    label: str,
    classes: Sequence[str],
    joint_nm: Sequence[str],
    joint_vectors: np.ndarray,
    score: Callable[[list[str], np.ndarray], np.ndarray],
    phrases: Mapping[str, str],
    temperature: float,
) -> pd.DataFrame | LabelSkip:
    """'zero_shot' rows (stage 'outer') for exactly the rows the trained models are scored on.

    The evaluated rows are `label`'s outer rows of the text model (each labelled row once, with its
    fold kept for reference); `score(phrases, product_vectors)` returns cosines [n, k] in the joint
    space (e.g. `core.contrastive.zero_shot_scores`), turned into probabilities by a softmax at
    `temperature`. When a row has no joint vector the label is skipped (reason
    'missing_joint_vectors'): a score on fewer rows would not be comparable with the others."""
    rows = probabilities[(probabilities["label"] == label) & (probabilities["stage"] == OUTER)
                         & (probabilities["model"] == UNIMODAL_MODELS[0])].sort_values("row")
    position = pd.Series(np.arange(len(joint_nm)), index=pd.Index(np.asarray(joint_nm, dtype=object)))
    position = position[~position.index.duplicated()]
    found = rows["nm"].isin(position.index).to_numpy()
    if not found.all():
        missing = rows.loc[~found, "nm"].tolist()
        return LabelSkip(label, "missing_joint_vectors",
                         f"{len(missing)} of {len(rows)} evaluated rows have no joint vector (e.g. {missing[:3]})")
    vectors = np.asarray(joint_vectors, dtype=np.float32)[position.loc[rows["nm"]].to_numpy()]
    cosines = np.asarray(score(class_phrases(label, classes, phrases), vectors), dtype=np.float64)
    if cosines.shape != (len(rows), len(classes)):
        raise ValueError(f"zero-shot {label}: scores of shape {cosines.shape}, expected {(len(rows), len(classes))}")
    proba = softmax_over_cosines(cosines, temperature)
    return pd.DataFrame({
        "label": label, "model": ZERO_SHOT_MODEL, "stage": OUTER, "fold": rows["fold"].to_numpy(),
        "row": rows["row"].to_numpy(), "nm": rows["nm"].to_numpy(), "y": rows["y"].to_numpy(),
        "proba": list(proba),
    })


# --- report ------------------------------------------------------------------------------------

def predicted_classes(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Arg-max class per row of a probability frame."""
    return np.asarray(classes, dtype=object)[np.argmax(np.vstack(frame["proba"].to_numpy()), axis=1)]


def build_report(predictions: pd.DataFrame, label_classes: Mapping[str, Sequence[str]],
                 metrics: MetricsConfig = MetricsConfig()) -> pd.DataFrame:
    """One row per label × model scored on the outer (held-out) predictions.

    Columns: label, model, n, n_classes, macro_f1 (+ _low/_high), weighted_f1 (+ bounds),
    accuracy, f1 and positive_class for binary labels, per_class_f1 (JSON), gain_vs_best_unimodal
    (macro-F1 minus the better of text/image) with gain_low / gain_high (its paired-bootstrap
    interval, see `_paired_gain_bounds`), best_model (per label, among the trained models
    `ALL_MODELS`: zero-shot is a baseline and has no saved model to predict the test products)."""
    rows = []
    outer = predictions[predictions["stage"] == OUTER]
    for (label, model), part in outer.groupby(["label", "model"], sort=False):
        classes = list(label_classes[label])
        y_true = part["y"].to_numpy(dtype=object)
        y_pred = predicted_classes(part, classes)
        positive = _positive_class(y_true, classes)
        result = scores_with_intervals(y_true, y_pred, classes, metrics, positive)
        rows.append({"label": label, "model": model, "n": len(part), "n_classes": len(classes), **result,
                     "positive_class": positive, "per_class_f1": json.dumps(per_class_f1(y_true, y_pred, classes),
                                                                           ensure_ascii=False)})
    report = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate((*ALL_MODELS, ZERO_SHOT_MODEL))}
    report = report.sort_values(["label", "model"], key=lambda s: s.map(order) if s.name == "model" else s.map(
        {l: i for i, l in enumerate(LABELS)}).fillna(len(LABELS)), ignore_index=True)
    best_unimodal = report[report["model"].isin(UNIMODAL_MODELS)].groupby("label")["macro_f1"].max()
    report["gain_vs_best_unimodal"] = report["macro_f1"] - report["label"].map(best_unimodal)
    report["gain_low"], report["gain_high"] = _paired_gain_bounds(report, outer, label_classes, metrics)
    trained = report[report["model"].isin(ALL_MODELS)]
    best = trained.loc[trained.groupby("label")["macro_f1"].idxmax(), ["label", "model"]]
    report["best_model"] = report["label"].map(best.set_index("label")["model"])
    return report


def _paired_gain_bounds(report: pd.DataFrame, outer: pd.DataFrame, label_classes: Mapping[str, Sequence[str]],
                        metrics: MetricsConfig) -> tuple[np.ndarray, np.ndarray]:
    """The confidence bounds of each row's `gain_vs_best_unimodal` by a PAIRED bootstrap: the model and
    the label's best unimodal model scored on the same resampled held-out rows. Two models' own
    intervals overlap far more often than their difference is unsure; this is the interval of the
    difference (normal, from the paired bootstrap's standard error)."""
    z = NormalDist().inv_cdf(0.5 + metrics.confidence / 2)
    low, high = np.full(len(report), np.nan), np.full(len(report), np.nan)
    for label, part in report.groupby("label", sort=False):
        unimodal = part[part["model"].isin(UNIMODAL_MODELS)]
        if unimodal.empty:
            continue
        reference_model = unimodal.loc[unimodal["macro_f1"].idxmax(), "model"]
        classes = list(label_classes[label])
        position = {c: i for i, c in enumerate(classes)}
        own = outer[outer["label"] == label]
        reference = own[own["model"] == reference_model].set_index("row")
        for index, model in part["model"].items():
            candidate = own[own["model"] == model].set_index("row")
            rows = candidate.index.intersection(reference.index)
            if len(rows) == 0:
                continue
            true_code = reference.loc[rows, "y"].map(position).to_numpy()
            codes = [np.argmax(np.vstack(frame.loc[rows, "proba"].to_numpy()), axis=1) for frame in (candidate, reference)]
            gain, error = paired_macro_f1_gain(true_code, codes[0], codes[1], len(classes), metrics.n_bootstrap,
                                               metrics.seed)
            low[report.index.get_loc(index)], high[report.index.get_loc(index)] = gain - z * error, gain + z * error
    return low, high


def _positive_class(y_true: np.ndarray, classes: Sequence[str]) -> str | None:
    if len(classes) != 2:
        return None
    counts = pd.Series(y_true).value_counts()
    return str(min(classes, key=lambda c: (counts.get(c, 0), c)))


# --- final models, saved without pickle --------------------------------------------------------

@dataclass
class LabelModels:
    """The final models of one label, refit on all its labelled rows."""

    label: str
    classes: list[str]
    base: dict[str, LogisticRegression]  # text, image, early_fusion (+ joint)
    late_fusion: LateFusionClassifier | None = None
    fusion_inputs: tuple[str, ...] = UNIMODAL_MODELS  # whose probabilities the meta-model reads
    brand_encoding: BrandTargetEncoding | None = None  # set when the meta-model reads tabular features

    def predict_proba(self, model: str, features: Mapping[str, np.ndarray],
                      tabular: pd.DataFrame | None = None, nm: Sequence[str] | None = None) -> np.ndarray:
        """Class probabilities (columns = `classes`) of `model` for row-aligned features (text, image,
        joint); late fusion with tabular inputs also needs the products' `nm` and their `tabular` rows."""
        if model in self.base:
            X = np.hstack([np.asarray(features[b], dtype=np.float32) for b in MODEL_BLOCKS[model]])
            return aligned_proba(self.base[model], X, self.classes)
        if model == "mean_probability":
            unimodal = np.hstack([self.predict_proba(m, features) for m in UNIMODAL_MODELS])
            return unimodal.reshape(len(unimodal), len(UNIMODAL_MODELS), len(self.classes)).mean(axis=1)
        if model == "late_fusion":
            if self.late_fusion is None:
                raise ValueError(f"{self.label}: no late-fusion model fitted")
            X = np.hstack([self.predict_proba(m, features) for m in self.fusion_inputs])
            if self.brand_encoding is not None:
                if tabular is None or nm is None:
                    raise ValueError(f"{self.label}: this late-fusion model reads tabular features; pass tabular and nm")
                numeric, brands = _tabular_block(tabular, np.asarray(list(nm), dtype=object))
                X = np.hstack([X, numeric, self.brand_encoding.transform(brands)])
            return aligned_proba(self.late_fusion, X, self.classes)
        raise ValueError(f"unknown model {model!r}; known: {(*self.base, *FUSION_MODELS)}")


def fit_final_base_models(data: LabelData, settings: Mapping[str, Setting],
                          config: ClassificationConfig) -> LabelModels:
    """Refit every base regression on all labelled rows with the chosen settings."""
    with _quiet_fits(config):
        base = {m: fit_logistic(data.blocks(m), data.y, settings[m], config.max_iter, config.row_space, config.solver)
                for m in data.models}
    return LabelModels(label=data.label, classes=list(data.classes), base=base)


def fit_final_late_fusion(probabilities: pd.DataFrame, label: str, classes: Sequence[str],
                          config: ClassificationConfig, tabular: pd.DataFrame | None = None
                          ) -> tuple[LateFusionClassifier, tuple[str, ...], BrandTargetEncoding | None]:
    """The meta-model refit on the outer out-of-fold probabilities of all labelled rows (+ tabular
    features, the brand encoding out of fold), its inputs, and the brand encoding fitted on all rows
    (what predictions of new products use)."""
    own = probabilities[probabilities["label"] == label]
    inputs = fusion_inputs(own, config)
    tabular = tabular if config.fusion_tabular else None
    _, y, groups, X, encoding = meta_features(own, OUTER, None, inputs, tabular, classes, config)
    return config.late_fusion(classes, len(inputs)).fit(X, y, groups=groups), inputs, encoding


def save_logistic(model: LogisticRegression, folder: UPath, name: str, extra: dict | None = None) -> None:
    """coef_/intercept_ as safetensors and classes/settings as JSON (atomic writes, no pickle)."""
    # The fitted dtype is kept (float32 inputs give float32 weights), so reloaded predictions are identical.
    tensors = {"coef": np.ascontiguousarray(model.coef_), "intercept": np.ascontiguousarray(model.intercept_)}
    sidecar = {"classes": [str(c) for c in model.classes_], "C": float(model.C),
               "class_weight": model.class_weight if isinstance(model.class_weight, str) else "none",
               "n_features_in": int(model.n_features_in_), **(extra or {})}
    storage.atomic_write_bytes(folder / f"{name}.safetensors", save_safetensors(tensors))
    storage.atomic_write_bytes(folder / f"{name}.json", json.dumps(sidecar, ensure_ascii=False, indent=1).encode("utf-8"))


def load_logistic(folder: UPath, name: str) -> LogisticRegression:
    """A fitted LogisticRegression rebuilt from `save_logistic` files."""
    sidecar = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    tensors = load_safetensors((folder / f"{name}.safetensors").read_bytes())
    weight = sidecar["class_weight"]
    model = LogisticRegression(C=sidecar["C"], class_weight=None if weight == "none" else weight)
    model.coef_, model.intercept_ = tensors["coef"], tensors["intercept"]
    model.classes_ = np.asarray(sidecar["classes"], dtype=object)
    model.n_features_in_ = int(sidecar["n_features_in"])
    if model.coef_.shape[1] != model.n_features_in_:
        raise ValueError(f"{folder}/{name}: coef has {model.coef_.shape[1]} columns, sidecar says {model.n_features_in_}")
    return model


def save_label_models(models: LabelModels, folder: UPath) -> None:
    """Every model of a label under `folder` (base models; the late-fusion booster when fitted)."""
    for name, model in models.base.items():
        save_logistic(model, folder, name, {"label": models.label})
    storage.atomic_write_bytes(folder / "base_models.json", json.dumps(list(models.base)).encode("utf-8"))
    if models.late_fusion is not None:
        save_fusion_model(folder, models.label, models.late_fusion, models.fusion_inputs, models.brand_encoding)


def save_fusion_model(folder: UPath, label: str, model: LateFusionClassifier, inputs: Sequence[str],
                      brand_encoding: BrandTargetEncoding | None) -> None:
    """The meta-model, its inputs and (when it reads tabular features) the brand encoding."""
    if brand_encoding is not None:
        save_brand_encoding(brand_encoding, folder)
    save_late_fusion(model, folder, {"label": label, "inputs": list(inputs), "tabular": brand_encoding is not None})


def load_label_models(folder: UPath, label: str) -> LabelModels:
    """`LabelModels` from `save_label_models` files (the late-fusion model only if it was saved)."""
    names = json.loads((folder / "base_models.json").read_text(encoding="utf-8"))
    base = {name: load_logistic(folder, name) for name in names}
    models = LabelModels(label=label, classes=[str(c) for c in base["text"].classes_], base=base)
    if (folder / "late_fusion.json").exists():
        sidecar = json.loads((folder / "late_fusion.json").read_text(encoding="utf-8"))
        models.late_fusion = load_late_fusion(folder)
        models.fusion_inputs = tuple(sidecar["inputs"])
        models.brand_encoding = load_brand_encoding(folder) if sidecar["tabular"] else None
    return models
