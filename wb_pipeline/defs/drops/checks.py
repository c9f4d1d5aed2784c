"""The drift verdict of a drop, as a WARN check in the UI."""

import dagster as dg
import pandas as pd

from wb_pipeline.defs.automation.jobs import product_drops

FIGURES = (
    "drop_rows",
    "reference_rows",
    "text_domain_auc",
    "image_domain_auc",
    "text_mmd_p_value",
    "image_mmd_p_value",
    "max_label_js_excess",
)


@dg.asset_check(
    asset="drop_drift",
    partitions_def=product_drops,
    description="Warns when the drop's text or image vectors are unlike the training catalogue's (domain "
    "classifier AUC above `domain_auc_threshold`) or its predicted label mix shifted (Jensen–Shannon excess "
    "above `label_js_threshold`); the metadata has the figures and the verdict in plain words.",
)
def drop_within_training_distribution(drop_drift: pd.DataFrame) -> dg.AssetCheckResult:
    row = drop_drift.iloc[0].to_dict()
    figures = {k: float(row[k]) for k in FIGURES if row.get(k) is not None and pd.notna(row.get(k))}
    return dg.AssetCheckResult(
        passed=not (bool(row["drifted"]) or bool(row["label_shift"])),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "verdict": dg.MetadataValue.md(str(row["verdict"])),
            "drifted": bool(row["drifted"]),
            "label_shift": bool(row["label_shift"]),
            "judged": bool(row["judged"]),
            **figures,
        },
    )
