"""Predictions for the products of one drop from the SAVED models (no retraining).

Per label the model is the one `test_predictions` uses (the report's best model by held-out
macro-F1). A product that lacks a vector that model reads (e.g. no image vector, hence no joint
vector either) is predicted by the next-best saved model whose inputs it has, and the row says so;
when no saved model fits, or the product never got past cleaning, the row has no prediction and a
reason. So every product of the drop has one row per label, never a silent gap.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from wb_pipeline.core.classification import ALL_MODELS, MODEL_BLOCKS, UNIMODAL_MODELS, LabelModels, predict_label
from wb_pipeline.core.contrastive import combine_joint
from wb_pipeline.core.embeddings import EmbeddingTable

COLUMNS = ["nm", "label", "predicted", "probability", "model", "status", "reason"]
PREDICTED, FALLBACK, NOT_PREDICTED, REJECTED = "predicted", "fallback", "not_predicted", "rejected"


def drop_features(nm: Sequence[str], text: EmbeddingTable, image: EmbeddingTable, joint_model=None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(block -> matrix, block -> has-it mask), row-aligned with `nm`: the cached text and image
    vectors, and the joint (combined) vector projected by the SAVED joint model where both exist.
    Rows without a vector are zeros and masked out."""
    nm = [str(x) for x in nm]
    features, available = {}, {}
    for block, table in (("text", text), ("image", image)):
        position = table.positions(nm)
        has = position >= 0
        matrix = np.zeros((len(nm), table.dim if len(table) else 0), np.float32)
        matrix[has] = table.vectors[position[has]]
        features[block], available[block] = matrix, has
    if joint_model is not None:
        both = available["text"] & available["image"]
        joint = None
        if both.any():
            joint = combine_joint(joint_model.project_text(features["text"][both]),
                                  joint_model.project_image(features["image"][both]))
        matrix = np.zeros((len(nm), 0 if joint is None else joint.shape[1]), np.float32)
        if joint is not None:
            matrix[both] = joint
        features["joint"], available["joint"] = matrix, both
    return features, available


def model_inputs(models: LabelModels, model: str) -> frozenset[str]:
    """The vector blocks (text, image, joint) a saved model reads."""
    if model in models.base:
        return frozenset(MODEL_BLOCKS[model])
    if model == "mean_probability":
        return frozenset(b for m in UNIMODAL_MODELS for b in MODEL_BLOCKS[m])
    if model == "late_fusion":
        return frozenset(b for m in models.fusion_inputs for b in MODEL_BLOCKS[m])
    raise ValueError(f"{models.label}: unknown model {model!r}")


def usable_models(models: LabelModels) -> list[str]:
    return [m for m in ALL_MODELS if m in models.base or m == "mean_probability"
            or (m == "late_fusion" and models.late_fusion is not None)]


def model_ranking(report: pd.DataFrame, label: str, models: LabelModels, chosen: str = "best") -> list[str]:
    """The chosen model (the report's best when `chosen="best"`) then the other saved models by
    held-out macro-F1: the order in which a product missing a modality falls back."""
    own = report[report["label"] == label]
    if own.empty:
        raise ValueError(f"drop predictions: label {label!r} is not in the classification report")
    first = str(own["best_model"].iloc[0]) if chosen == "best" else chosen
    usable = usable_models(models)
    if first not in usable:
        raise ValueError(f"drop predictions: model {first!r} of label {label!r} is not saved (saved: {usable})")
    ranked = own[own["model"].isin(usable)].sort_values("macro_f1", ascending=False)["model"].tolist()
    return [first, *[m for m in dict.fromkeys(ranked) if m != first], *[m for m in usable if m not in ranked and m != first]]


def predict_drop(
    drop_products: pd.DataFrame,
    features: Mapping[str, np.ndarray],
    available: Mapping[str, np.ndarray],
    label_models: Mapping[str, LabelModels],
    report: pd.DataFrame,
    tabular: pd.DataFrame | None,
    rejected: pd.DataFrame | None = None,
    chosen: str = "best",
) -> pd.DataFrame:
    """One row per (product of the drop, label): `COLUMNS`.

    `drop_products`: nm of every product of the drop (clean or not), in order; `features`: block ->
    matrix row-aligned with `drop_products` (rows of products without that block are ignored);
    `available`: block -> bool mask, row-aligned; `rejected`: nm, reason, detail of the drop's products
    that cleaning rejected (their rows say why and carry no prediction)."""
    nm = drop_products["nm"].astype(str).to_numpy(dtype=object)
    n = len(nm)
    for block, mask in available.items():
        if len(mask) != n:
            raise ValueError(f"drop predictions: mask of {block} has {len(mask)} rows for {n} products")
    why_rejected = {}
    if rejected is not None and len(rejected):
        for row in rejected.drop_duplicates("nm").itertuples():
            why_rejected[str(row.nm)] = f"rejected at cleaning: {row.reason}" + (f" ({row.detail})" if isinstance(row.detail, str) and row.detail else "")
    blocks = sorted(available)
    pattern = np.array(["|".join(b for b in blocks if available[b][i]) for i in range(n)], dtype=object)
    is_rejected = np.array([x in why_rejected for x in nm], bool)
    frames = []
    for label, models in label_models.items():
        ranking = model_ranking(report, label, models, chosen)
        first, first_needs = ranking[0], model_inputs(models, ranking[0])
        if is_rejected.any():
            frames.append(pd.DataFrame({"nm": nm[is_rejected], "label": label, "predicted": None, "probability": np.nan,
                                        "model": None, "status": REJECTED,
                                        "reason": [why_rejected[x] for x in nm[is_rejected]]}))
        for key in pd.unique(pattern[~is_rejected]):
            rows = np.flatnonzero((pattern == key) & ~is_rejected)
            have = frozenset(key.split("|")) if key else frozenset()
            model = next((m for m in ranking if model_inputs(models, m) <= have), None)
            missing = ", ".join(sorted(first_needs - have))
            if model is None:
                frames.append(pd.DataFrame({
                    "nm": nm[rows], "label": label, "predicted": None, "probability": np.nan, "model": None,
                    "status": NOT_PREDICTED,
                    "reason": f"no {missing or 'input'} vector, and no saved model of {label} works without it "
                              f"(saved: {', '.join(ranking)})"}))
                continue
            part = predict_label(models, model, nm[rows], {b: np.asarray(features[b])[rows] for b in have},
                                 tabular)
            if model == first:
                part["status"], part["reason"] = PREDICTED, ""
            else:
                part["status"] = FALLBACK
                part["reason"] = (f"no {missing} vector: the chosen model {first} reads "
                                  f"{', '.join(sorted(first_needs))}; predicted by {model} instead")
            frames.append(part)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(frames, ignore_index=True)[COLUMNS]
    order = {x: i for i, x in enumerate(nm)}
    out["_order"] = out["nm"].map(order)
    return out.sort_values(["_order", "label"], kind="stable").drop(columns="_order").reset_index(drop=True)
