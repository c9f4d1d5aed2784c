"""The classification report: every model scored on the outer predictions (macro / weighted F1,
minority-class F1, per-class F1, bootstrap intervals) and the paired gain of fusion over the best single model."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd

from wb_pipeline.core.model_selection.metrics import (
    MetricsConfig,
    paired_macro_f1_gain,
    per_class_f1,
    scores_with_intervals,
)

from .config import ALL_MODELS, LABELS, OUTER, UNIMODAL_MODELS, ZERO_SHOT_MODEL


def predicted_classes(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Arg-max class per row of a probability frame."""
    return np.asarray(classes, dtype=object)[np.argmax(np.vstack(frame["proba"].to_numpy()), axis=1)]


def build_report(
    predictions: pd.DataFrame, label_classes: Mapping[str, Sequence[str]], metrics: MetricsConfig = MetricsConfig()
) -> pd.DataFrame:
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
        rows.append(
            {
                "label": label,
                "model": model,
                "n": len(part),
                "n_classes": len(classes),
                **result,
                "positive_class": positive,
                "per_class_f1": json.dumps(per_class_f1(y_true, y_pred, classes), ensure_ascii=False),
            }
        )
    report = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate((*ALL_MODELS, ZERO_SHOT_MODEL))}
    report = report.sort_values(
        ["label", "model"],
        key=lambda s: (
            s.map(order)
            if s.name == "model"
            else s.map({label: i for i, label in enumerate(LABELS)}).fillna(len(LABELS))
        ),
        ignore_index=True,
    )
    best_unimodal = report[report["model"].isin(UNIMODAL_MODELS)].groupby("label")["macro_f1"].max()
    report["gain_vs_best_unimodal"] = report["macro_f1"] - report["label"].map(best_unimodal)
    report["gain_low"], report["gain_high"] = _paired_gain_bounds(report, outer, label_classes, metrics)
    trained = report[report["model"].isin(ALL_MODELS)]
    best = trained.loc[trained.groupby("label")["macro_f1"].idxmax(), ["label", "model"]]
    report["best_model"] = report["label"].map(best.set_index("label")["model"])
    return report


def _paired_gain_bounds(
    report: pd.DataFrame, outer: pd.DataFrame, label_classes: Mapping[str, Sequence[str]], metrics: MetricsConfig
) -> tuple[np.ndarray, np.ndarray]:
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
            codes = [
                np.argmax(np.vstack(frame.loc[rows, "proba"].to_numpy()), axis=1) for frame in (candidate, reference)
            ]
            gain, error = paired_macro_f1_gain(
                true_code, codes[0], codes[1], len(classes), metrics.n_bootstrap, metrics.seed
            )
            low[report.index.get_loc(index)], high[report.index.get_loc(index)] = gain - z * error, gain + z * error
    return low, high


def _positive_class(y_true: np.ndarray, classes: Sequence[str]) -> str | None:
    if len(classes) != 2:
        return None
    counts = pd.Series(y_true).value_counts()
    return str(min(classes, key=lambda c: (counts.get(c, 0), c)))
