"""Data tests on the classification outputs."""

import dagster as dg
import pandas as pd

from wb_pipeline.core.data import storage
from wb_pipeline.core.models.classification import ALL_MODELS, UNIMODAL_MODELS
from wb_pipeline.defs import metadata
from wb_pipeline.defs.resources import WBStorage

FUSION_TOLERANCE = 0.005  # macro-F1 points late fusion may trail the best unimodal model before warning


@dg.asset_check(
    asset="classification_report",
    description=f"Per label: late fusion macro-F1 >= best unimodal macro-F1 - {FUSION_TOLERANCE}; reports "
    "which trained model won (the zero-shot baseline is neither compared nor a candidate). Warns (fusion "
    "is not guaranteed to help; the report shows the numbers).",
)
def fusion_not_worse_than_best_unimodal(classification_report: pd.DataFrame) -> dg.AssetCheckResult:
    rows = []
    for label, part in classification_report.groupby("label", sort=False):
        by_model = part.set_index("model")["macro_f1"]
        by_model = by_model[by_model.index.isin(ALL_MODELS)]  # zero_shot is a baseline, not a contender
        unimodal = by_model[by_model.index.isin(UNIMODAL_MODELS)]
        if "late_fusion" not in by_model or unimodal.empty:
            continue
        fused, best = float(by_model["late_fusion"]), float(unimodal.max())
        rows.append(
            {
                "label": label,
                "best_unimodal": str(unimodal.idxmax()),
                "best_unimodal_macro_f1": round(best, 4),
                "late_fusion_macro_f1": round(fused, 4),
                "gain": round(fused - best, 4),
                "ok": fused >= best - FUSION_TOLERANCE,
                "winner": str(by_model.idxmax()),
            }
        )
    table = pd.DataFrame(
        rows,
        columns=["label", "best_unimodal", "best_unimodal_macro_f1", "late_fusion_macro_f1", "gain", "ok", "winner"],
    )
    failing = table.loc[~table["ok"].astype(bool), "label"].tolist()
    return dg.AssetCheckResult(
        passed=bool(len(table)) and not failing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"comparison": metadata.table(table), "labels_where_fusion_trails": ", ".join(failing) or "none"},
    )


@dg.asset_check(
    asset="test_predictions",
    blocking=True,
    additional_ins={"classification_report": dg.AssetIn()},
    additional_deps=["clean_products"],
    description="Every clean test product has exactly one prediction per trained label.",
)
def test_predictions_cover_test_products(
    test_predictions: pd.DataFrame, classification_report: pd.DataFrame, pipeline_storage: WBStorage
) -> dg.AssetCheckResult:
    clean_products = storage.read_parquet(pipeline_storage.layout.asset_file("clean_products"), ["nm", "split"])
    test_nm = pd.Index(clean_products.loc[clean_products["split"] == "test", "nm"].unique())
    labels = list(classification_report["label"].unique())
    counts = test_predictions.groupby(["label", "nm"]).size()
    gaps = []
    for label in labels:
        own = counts.loc[label] if label in counts.index.get_level_values(0) else pd.Series(dtype=int)
        missing = test_nm.difference(own.index)
        gaps.append(
            {
                "label": label,
                "missing": len(missing),
                "duplicated": int((own > 1).sum()),
                "orphans": len(own.index.difference(test_nm)),
            }
        )
    gap_table = pd.DataFrame(gaps, columns=["label", "missing", "duplicated", "orphans"])
    passed = bool((gap_table[["missing", "duplicated", "orphans"]] == 0).all().all())
    return dg.AssetCheckResult(
        passed=passed, metadata={"test_products": len(test_nm), "per_label": metadata.table(gap_table)}
    )
