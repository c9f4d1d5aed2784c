"""Late fusion trained without leakage (`cross_validate_fusion`): outer fold f's meta-model sees only the
inner out-of-fold probabilities of fold f's training rows (plus tabular features), never a validation row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from joblib import delayed

from wb_pipeline.core.model_selection.folds import (
    group_stratified_folds,
)
from wb_pipeline.core.models.fusion import (
    TABULAR_COLUMNS,
    BrandTargetEncoding,
    MeanProbabilityFusion,
    out_of_fold_brand_encoding,
)

from .config import BASE_MODELS, INNER, OUTER, UNIMODAL_MODELS, ClassificationConfig
from .cross_validation import _parallel


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
    """(numeric tabular columns [n, 3], brands [n]) for `nm` from a `core.models.fusion.tabular_features` frame:
    each nm's first row there; NaN (numbers and brand) for an nm it lacks. Plain array and dict lookups, no
    frame is rebuilt (one product scored at a time pays a few microseconds, not a reindexed frame)."""
    keys = tabular["nm"].to_numpy(dtype=object)
    first = dict(zip(keys[::-1].tolist(), range(len(keys) - 1, -1, -1)))  # the first row of each nm wins
    position = np.fromiter((first.get(x, -1) for x in np.asarray(nm, dtype=object).tolist()), np.int64, len(nm))
    found = position >= 0
    numeric = np.full((len(position), len(TABULAR_COLUMNS)), np.nan)
    brands = np.full(len(position), np.nan, dtype=object)
    if found.any():
        rows = position[found]
        numeric[found] = np.column_stack([tabular[c].to_numpy(dtype=np.float64)[rows] for c in TABULAR_COLUMNS])
        brands[found] = tabular["brand"].to_numpy(dtype=object)[rows]
    return numeric, brands


def meta_features(
    probabilities: pd.DataFrame,
    stage: str,
    fold: int | None,
    inputs: Sequence[str],
    tabular: pd.DataFrame | None,
    classes: Sequence[str],
    config: ClassificationConfig,
    brand_encoding: BrandTargetEncoding | None = None,
):
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


def _fusion_fold(
    own: pd.DataFrame,
    fold: int,
    inputs: tuple[str, ...],
    tabular: pd.DataFrame | None,
    classes: Sequence[str],
    config: ClassificationConfig,
) -> tuple[list[pd.DataFrame], dict]:
    """One outer fold of `cross_validate_fusion`: the meta-model on the fold's inner rows, the mean baseline."""
    by_row = own.drop_duplicates("row").set_index("row")
    _, y_inner, groups_inner, X_inner, encoding = meta_features(own, INNER, fold, inputs, tabular, classes, config)
    rows, y_outer, _, X_outer, _ = meta_features(own, OUTER, fold, inputs, tabular, classes, config, encoding)
    late = config.late_fusion(classes, len(inputs)).fit(X_inner, y_inner, groups=groups_inner)
    _, y_uni, X_uni_inner = stacked(own, INNER, fold)
    _, _, X_uni_outer = stacked(own, OUTER, fold)
    mean = MeanProbabilityFusion(classes=list(classes)).fit(X_uni_inner, y_uni)
    diagnostic = {
        "label": own["label"].iloc[0],
        "fold": int(fold),
        "inputs": ", ".join(inputs),
        "tabular": tabular is not None,
        "start": fusion_start_name(late.start_, inputs, late.start_weights_),
        "trees": int(late.n_trees_),
    }
    frames = []
    for name, proba in (
        ("late_fusion", late.predict_proba(X_outer)),
        ("mean_probability", mean.predict_proba(X_uni_outer)),
    ):
        frames.append(
            pd.DataFrame(
                {
                    "label": own["label"].iloc[0],
                    "model": name,
                    "stage": OUTER,
                    "fold": int(fold),
                    "row": rows,
                    "nm": by_row["nm"].loc[rows].to_numpy(),
                    "y": y_outer,
                    "group": by_row["group"].loc[rows].to_numpy(),
                    "proba": list(proba.astype(np.float64)),
                }
            )
        )
    return frames, diagnostic


def cross_validate_fusion(
    probabilities: pd.DataFrame,
    label: str,
    classes: Sequence[str],
    config: ClassificationConfig,
    tabular: pd.DataFrame | None = None,
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
    results = _parallel(
        [delayed(_fusion_fold)(own, fold, inputs, tabular, classes, config) for fold in folds], config.n_jobs
    )
    frames = [frame for fold_frames, _ in results for frame in fold_frames]
    return pd.concat(frames, ignore_index=True), pd.DataFrame([diagnostic for _, diagnostic in results])


def fusion_start_name(start: str, inputs: Sequence[str], weights: Sequence[float] | None = None) -> str:
    """'mean of inputs', an input's name, or a mixture's weights ('text 0.62 + joint 0.38')."""
    if start == "mixture":
        return " + ".join(f"{name} {w:.2f}" for name, w in zip(inputs, weights) if round(w, 2) > 0) or "mixture"
    return "mean of inputs" if start == "mean" else inputs[int(start.split(":")[1])]
