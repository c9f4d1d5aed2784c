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

import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits
from upath import UPath

from wb_pipeline.core import schema, storage
from wb_pipeline.core.contrastive import JOINT_COLUMNS
from wb_pipeline.core.fusion import (
    LateFusionClassifier,
    MeanProbabilityFusion,
    load_late_fusion,
    save_late_fusion,
)
from wb_pipeline.core.metrics import MetricsConfig, per_class_f1, scores_with_intervals
from wb_pipeline.core.validation import brand_groups, duplicate_groups, group_stratified_folds

LABELS = (*schema.DERIVED_LABEL_COLUMNS, *schema.TEST_LABEL_COLUMNS)
MODALITIES = ("text", "image")
UNIMODAL_MODELS = ("text", "image")
BASE_MODELS = ("text", "image", "early_fusion")
FUSION_MODELS = ("mean_probability", "late_fusion")
ZERO_SHOT_MODEL = "zero_shot"
ALL_MODELS = (*BASE_MODELS, *FUSION_MODELS)
OUTER, INNER = "outer", "inner"
PROBABILITY_COLUMNS = ("label", "model", "stage", "fold", "row", "nm", "y", "proba")


@dataclass(frozen=True)
class ClassificationConfig:
    """Settings of the classifiers and of the validation scheme (seeds fixed)."""

    labels: tuple[str, ...] = LABELS
    n_splits: int = 5
    inner_splits: int = 3
    group_by: str = "duplicates"  # 'duplicates' (same title or image) or 'brand'
    seed: int = 0
    min_labelled_rows: int = 30
    min_class_rows: int = 5  # rarer classes are dropped (counted); must be >= n_splits
    c_values: tuple[float, ...] = (1.0, 10.0)
    class_weights: tuple[str, ...] = ("none", "balanced")
    max_iter: int = 1000
    # One BLAS thread: on 2 shared cores, multi-threaded OpenBLAS made a 0.05 s fit take 2-3 s.
    blas_threads: int = 1
    fusion_n_estimators: int = 100
    fusion_num_leaves: int = 7
    fusion_learning_rate: float = 0.05
    fusion_min_child_samples: int = 10
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

    def late_fusion(self, classes: Sequence) -> LateFusionClassifier:
        return LateFusionClassifier(
            classes=list(classes), n_estimators=self.fusion_n_estimators, num_leaves=self.fusion_num_leaves,
            learning_rate=self.fusion_learning_rate, min_child_samples=self.fusion_min_child_samples,
            class_weight=None if self.fusion_class_weight == "none" else self.fusion_class_weight,
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

    def matrix(self, model: str) -> np.ndarray:
        if model == "early_fusion":
            return np.hstack([self.features[m] for m in MODALITIES])
        return self.features[model]


@contextmanager
def _quiet_fits(config: ClassificationConfig) -> Iterator[None]:
    with threadpool_limits(limits=config.blas_threads), warnings.catch_warnings():
        # Expected inside small inner folds; the outer class counts are reported instead.
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn.model_selection")
        yield


def product_groups(clean_products: pd.DataFrame, image_index: pd.DataFrame | None, group_by: str) -> np.ndarray:
    """Group id per clean product (row order kept): duplicate components or brands."""
    if group_by == "brand":
        if "brand" not in clean_products.columns:
            raise ValueError("group_by='brand' but clean_products has no 'brand' column")
        return brand_groups(clean_products["brand"])
    titles = clean_products["title"].astype("string").str.strip().str.casefold()
    keys = [titles.astype(object).to_numpy()]
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

def fit_logistic(X: np.ndarray, y: np.ndarray, c_value: float, class_weight: str, max_iter: int) -> LogisticRegression:
    """A LogisticRegression (lbfgs, multinomial) with the given inverse regularisation and weighting."""
    model = LogisticRegression(
        C=c_value, class_weight=None if class_weight == "none" else class_weight, max_iter=max_iter
    )
    return model.fit(X, y)


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


def _fit_predict(X_train, y_train, X_pred, setting: tuple[float, str], classes, config) -> np.ndarray:
    if len(np.unique(y_train)) < 2:  # a training part holding one class: predict it (no fit possible)
        return _single_class_proba(y_train, len(X_pred), classes)
    model = fit_logistic(X_train, y_train, setting[0], setting[1], config.max_iter)
    return aligned_proba(model, X_pred, classes)


def grid(config: ClassificationConfig) -> list[tuple[float, str]]:
    """Every (C, class_weight) pair the inner validation chooses from."""
    return [(float(c), w) for c in config.c_values for w in config.class_weights]


def _macro_f1(y_true, proba, classes) -> float:
    predicted = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)]
    return float(f1_score(y_true, predicted, labels=list(classes), average="macro", zero_division=0))


def _oof_for_grid(X, y, groups, classes, config, seed) -> dict[tuple[float, str], np.ndarray]:
    """Inner group-aware out-of-fold probabilities of every grid setting."""
    folds = group_stratified_folds(y, groups, config.inner_splits, seed)
    result = {}
    for setting in grid(config):
        oof = np.zeros((len(y), len(classes)))
        for train, valid in folds:
            oof[valid] = _fit_predict(X[train], y[train], X[valid], setting, classes, config)
        result[setting] = oof
    return result


def _rows(label, model, stage, fold, rows, data: LabelData, proba: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "label": label, "model": model, "stage": stage, "fold": fold, "row": rows,
        "nm": data.nm[rows], "y": data.y[rows], "proba": list(proba.astype(np.float64)),
    })


@dataclass
class LabelCV:
    """The probabilities of one label's nested CV, the chosen settings and the outer folds."""

    probabilities: pd.DataFrame
    choices: pd.DataFrame  # label, model, fold, C, class_weight, inner_macro_f1
    final_settings: dict[str, tuple[float, str]]


def cross_validate_label(data: LabelData, config: ClassificationConfig) -> LabelCV:
    """Nested group-aware CV of the text, image and early-fusion logistic regressions."""
    outer_folds = group_stratified_folds(data.y, data.groups, config.n_splits, config.seed)
    frames, choices = [], []
    with _quiet_fits(config):
        for fold, (train, valid) in enumerate(outer_folds):
            for model in BASE_MODELS:
                X = data.matrix(model)
                inner = _oof_for_grid(X[train], data.y[train], data.groups[train], data.classes, config,
                                      config.seed + 1 + fold)
                inner_scores = {s: _macro_f1(data.y[train], p, data.classes) for s, p in inner.items()}
                best = max(grid(config), key=lambda s: (inner_scores[s], -grid(config).index(s)))
                for setting, score in inner_scores.items():
                    choices.append({"label": data.label, "model": model, "fold": fold, "C": setting[0],
                                    "class_weight": setting[1], "inner_macro_f1": score, "chosen": setting == best})
                if model in UNIMODAL_MODELS:  # the late-fusion meta-model's training features
                    frames.append(_rows(data.label, model, INNER, fold, train, data, inner[best]))
                outer = _fit_predict(X[train], data.y[train], X[valid], best, data.classes, config)
                frames.append(_rows(data.label, model, OUTER, fold, valid, data, outer))
    choice_frame = pd.DataFrame(choices)
    # Final settings: best mean inner macro-F1 over the outer folds (no outer score is used).
    mean_inner = choice_frame.groupby(["model", "C", "class_weight"], sort=False)["inner_macro_f1"].mean()
    final = {}
    for model in BASE_MODELS:
        best_index = mean_inner.loc[model].idxmax()
        final[model] = (float(best_index[0]), str(best_index[1]))
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


def cross_validate_fusion(probabilities: pd.DataFrame, label: str, classes: Sequence[str],
                          config: ClassificationConfig) -> pd.DataFrame:
    """Outer-fold predictions of late fusion (trained on inner OOF probabilities) and mean-prob fusion."""
    own = probabilities[probabilities["label"] == label]
    nm_by_row = own.drop_duplicates("row").set_index("row")["nm"]
    frames = []
    for fold in sorted(own.loc[own["stage"] == OUTER, "fold"].unique()):
        _, y_inner, X_inner = stacked(own, INNER, fold)
        rows, y_outer, X_outer = stacked(own, OUTER, fold)
        late = config.late_fusion(classes).fit(X_inner, y_inner)
        mean = MeanProbabilityFusion(classes=list(classes)).fit(X_inner, y_inner)
        for name, model in (("late_fusion", late), ("mean_probability", mean)):
            frames.append(pd.DataFrame({
                "label": label, "model": name, "stage": OUTER, "fold": int(fold), "row": rows,
                "nm": nm_by_row.loc[rows].to_numpy(), "y": y_outer,
                "proba": list(model.predict_proba(X_outer).astype(np.float64)),
            }))
    return pd.concat(frames, ignore_index=True)


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
    (macro-F1 minus the better of text/image), best_model (per label, among the trained models
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
    trained = report[report["model"].isin(ALL_MODELS)]
    best = trained.loc[trained.groupby("label")["macro_f1"].idxmax(), ["label", "model"]]
    report["best_model"] = report["label"].map(best.set_index("label")["model"])
    return report


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
    base: dict[str, LogisticRegression]  # text, image, early_fusion
    late_fusion: LateFusionClassifier | None = None

    def predict_proba(self, model: str, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Class probabilities (columns = `classes`) of `model` for row-aligned text/image features."""
        if model in BASE_MODELS:
            X = np.hstack([features[m] for m in MODALITIES]) if model == "early_fusion" else features[model]
            return aligned_proba(self.base[model], np.asarray(X, dtype=np.float32), self.classes)
        unimodal = np.hstack([self.predict_proba(m, features) for m in UNIMODAL_MODELS])
        if model == "mean_probability":
            return unimodal.reshape(len(unimodal), len(UNIMODAL_MODELS), len(self.classes)).mean(axis=1)
        if model == "late_fusion":
            if self.late_fusion is None:
                raise ValueError(f"{self.label}: no late-fusion model fitted")
            return aligned_proba(self.late_fusion, unimodal, self.classes)
        raise ValueError(f"unknown model {model!r}; known: {ALL_MODELS}")


def fit_final_base_models(data: LabelData, settings: Mapping[str, tuple[float, str]],
                          config: ClassificationConfig) -> LabelModels:
    """Refit text, image and early-fusion regressions on all labelled rows with the chosen settings."""
    with _quiet_fits(config):
        base = {m: fit_logistic(data.matrix(m), data.y, *settings[m], config.max_iter) for m in BASE_MODELS}
    return LabelModels(label=data.label, classes=list(data.classes), base=base)


def fit_final_late_fusion(probabilities: pd.DataFrame, label: str, classes: Sequence[str],
                          config: ClassificationConfig) -> LateFusionClassifier:
    """The meta-model refit on the outer out-of-fold probabilities of all labelled rows."""
    own = probabilities[probabilities["label"] == label]
    _, y, X = stacked(own, OUTER, None)
    return config.late_fusion(classes).fit(X, y)


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
    if models.late_fusion is not None:
        save_late_fusion(models.late_fusion, folder, {"label": models.label})


def load_label_models(folder: UPath, label: str) -> LabelModels:
    """`LabelModels` from `save_label_models` files (the late-fusion model only if it was saved)."""
    base = {name: load_logistic(folder, name) for name in BASE_MODELS}
    late = load_late_fusion(folder) if (folder / "late_fusion.json").exists() else None
    return LabelModels(label=label, classes=[str(c) for c in base["text"].classes_], base=base, late_fusion=late)


def predict_label(models: LabelModels, model: str, nm: Sequence[str], features: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """nm, label, predicted, probability, model for every given product."""
    proba = models.predict_proba(model, features)
    best = np.argmax(proba, axis=1)
    return pd.DataFrame({
        "nm": np.asarray(nm, dtype=object), "label": models.label,
        "predicted": np.asarray(models.classes, dtype=object)[best],
        "probability": proba[np.arange(len(best)), best], "model": model,
    })
