"""Data tests on the joint space: valid vectors for every product, and training that helped."""

import dagster as dg
import pandas as pd

from wb_pipeline.core.embeddings.vectors import check_vector_file, stored_ids
from wb_pipeline.core.models.contrastive import JOINT_COLUMNS
from wb_pipeline.defs.resources import WBStorage

NORM_TOLERANCE = 1e-3


@dg.asset_check(
    asset="joint_embeddings",
    blocking=True,
    description="One row per embedded product, same order; every joint vector finite and unit-norm. Reads the "
    "stored tables' `nm` columns and each vector column batch by batch, never the whole table.",
)
def joint_embeddings_valid(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
    layout = pipeline_storage.layout
    path = layout.asset_file("joint_embeddings")
    same_rows = stored_ids(path).equals(stored_ids(layout.asset_file("text_embeddings")))
    not_unit = {}
    for column in JOINT_COLUMNS:
        found = check_vector_file(path, NORM_TOLERANCE, column=column)
        not_unit[column] = found.rows_not_unit_norm + (0 if found.finite else found.rows)
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
