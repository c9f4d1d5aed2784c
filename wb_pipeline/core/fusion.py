"""Decision-level (late) fusion: meta-models over the class probabilities of unimodal models.

Both fusers are scikit-learn estimators (`clone`, splitters and metrics just work). Their input
`X` is the horizontal stack of per-modality probability blocks, each with one column per class
of `classes` (in that order): `[P_text | P_image]`. They must be fitted on OUT-OF-FOLD
probabilities only (see `wb_pipeline.core.classification`), otherwise the meta-model learns to
trust base models that have memorised their training rows.

- `LateFusionClassifier`: a small LightGBM model on the stacked probabilities (the seed's plan).
- `MeanProbabilityFusion`: the average of the blocks — the honest baseline it has to beat.

Saved models are plain files: LightGBM's own text format plus a JSON sidecar; loading never
unpickles anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import check_array, check_is_fitted
from upath import UPath

from wb_pipeline.core import storage

BOOSTER_FILE = "late_fusion.lgbm.txt"
SIDECAR_FILE = "late_fusion.json"


def _resolve_classes(classes: Sequence | None, y: np.ndarray) -> np.ndarray:
    if classes is None:
        return np.unique(y)
    resolved = np.asarray(list(classes), dtype=object)
    unknown = set(np.unique(y).tolist()) - set(resolved.tolist())
    if unknown:
        raise ValueError(f"y holds classes {sorted(map(str, unknown))} that are not in classes={list(resolved)}")
    return resolved


def _check_blocks(X: np.ndarray, n_classes: int, n_blocks: int | None) -> int:
    if X.shape[1] % n_classes:
        raise ValueError(f"{X.shape[1]} probability columns are not a whole number of {n_classes}-class blocks")
    blocks = X.shape[1] // n_classes
    if n_blocks is not None and blocks != n_blocks:
        raise ValueError(f"expected {n_blocks} probability blocks of {n_classes} classes, got {blocks}")
    return blocks


class MeanProbabilityFusion(ClassifierMixin, BaseEstimator):
    """Average of the per-modality probability blocks (no parameters learned beyond the layout)."""

    def __init__(self, classes: Sequence | None = None):
        self.classes = classes

    def fit(self, X, y) -> "MeanProbabilityFusion":
        X = check_array(X)
        y = np.asarray(y, dtype=object)
        self.classes_ = _resolve_classes(self.classes, y)
        self.n_features_in_ = X.shape[1]
        self.n_blocks_ = _check_blocks(X, len(self.classes_), None)
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = check_array(X)
        _check_blocks(X, len(self.classes_), self.n_blocks_)
        return X.reshape(len(X), self.n_blocks_, len(self.classes_)).mean(axis=1)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class LateFusionClassifier(ClassifierMixin, BaseEstimator):
    """LightGBM over stacked out-of-fold class probabilities.

    Kept small and deterministic (few leaves, `deterministic=True`, fixed seed, `n_jobs`
    threads). `class_weight='balanced'` reweights rows inversely to class frequency, matching the
    macro-F1 target; `classes` fixes the class list (and so the width of each probability block)
    even when a fold lacks a rare class.
    """

    def __init__(
        self,
        classes: Sequence | None = None,
        n_estimators: int = 100,
        num_leaves: int = 7,
        learning_rate: float = 0.05,
        min_child_samples: int = 10,
        class_weight: str | None = "balanced",
        random_state: int = 0,
        n_jobs: int = 1,
    ):
        self.classes = classes
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.class_weight = class_weight
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _params(self, n_classes: int) -> dict:
        params = {
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_child_samples,
            "seed": self.random_state,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": self.n_jobs,
            "verbose": -1,
        }
        if n_classes == 2:
            params["objective"] = "binary"
        else:
            params.update(objective="multiclass", num_class=n_classes)
        return params

    def fit(self, X, y) -> "LateFusionClassifier":
        X = check_array(X)
        y = np.asarray(y, dtype=object)
        self.classes_ = _resolve_classes(self.classes, y)
        self.n_features_in_ = X.shape[1]
        if len(self.classes_) < 2:
            raise ValueError(f"LateFusionClassifier needs at least 2 classes, got {list(self.classes_)}")
        position = {label: i for i, label in enumerate(self.classes_.tolist())}
        encoded = np.fromiter((position[v] for v in y), dtype=np.int64, count=len(y))
        weight = compute_sample_weight(self.class_weight, encoded) if self.class_weight else None
        dataset = lgb.Dataset(X, label=encoded, weight=weight, params={"verbose": -1}, free_raw_data=True)
        self.booster_ = lgb.train(self._params(len(self.classes_)), dataset, num_boost_round=self.n_estimators)
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = check_array(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"LateFusionClassifier was fitted on {self.n_features_in_} columns, got {X.shape[1]}")
        raw = np.asarray(self.booster_.predict(X))
        if len(self.classes_) == 2:
            return np.column_stack([1.0 - raw, raw])
        return raw

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def save_late_fusion(model: LateFusionClassifier, folder: UPath, extra: dict | None = None) -> None:
    """Write the booster (LightGBM text format) and a JSON sidecar (classes, params) atomically."""
    check_is_fitted(model)
    sidecar = {
        "classes": [str(c) for c in model.classes_],
        "n_features_in": int(model.n_features_in_),
        "params": {k: v for k, v in model.get_params().items() if k != "classes"},
        **(extra or {}),
    }
    storage.atomic_write_bytes(folder / BOOSTER_FILE, model.booster_.model_to_string().encode("utf-8"))
    storage.atomic_write_bytes(folder / SIDECAR_FILE, json.dumps(sidecar, ensure_ascii=False, indent=1).encode("utf-8"))


def load_late_fusion(folder: UPath) -> LateFusionClassifier:
    """Rebuild a fitted `LateFusionClassifier` from `save_late_fusion` files (text parsing, no pickle)."""
    sidecar = json.loads((folder / SIDECAR_FILE).read_text(encoding="utf-8"))
    model = LateFusionClassifier(classes=sidecar["classes"], **sidecar["params"])
    model.classes_ = np.asarray(sidecar["classes"], dtype=object)
    model.n_features_in_ = int(sidecar["n_features_in"])
    model.booster_ = lgb.Booster(model_str=(folder / BOOSTER_FILE).read_text(encoding="utf-8"))
    return model
