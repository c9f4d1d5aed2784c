"""Data tests on the joint space: valid vectors for every product, and training that helped."""

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.models.contrastive import JOINT_COLUMNS, joint_matrix

NORM_TOLERANCE = 1e-3


@dg.asset_check(
    asset="joint_embeddings",
    blocking=True,
    additional_ins={"text_embeddings": dg.AssetIn()},
    description="One row per embedded product, same order; every joint vector finite and unit-norm.",
)
def joint_embeddings_valid(joint_embeddings: pd.DataFrame, text_embeddings: EmbeddingTable) -> dg.AssetCheckResult:
    same_rows = np.array_equal(joint_embeddings["nm"].to_numpy(dtype=object), text_embeddings.nm)
    not_unit = {}
    for column in JOINT_COLUMNS:
        vectors = joint_matrix(joint_embeddings, column)
        norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.ones(0)
        not_unit[column] = int((~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOLERANCE)).sum())
    return dg.AssetCheckResult(
        passed=bool(same_rows and not any(not_unit.values())),
        metadata={"rows_match_text_embeddings": bool(same_rows), **{f"{k}_not_unit": v for k, v in not_unit.items()}},
    )


@dg.asset_check(
    asset="contrastive_model",
    description="Held-out Recall@10 after training beats the untrained heads in both directions (warns: a "
    "tiny or signal-free catalogue may not allow it).",
)
def training_beats_untrained_heads(contrastive_model: pd.DataFrame) -> dg.AssetCheckResult:
    recall = contrastive_model.pivot(index="direction", columns="stage", values="recall_at_10")
    gains = (recall["after"] - recall["before"]).to_dict()
    return dg.AssetCheckResult(
        passed=bool(all(gain > 0 for gain in gains.values())),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={f"{direction}_recall_at_10_gain": float(gain) for direction, gain in gains.items()},
    )
