"""Nested, group-aware cross-validation of one label's base models (`cross_validate_label`): the inner
folds choose each model's settings by macro-F1, the outer folds give every row one honest prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from joblib import delayed
from sklearn.metrics import f1_score

from wb_pipeline.core.model_selection.folds import (
    group_stratified_folds,
)
from wb_pipeline.core.runtime import worker_pool

from .config import INNER, OUTER, ClassificationConfig, LabelData
from .solver import (
    Setting,
    _design,
    _fit_predict,
    _quiet_fits,
    _single_class_proba,
    _solve,
    aligned_proba,
    grid,
)


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
                fitted, model = _solve(
                    design,
                    y[train],
                    c_value,
                    class_weight,
                    config.max_iter,
                    previous if config.warm_start else None,
                    config.solver,
                )
                previous = fitted
                result[(c_value, class_weight, image_weight)][valid] = aligned_proba(model, X_valid, classes)
    return result


def _rows(label, model, stage, fold, rows, data: LabelData, proba: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "label": label,
            "model": model,
            "stage": stage,
            "fold": fold,
            "row": rows,
            "nm": data.nm[rows],
            "y": data.y[rows],
            "group": np.asarray(data.groups)[rows],
            "proba": list(proba.astype(np.float64)),
        }
    )


@dataclass
class LabelCV:
    """The probabilities of one label's nested CV, the chosen settings and the outer folds."""

    probabilities: pd.DataFrame
    choices: pd.DataFrame  # label, model, fold, C, class_weight, image_weight, inner_macro_f1
    final_settings: dict[str, Setting]


def _outer_fold(
    data: LabelData, fold: int, train: np.ndarray, valid: np.ndarray, config: ClassificationConfig
) -> tuple[list[pd.DataFrame], list[dict]]:
    """One outer fold of `cross_validate_label`: every base model's inner grid, choice and outer fit."""
    frames, choices = [], []
    with _quiet_fits(config):
        # The inner folds depend only on the outer training rows: the same for every base model.
        inner_folds = group_stratified_folds(
            data.y[train], data.groups[train], config.inner_splits, config.seed + 1 + fold
        )
        for model in data.models:
            blocks = data.blocks(model)
            settings = grid(config, model)
            inner = _oof_for_grid(
                [b[train] for b in blocks], data.y[train], inner_folds, data.classes, settings, config
            )
            inner_scores = {s: _macro_f1(data.y[train], inner[s], data.classes) for s in settings}
            best = max(settings, key=lambda s: (inner_scores[s], -settings.index(s)))
            for setting, score in inner_scores.items():
                choices.append(
                    {
                        "label": data.label,
                        "model": model,
                        "fold": fold,
                        "C": setting[0],
                        "class_weight": setting[1],
                        "image_weight": setting[2],
                        "inner_macro_f1": score,
                        "chosen": setting == best,
                    }
                )
            # Every base model's inner out-of-fold probabilities: the late-fusion meta-model's training rows.
            frames.append(_rows(data.label, model, INNER, fold, train, data, inner[best]))
            outer = _fit_predict(
                [b[train] for b in blocks], data.y[train], [b[valid] for b in blocks], best, data.classes, config
            )
            frames.append(_rows(data.label, model, OUTER, fold, valid, data, outer))
    return frames, choices


def _parallel(tasks: Sequence, n_jobs: int) -> list:
    """`joblib` over delayed `tasks` in order (in this process when n_jobs is 1 or there is one task); the
    pool ends at the latest with the process, never 300 s later (`core.runtime.worker_pool`)."""
    return worker_pool.parallel(tasks, n_jobs)


def cross_validate_label(data: LabelData, config: ClassificationConfig) -> LabelCV:
    """Nested group-aware CV of the text, image, early-fusion (and joint) logistic regressions; the outer
    folds run in `config.n_jobs` processes (the same results for any n_jobs)."""
    outer_folds = group_stratified_folds(data.y, data.groups, config.n_splits, config.seed)
    results = _parallel(
        [delayed(_outer_fold)(data, fold, train, valid, config) for fold, (train, valid) in enumerate(outer_folds)],
        config.n_jobs,
    )
    frames = [frame for fold_frames, _ in results for frame in fold_frames]
    choices = [choice for _, fold_choices in results for choice in fold_choices]
    choice_frame = pd.DataFrame(choices)
    # Final settings: best mean inner macro-F1 over the outer folds (no outer score is used).
    mean_inner = choice_frame.groupby(["model", "C", "class_weight", "image_weight"], sort=False)[
        "inner_macro_f1"
    ].mean()
    final = {}
    for model in data.models:
        best_index = mean_inner.loc[model].idxmax()
        final[model] = (float(best_index[0]), str(best_index[1]), float(best_index[2]))
    return LabelCV(pd.concat(frames, ignore_index=True), choice_frame, final)


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
