"""The per-modality model: an L2 logistic regression on scaled embedding blocks (`fit_logistic`), its
settings grid (C, class weight, image block weight) and probabilities aligned to a label's classes."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.utils.extmath import softmax
from threadpoolctl import threadpool_limits

from .config import ClassificationConfig


@contextmanager
def _quiet_fits(config: ClassificationConfig) -> Iterator[None]:
    with threadpool_limits(limits=config.blas_threads), warnings.catch_warnings():
        # Expected inside small inner folds; the outer class counts are reported instead.
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn.model_selection")
        yield


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
    return _Design(
        np.ascontiguousarray(r.T, dtype=np.float32), column_factors, np.ascontiguousarray(q.T, dtype=np.float32)
    )


def _solve(
    design: _Design,
    y: np.ndarray,
    c_value: float,
    class_weight: str,
    max_iter: int,
    warm: LogisticRegression | None = None,
    solver: str = "lbfgs",
) -> tuple[LogisticRegression, LogisticRegression]:
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


def fit_logistic(
    blocks: Sequence[np.ndarray],
    y: np.ndarray,
    setting: Setting,
    max_iter: int,
    row_space: bool = False,
    solver: str = "lbfgs",
) -> LogisticRegression:
    """A LogisticRegression (multinomial; `solver`) on the horizontally stacked `blocks`, each divided by its
    `block_scales` value (and the second — the image block of early fusion — weighed by the setting).

    The scaling is folded into `coef_` afterwards, so the returned model predicts on the RAW stacked
    blocks (what `save_logistic` stores and every caller passes). `row_space`: solve in the row space of
    the scaled matrix when it has fewer rows than columns (the same problem; see `_Design`)."""
    c_value, class_weight, image_weight = setting
    return _solve(_design(blocks, image_weight, row_space), y, c_value, class_weight, max_iter, solver=solver)[1]


def logistic_proba_by_row(model: LogisticRegression, X: np.ndarray) -> np.ndarray:
    """`model.predict_proba(X)` of a fitted LogisticRegression with each row's scores computed as its own
    vector-matrix product (`X[:, None, :] @ coef_.T`), then sklearn's softmax (its expit for two classes).

    A BLAS matrix product computes a row differently by its position in the block (measured: 34 of 64 rows
    of a 64 x 1,664 by 1,664 x 37 product changed in the last bits when moved to row 0), so a product
    predicted alone (a service's card: row 0) and in a batch would differ; row by row they cannot. Equal to
    sklearn's up to float rounding (tested). sklearn's per-call input validation, which costs more than the
    product on one prediction block, is skipped: a matrix that is not 2-D float with the fitted width goes
    to `model.predict_proba` (and its errors); NaN / infinity are refused as sklearn refuses them."""
    X = np.asarray(X)
    if X.ndim != 2 or X.dtype not in (np.float32, np.float64) or X.shape[1] != model.n_features_in_:
        return model.predict_proba(X)
    X = np.ascontiguousarray(X)
    if not np.isfinite(X).all():
        raise ValueError("Input X contains NaN or infinity.")
    # a C-ordered coefficient matrix whatever its origin (a fitted one is F-ordered, a loaded one C-ordered):
    # numpy's row-by-row product takes another loop, and other last bits, for another memory layout
    coef = np.ascontiguousarray(model.coef_)
    scores = (X[:, None, :] @ coef.T)[:, 0, :] + model.intercept_
    if scores.shape[1] == 1:  # two classes: the logit of classes_[1]
        positive = expit(scores[:, 0])
        return np.stack([1 - positive, positive], axis=1)
    return softmax(scores, copy=False)


def align_classes(proba: np.ndarray, model_classes: Sequence, classes: Sequence[str]) -> np.ndarray:
    """`proba` (columns = `model_classes`) with one column per entry of `classes` (0 for classes it never saw)."""
    out = np.zeros((len(proba), len(classes)), dtype=np.float64)
    position = {c: i for i, c in enumerate(classes)}
    for column, label in enumerate(model_classes):
        out[:, position[str(label)]] = proba[:, column]
    return out


def aligned_proba(model, X: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """`model.predict_proba(X)` with one column per entry of `classes` (0 for classes it never saw)."""
    return align_classes(model.predict_proba(X), model.classes_, classes)


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
