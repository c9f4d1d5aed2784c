"""Decision-level (late) fusion: meta-models over the class probabilities of unimodal models.

Both fusers are scikit-learn estimators (`clone`, splitters and metrics just work). Their input
`X` is the horizontal stack of per-modality probability blocks, each with one column per class
of `classes` (in that order): `[P_text | P_image]`. They must be fitted on OUT-OF-FOLD
probabilities only (see `wb_pipeline.core.models.classification`), otherwise the meta-model learns to
trust base models that have memorised their training rows.

- `LateFusionClassifier`: a small LightGBM model on the stacked probabilities (the seed's plan).
- `MeanProbabilityFusion`: the average of the blocks — the honest baseline it has to beat.

Saved models are plain files: LightGBM's own text format plus a JSON sidecar; loading never
unpickles anything.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import check_array, check_is_fitted
from upath import UPath

from wb_pipeline.core.data import storage
from wb_pipeline.core.model_selection.metrics import bootstrap_macro_f1, paired_macro_f1_gain

BOOSTER_FILE = "late_fusion.lgbm.txt"
SIDECAR_FILE = "late_fusion.json"
BRAND_ENCODING_FILE = "brand_encoding.json"
TABULAR_COLUMNS = ("log_price", "brand_frequency", "n_characteristics")


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

    def fit(self, X, y) -> MeanProbabilityFusion:
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
    """LightGBM over stacked out-of-fold class probabilities (+ optional tabular columns), boosted FROM
    the best probability block.

    `X` = `n_prob_blocks` probability blocks of `len(classes)` columns each, then any extra feature
    columns (tabular product features, target encodings). A tree meta-model trained from class priors
    on a few hundred rows loses to its own inputs (41 classes × 200 rows is ~5 rows per class); so the
    booster starts from the log-probabilities of its inputs — by default (`boost_from='bagged'`) a
    mixture of the blocks and their mean, weighted by how often each scores the best macro-F1 on
    bootstrap resamples of the training rows (out-of-fold probabilities, so the choice is honest) — and
    only learns corrections. The number of trees is chosen by early stopping on `inner_splits` group-aware
    folds of the training rows, and is 0 when no tree improves the weighted log-loss of the start: the
    model then IS its best input instead of something worse. Shallow, regularised trees
    (`max_depth`, `min_child_samples`, `lambda_l2`) suit a few hundred labelled rows.

    Deterministic (`deterministic=True`, fixed seed, `n_jobs` threads). `class_weight='balanced'`
    reweights rows inversely to class frequency (the macro-F1 target), in training and in the early-
    stopping metric; `classes` fixes the class list even when a fold lacks a rare class.
    """

    def __init__(
        self,
        classes: Sequence | None = None,
        n_prob_blocks: int = 2,
        boost_from: str = "bagged",
        n_estimators: int = 200,
        num_leaves: int = 4,
        max_depth: int = 2,
        learning_rate: float = 0.05,
        min_child_samples: int = 20,
        lambda_l2: float = 1.0,
        class_weight: str | None = "balanced",
        early_stopping_rounds: int = 20,
        gate_on_macro_f1: bool = True,
        gate_margin_se: float = 1.0,
        inner_splits: int = 3,
        start_bootstrap: int = 200,
        random_state: int = 0,
        n_jobs: int = 1,
    ):
        self.classes = classes
        self.n_prob_blocks = n_prob_blocks
        self.boost_from = boost_from
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.lambda_l2 = lambda_l2
        self.class_weight = class_weight
        self.early_stopping_rounds = early_stopping_rounds
        self.gate_on_macro_f1 = gate_on_macro_f1
        self.gate_margin_se = gate_margin_se
        self.inner_splits = inner_splits
        self.start_bootstrap = start_bootstrap
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _params(self, n_classes: int) -> dict:
        params = {
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_child_samples,
            "lambda_l2": self.lambda_l2,
            "seed": self.random_state,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": self.n_jobs,
            "verbose": -1,
        }
        if n_classes == 2:
            params.update(objective="binary", metric="binary_logloss")
        else:
            params.update(objective="multiclass", num_class=n_classes, metric="multi_logloss")
        return params

    # --- the starting point -----------------------------------------------------------------

    def _blocks(self, X: np.ndarray) -> np.ndarray:
        k = len(self.classes_)
        return X[:, : self.n_prob_blocks * k].reshape(len(X), self.n_prob_blocks, k)

    def _start_weights(self, start: str) -> np.ndarray:
        """The weights of the probability blocks in a 'mean' or 'block:<i>' start."""
        if start == "mean":
            return np.full(self.n_prob_blocks, 1.0 / self.n_prob_blocks)
        weights = np.zeros(self.n_prob_blocks)
        weights[int(start.split(":")[1])] = 1.0
        return weights

    def _start_proba(self, X: np.ndarray, start: str | np.ndarray) -> np.ndarray:
        weights = self._start_weights(start) if isinstance(start, str) else np.asarray(start, dtype=np.float64)
        return np.einsum("nbk,b->nk", self._blocks(X), weights)

    def _init_score(self, X: np.ndarray) -> np.ndarray:
        proba = np.clip(self._start_proba(X, self.start_weights_), 1e-6, 1.0)
        if len(self.classes_) == 2:
            return np.log(proba[:, 1]) - np.log(proba[:, 0])  # binary: the logit of classes_[1]
        return np.log(proba / proba.sum(axis=1, keepdims=True))

    def _choose_start(self, X: np.ndarray, encoded: np.ndarray) -> tuple[str, np.ndarray]:
        """(name, block weights) of the start. 'mean', 'block:<i>' as configured; 'best_block' the block
        with the best macro-F1 on the training rows (out-of-fold probabilities, so the score is honest);
        'auto' the mean of the blocks unless the best block beats it there; 'bagged' (see `_bagged_start`)."""
        if self.boost_from == "mean" or self.boost_from.startswith("block:"):
            return self.boost_from, self._start_weights(self.boost_from)
        if self.boost_from == "bagged":
            return "mixture", self._bagged_start(X, encoded)
        labels = np.arange(len(self.classes_))

        def score(start: str) -> float:
            predicted = np.argmax(self._start_proba(X, start), axis=1)
            return f1_score(encoded, predicted, labels=labels, average="macro", zero_division=0)

        blocks = [f"block:{b}" for b in range(self.n_prob_blocks)]
        best_block = max(blocks, key=lambda start: (score(start), -blocks.index(start)))
        chosen = best_block if self.boost_from == "best_block" or score(best_block) > score("mean") else "mean"
        return chosen, self._start_weights(chosen)

    def _bagged_start(self, X: np.ndarray, encoded: np.ndarray) -> np.ndarray:
        """Block weights of the bootstrap-smoothed ('bagged') choice among the candidates {each block, the
        mean of the blocks}: on each of `start_bootstrap` resamples of the training rows (the same
        resamples for every candidate) the candidate with the best macro-F1 wins (ties share); a
        candidate's weight is its share of wins, and the start is the weighted mixture of the candidates'
        probabilities. A hard argmax on ~200 rows flips between near-tied inputs at the slightest change
        of their probabilities; the shares move only a little (Breiman's bagging of a selection)."""
        blocks = self._blocks(X)
        candidates = [np.argmax(blocks[:, b], axis=1) for b in range(self.n_prob_blocks)]
        candidates.append(np.argmax(blocks.mean(axis=1), axis=1))
        resampled = bootstrap_macro_f1(
            encoded, candidates, len(self.classes_), max(1, self.start_bootstrap), seed=self.random_state
        )
        best = resampled == resampled.max(axis=0, keepdims=True)
        share = (best / best.sum(axis=0, keepdims=True)).mean(axis=1)
        return share[: self.n_prob_blocks] + share[self.n_prob_blocks] / self.n_prob_blocks

    # --- fit / predict --------------------------------------------------------------------------

    def _dataset(self, X, encoded, weight, init_score) -> lgb.Dataset:
        return lgb.Dataset(
            X, label=encoded, weight=weight, init_score=init_score, params={"verbose": -1}, free_raw_data=False
        )

    def _choose_rounds(self, X, encoded, weight, init_score, groups) -> tuple[int, list[int]]:
        """Trees to keep, by `inner_splits` group-aware folds of the training rows: per fold, a booster
        early-stopped on the weighted log-loss; the trees are kept (their rounded mean count) only if the
        fold-wise out-of-fold predictions WITH them beat the starting point alone on macro-F1 — the
        target metric; a better log-loss alone often just re-calibrates without changing a decision."""
        if self.n_estimators == 0:
            return 0, []
        params = self._params(len(self.classes_))
        groups = np.arange(len(encoded)) if groups is None else np.asarray(groups)
        n_splits = min(self.inner_splits, len(np.unique(groups)), int(np.bincount(encoded).max()))
        if n_splits < 2:
            return 0, []
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="sklearn.model_selection")
            folds = list(splitter.split(X, encoded, groups))
        boosted = np.array(init_score, dtype=np.float64, copy=True)
        chosen = []
        for train, valid in folds:
            w_train = None if weight is None else weight[train]
            w_valid = None if weight is None else weight[valid]
            train_set = self._dataset(X[train], encoded[train], w_train, init_score[train])
            valid_set = self._dataset(X[valid], encoded[valid], w_valid, init_score[valid])
            booster = lgb.train(
                params,
                train_set,
                num_boost_round=self.n_estimators,
                valid_sets=[valid_set],
                valid_names=["valid"],
                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            )
            best = int(booster.best_iteration or booster.current_iteration())
            chosen.append(best)
            raw = np.asarray(booster.predict(X[valid], num_iteration=best, raw_score=True))
            boosted[valid] = boosted[valid] + raw.reshape(boosted[valid].shape)
        labels = np.arange(len(self.classes_))

        def decisions(raw: np.ndarray) -> np.ndarray:
            return (raw > 0).astype(np.int64) if raw.ndim == 1 else np.argmax(raw, axis=1)

        if self.gate_on_macro_f1:
            # One-standard-error rule: on a few hundred rows a gain smaller than its own bootstrap error
            # is as likely noise as signal, and the start is the simpler model.
            gain, error = paired_macro_f1_gain(
                encoded, decisions(boosted), decisions(init_score), len(labels), seed=self.random_state
            )
            if gain <= self.gate_margin_se * error:
                return 0, chosen
        return max(1, int(round(float(np.mean(chosen))))), chosen

    def fit(self, X, y, groups=None) -> LateFusionClassifier:
        X = check_array(X, ensure_all_finite="allow-nan")  # unknown prices stay NaN: LightGBM routes them
        y = np.asarray(y, dtype=object)
        self.classes_ = _resolve_classes(self.classes, y)
        self.n_features_in_ = X.shape[1]
        if len(self.classes_) < 2:
            raise ValueError(f"LateFusionClassifier needs at least 2 classes, got {list(self.classes_)}")
        if X.shape[1] < self.n_prob_blocks * len(self.classes_):
            raise ValueError(
                f"LateFusionClassifier: {X.shape[1]} columns cannot hold {self.n_prob_blocks} "
                f"probability blocks of {len(self.classes_)} classes"
            )
        position = {label: i for i, label in enumerate(self.classes_.tolist())}
        encoded = np.fromiter((position[v] for v in y), dtype=np.int64, count=len(y))
        weight = compute_sample_weight(self.class_weight, encoded) if self.class_weight else None
        self.start_, self.start_weights_ = self._choose_start(X, encoded)
        init_score = self._init_score(X)
        self.n_trees_, self.fold_trees_ = self._choose_rounds(X, encoded, weight, init_score, groups)
        self.booster_ = None
        if self.n_trees_ > 0:
            self.booster_ = lgb.train(
                self._params(len(self.classes_)),
                self._dataset(X, encoded, weight, init_score),
                num_boost_round=self.n_trees_,
            )
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = check_array(X, ensure_all_finite="allow-nan")  # unknown prices stay NaN: LightGBM routes them
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"LateFusionClassifier was fitted on {self.n_features_in_} columns, got {X.shape[1]}")
        raw = self._init_score(X)
        if self.booster_ is not None:
            raw = raw + np.asarray(self.booster_.predict(X, raw_score=True)).reshape(raw.shape)
        if len(self.classes_) == 2:
            positive = 1.0 / (1.0 + np.exp(-raw))
            return np.column_stack([1.0 - positive, positive])
        raw = raw - raw.max(axis=1, keepdims=True)
        weights = np.exp(raw)
        return weights / weights.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# --- tabular product features for the meta-model ------------------------------------------------


def _normalised_brand(value) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return " ".join(str(value).casefold().split()) or None


def normalised_brand(brands: pd.Series) -> pd.Series:
    """Brands case-folded with whitespace collapsed (Python's `str.casefold` and `str.split`); empty or
    missing → None (no brand); a non-text value through `str`."""
    return pd.Series([_normalised_brand(v) for v in brands.tolist()], index=brands.index, dtype=object)


def _first_rows(keys: Sequence[str]) -> dict[str, int]:
    """key -> the position of its first occurrence."""
    return dict(zip(reversed(keys), range(len(keys) - 1, -1, -1)))


@dataclass(frozen=True)
class BrandCounts:
    """How many products of a catalogue carry each normalised brand, and the catalogue's size: what the
    brand share of `tabular_features` divides. Built once (`brand_counts`) by a caller that scores a few
    products at a time against a large catalogue (a service), and updated by the products it adds."""

    counts: dict[str, int]  # normalised brand -> products
    products: int

    def plus(self, products: pd.DataFrame, sign: int = 1) -> BrandCounts:
        """These counts with `products` (nm, brand) added (`sign=-1`: removed)."""
        other = brand_counts(products)
        counts = dict(self.counts)
        for brand, count in other.counts.items():
            counts[brand] = counts.get(brand, 0) + sign * count
        return BrandCounts({b: c for b, c in counts.items() if c > 0}, self.products + sign * other.products)

    def share(self, brand: str | None) -> float:
        """The share of the catalogue carrying `brand` (0 without a brand)."""
        return self.counts.get(brand, 0) / max(self.products, 1) if brand is not None else 0.0


def brand_counts(products: pd.DataFrame) -> BrandCounts:
    """`BrandCounts` of `products` (one per distinct `nm`; `brand` optional)."""
    first = _first_rows(products["nm"].tolist())
    if "brand" not in products:
        return BrandCounts({}, len(first))
    raw = products["brand"].tolist()
    counts: dict[str, int] = {}
    for row in sorted(first.values()):
        brand = _normalised_brand(raw[row])
        if brand is not None:
            counts[brand] = counts.get(brand, 0) + 1
    return BrandCounts(counts, len(first))


def tabular_features(
    nm: Sequence[str],
    products: pd.DataFrame,
    characteristics: pd.DataFrame | None,
    catalogue_brands: BrandCounts | None = None,
) -> pd.DataFrame:
    """Per product of `nm` (same order): `brand` (normalised, None if absent) and the numeric meta-model
    columns `TABULAR_COLUMNS` — log1p(price) (NaN when unknown: LightGBM routes missing values), the share
    of the catalogue (`products`) carrying the same brand (0 without a brand; label-free, so no fold
    can leak through it), and the number of distinct characteristics the card fills in.

    `products` needs `nm` and optionally `brand`, `price` (each nm's first row counts); `characteristics`
    is the long `product_characteristics` table (nm, name, value) or None. `catalogue_brands`: the
    catalogue's `brand_counts`, when `products` holds only the products of `nm` (the shares then come
    from it). Array and dict lookups: one product costs microseconds, a catalogue what its size costs."""
    ids = [str(x) for x in nm]
    keys = [str(x) for x in products["nm"].tolist()]
    first = _first_rows(keys)
    position = np.fromiter((first.get(x, -1) for x in ids), np.int64, len(ids))
    found = position >= 0
    rows = position[found]
    brand = np.full(len(ids), None, dtype=object)
    if "brand" in products:
        raw = products["brand"].to_numpy(dtype=object)
        brand[found] = [_normalised_brand(v) for v in raw[rows].tolist()]
    counts = brand_counts(products) if catalogue_brands is None else catalogue_brands
    log_price = np.full(len(ids), np.nan)
    if "price" in products:
        price = pd.to_numeric(products["price"].iloc[rows], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        log_price[found] = np.log1p(np.where(price >= 0, price, np.nan))
    n_characteristics = np.zeros(len(ids))
    if characteristics is not None and len(characteristics):
        own = characteristics.astype({"nm": str})
        own = own[own["nm"].isin(set(ids))]
        per_product = own.groupby("nm")["name"].nunique()
        n_characteristics = np.array([float(per_product.get(x, 0)) for x in ids])
    return pd.DataFrame(
        {
            "nm": pd.Series(ids, dtype=object).astype(str),
            "brand": pd.Series(brand, dtype=object),
            "log_price": log_price,
            "brand_frequency": np.array([counts.share(b) for b in brand], dtype=np.float64),
            "n_characteristics": n_characteristics,
        }
    )


class BrandTargetEncoding:
    """Smoothed class shares per brand: (rows of the brand in class c + m·prior_c) / (rows of the brand + m).

    A brand seen on few rows stays near the prior (m = `smoothing`); an unknown or missing brand gets
    the prior. It is fitted on labelled rows only, so callers must fit it out of fold
    (`out_of_fold_brand_encoding`) for any row it is then evaluated or trained on."""

    def __init__(self, n_classes: int, smoothing: float):
        if smoothing <= 0:
            raise ValueError(f"BrandTargetEncoding: smoothing must be positive, got {smoothing}")
        self.n_classes, self.smoothing = int(n_classes), float(smoothing)
        self.prior = np.full(self.n_classes, 1.0 / self.n_classes)
        self.counts: dict[str, np.ndarray] = {}

    def fit(self, brands: Sequence, encoded_y: np.ndarray) -> BrandTargetEncoding:
        encoded_y = np.asarray(encoded_y, dtype=np.int64)
        if len(encoded_y):
            self.prior = np.bincount(encoded_y, minlength=self.n_classes) / len(encoded_y)
        self.counts = {}
        for brand, label in zip(brands, encoded_y):
            if brand is None or (isinstance(brand, float) and np.isnan(brand)):
                continue
            self.counts.setdefault(str(brand), np.zeros(self.n_classes))[label] += 1.0
        return self

    def transform(self, brands: Sequence) -> np.ndarray:
        out = np.tile(self.prior, (len(brands), 1))
        for row, brand in enumerate(brands):
            counts = self.counts.get(str(brand)) if brand is not None else None
            if counts is not None:
                out[row] = (counts + self.smoothing * self.prior) / (counts.sum() + self.smoothing)
        return out

    def to_json_dict(self) -> dict:
        return {
            "n_classes": self.n_classes,
            "smoothing": self.smoothing,
            "prior": self.prior.tolist(),
            "counts": {brand: counts.tolist() for brand, counts in self.counts.items()},
        }

    @classmethod
    def from_json_dict(cls, values: dict) -> BrandTargetEncoding:
        encoding = cls(values["n_classes"], values["smoothing"])
        encoding.prior = np.asarray(values["prior"], dtype=np.float64)
        encoding.counts = {brand: np.asarray(counts, dtype=np.float64) for brand, counts in values["counts"].items()}
        return encoding


def out_of_fold_brand_encoding(
    brands: Sequence,
    encoded_y: np.ndarray,
    n_classes: int,
    smoothing: float,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Brand encodings of every row computed only from the other folds' rows (no row sees its own label)."""
    brands = np.asarray(list(brands), dtype=object)
    out = np.zeros((len(brands), n_classes))
    for train, valid in folds:
        out[valid] = (
            BrandTargetEncoding(n_classes, smoothing).fit(brands[train], encoded_y[train]).transform(brands[valid])
        )
    return out


def save_brand_encoding(encoding: BrandTargetEncoding, folder: UPath) -> None:
    storage.atomic_write_bytes(
        folder / BRAND_ENCODING_FILE, json.dumps(encoding.to_json_dict(), ensure_ascii=False).encode("utf-8")
    )


def load_brand_encoding(folder: UPath) -> BrandTargetEncoding | None:
    path = folder / BRAND_ENCODING_FILE
    return BrandTargetEncoding.from_json_dict(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None


def save_late_fusion(model: LateFusionClassifier, folder: UPath, extra: dict | None = None) -> None:
    """Write the booster (LightGBM text format) and a JSON sidecar (classes, params) atomically."""
    check_is_fitted(model)
    sidecar = {
        "classes": [str(c) for c in model.classes_],
        "n_features_in": int(model.n_features_in_),
        "params": {k: v for k, v in model.get_params().items() if k != "classes"},
        "start": model.start_,
        "start_weights": [float(w) for w in model.start_weights_],
        "n_trees": int(model.n_trees_),
        "fold_trees": [int(v) for v in model.fold_trees_],
        **(extra or {}),
    }
    if model.booster_ is not None:
        storage.atomic_write_bytes(folder / BOOSTER_FILE, model.booster_.model_to_string().encode("utf-8"))
    # The sidecar last: with n_trees 0 no booster is read, so a stale booster file is never used.
    storage.atomic_write_bytes(folder / SIDECAR_FILE, json.dumps(sidecar, ensure_ascii=False, indent=1).encode("utf-8"))


def load_late_fusion(folder: UPath) -> LateFusionClassifier:
    """Rebuild a fitted `LateFusionClassifier` from `save_late_fusion` files (text parsing, no pickle)."""
    sidecar = json.loads((folder / SIDECAR_FILE).read_text(encoding="utf-8"))
    model = LateFusionClassifier(classes=sidecar["classes"], **sidecar["params"])
    model.classes_ = np.asarray(sidecar["classes"], dtype=object)
    model.n_features_in_ = int(sidecar["n_features_in"])
    model.start_, model.n_trees_, model.fold_trees_ = sidecar["start"], int(sidecar["n_trees"]), sidecar["fold_trees"]
    model.start_weights_ = (
        np.asarray(sidecar["start_weights"], dtype=np.float64)
        if "start_weights" in sidecar
        else model._start_weights(model.start_)
    )  # saved before mixtures existed
    model.booster_ = (
        lgb.Booster(model_str=(folder / BOOSTER_FILE).read_text(encoding="utf-8")) if model.n_trees_ > 0 else None
    )
    return model
