"""Classification metrics (scikit-learn's) with percentile-bootstrap confidence intervals.

Point estimates come straight from `sklearn.metrics`. The bootstrap needs thousands of F1
evaluations, so it resamples rows and evaluates F1 from per-resample confusion counts in one
vectorised step, with sklearn's definition (F1 = 2TP / (2TP + FP + FN), 0 when undefined, i.e.
`zero_division=0`, over a fixed label list); tests check it equals `sklearn.metrics.f1_score`
on resamples.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

BINARY_CLASS_COUNT = 2


@dataclass(frozen=True)
class MetricsConfig:
    """Bootstrap settings for the confidence intervals."""

    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0


def scores(y_true: Sequence, y_pred: Sequence, labels: Sequence, positive_label=None) -> dict[str, float]:
    """macro-F1, weighted-F1, accuracy, and F1 of `positive_label` when given (binary labels).

    `labels` fixes the class list (a class never predicted counts with F1 0, not dropped).
    """
    labels = list(labels)
    result = {
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }
    if positive_label is not None:
        result["f1"] = float(
            f1_score(y_true, y_pred, labels=labels, pos_label=positive_label, average="binary", zero_division=0)
        )
    return result


def per_class_f1(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> dict[str, float]:
    """F1 of each class in `labels` (sklearn, `average=None`)."""
    values = f1_score(y_true, y_pred, labels=list(labels), average=None, zero_division=0)
    return {str(label): float(value) for label, value in zip(labels, values)}


def _f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """Per-class F1 from confusion counts [..., k, k] (rows = true, columns = predicted)."""
    true_positive = np.diagonal(counts, axis1=-2, axis2=-1).astype(np.float64)
    predicted = counts.sum(axis=-2)
    actual = counts.sum(axis=-1)
    denominator = predicted + actual  # = 2TP + FP + FN
    return np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)


def bootstrap_f1(
    y_true: Sequence,
    y_pred: Sequence,
    labels: Sequence,
    config: MetricsConfig = MetricsConfig(),
    positive_label=None,
) -> dict[str, np.ndarray]:
    """Bootstrap distributions (n_bootstrap values each) of macro_f1, weighted_f1 and, when
    `positive_label` is given, f1 — rows resampled with replacement, seeded."""
    labels = list(labels)
    k = len(labels)
    position = {label: i for i, label in enumerate(labels)}
    try:
        true_code = np.fromiter((position[v] for v in y_true), dtype=np.int64)
        pred_code = np.fromiter((position[v] for v in y_pred), dtype=np.int64)
    except KeyError as error:
        raise ValueError(f"bootstrap_f1: value {error.args[0]!r} is not in labels {labels}") from None
    n = len(true_code)
    if n == 0 or n != len(pred_code):
        raise ValueError(f"bootstrap_f1: {n} true values and {len(pred_code)} predictions")
    rng = np.random.default_rng(config.seed)
    pair = true_code * k + pred_code
    out: dict[str, list[np.ndarray]] = {"macro_f1": [], "weighted_f1": [], "f1": []}
    chunk = max(1, 2_000_000 // max(n, 1))  # bound memory: chunk × n indices at a time
    for start in range(0, config.n_bootstrap, chunk):
        size = min(chunk, config.n_bootstrap - start)
        sample = pair[rng.integers(0, n, size=(size, n))]
        flat = (sample + (np.arange(size) * k * k)[:, None]).ravel()
        counts = np.bincount(flat, minlength=size * k * k).reshape(size, k, k)
        per_class = _f1_from_counts(counts)
        support = counts.sum(axis=-1)
        out["macro_f1"].append(per_class.mean(axis=1))
        out["weighted_f1"].append((per_class * support).sum(axis=1) / support.sum(axis=1))
        if positive_label is not None:
            out["f1"].append(per_class[:, position[positive_label]])
    return {name: np.concatenate(values) for name, values in out.items() if values}


def paired_macro_f1_gain(
    true_code: np.ndarray,
    candidate_code: np.ndarray,
    reference_code: np.ndarray,
    n_classes: int,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """(macro-F1 of `candidate` − macro-F1 of `reference` on all rows, its bootstrap standard error):
    both predictions scored on the SAME resampled rows (a paired bootstrap), so the error is that of
    the difference, not of either score. Inputs are class codes 0..n_classes-1."""
    true_code, candidate_code, reference_code = (
        np.asarray(c, dtype=np.int64) for c in (true_code, candidate_code, reference_code)
    )
    n, k = len(true_code), int(n_classes)
    if n == 0 or len(candidate_code) != n or len(reference_code) != n:
        raise ValueError(
            f"paired_macro_f1_gain: {n} true values, {len(candidate_code)} and {len(reference_code)} predictions"
        )

    def macro(counts: np.ndarray) -> np.ndarray:
        return _f1_from_counts(counts).mean(axis=-1)

    def counts_of(pair: np.ndarray, rows: np.ndarray) -> np.ndarray:
        size = len(rows)
        flat = (pair[rows] + (np.arange(size) * k * k)[:, None]).ravel()
        return np.bincount(flat, minlength=size * k * k).reshape(size, k, k)

    candidate_pair, reference_pair = true_code * k + candidate_code, true_code * k + reference_code
    everything = np.arange(n)[None, :]
    gain = float(macro(counts_of(candidate_pair, everything))[0] - macro(counts_of(reference_pair, everything))[0])
    rows = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    differences = macro(counts_of(candidate_pair, rows)) - macro(counts_of(reference_pair, rows))
    return gain, float(differences.std(ddof=1)) if n_bootstrap > 1 else 0.0


def bootstrap_macro_f1(
    true_code: np.ndarray, predictions: Sequence[np.ndarray], n_classes: int, n_bootstrap: int = 200, seed: int = 0
) -> np.ndarray:
    """Macro-F1 of each prediction (class codes 0..n_classes-1) on the SAME `n_bootstrap` resamples of
    the rows (seeded): an array [len(predictions), n_bootstrap], for paired comparisons of many."""
    true_code = np.asarray(true_code, dtype=np.int64)
    n, k = len(true_code), int(n_classes)
    if n == 0 or any(len(p) != n for p in predictions):
        raise ValueError(
            f"bootstrap_macro_f1: {n} true values and predictions of lengths {[len(p) for p in predictions]}"
        )
    rows = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    offsets = (np.arange(n_bootstrap) * k * k)[:, None]
    result = np.empty((len(predictions), n_bootstrap))
    for i, prediction in enumerate(predictions):
        pair = true_code * k + np.asarray(prediction, dtype=np.int64)
        counts = np.bincount((pair[rows] + offsets).ravel(), minlength=n_bootstrap * k * k)
        result[i] = _f1_from_counts(counts.reshape(n_bootstrap, k, k)).mean(axis=-1)
    return result


def confidence_interval(distribution: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval holding `confidence` of the bootstrap distribution."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(distribution, [tail, 1.0 - tail])
    return float(low), float(high)


def scores_with_intervals(
    y_true: Sequence,
    y_pred: Sequence,
    labels: Sequence,
    config: MetricsConfig = MetricsConfig(),
    positive_label=None,
) -> dict[str, float]:
    """`scores` plus `<metric>_low` / `<metric>_high` bootstrap bounds for every F1 metric."""
    result = scores(y_true, y_pred, labels, positive_label)
    distributions = bootstrap_f1(y_true, y_pred, labels, config, positive_label)
    for name, distribution in distributions.items():
        result[f"{name}_low"], result[f"{name}_high"] = confidence_interval(distribution, config.confidence)
    return result


def confusion_matrix_png(y_true: Sequence, y_pred: Sequence, labels: Sequence, title: str) -> bytes:
    """A row-normalised confusion matrix (counts written in the cells) as PNG bytes (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    labels = list(labels)
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    side = min(14.0, 2.5 + 0.45 * len(labels))
    figure = Figure(figsize=(side, side * 0.85), dpi=80)
    axes = figure.subplots()
    axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [str(label)[:24] for label in labels]
    axes.set_xticks(range(len(labels)), names, rotation=90, fontsize=7)
    axes.set_yticks(range(len(labels)), names, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    if len(labels) <= 20:
        for (row, column), value in np.ndenumerate(counts):
            if value:
                axes.text(
                    column,
                    row,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shares[row, column] > 0.5 else "black",
                )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
