"""Data tests on the labels."""

import dagster as dg
import pandas as pd

from wb_pipeline.core.data import schema
from wb_pipeline.core.labels.table import values_outside_vocabulary
from wb_pipeline.defs import metadata


@dg.asset_check(
    asset="product_labels",
    blocking=True,
    description="Derived labels (sex, age_restrictions, season, fragility) only take vocabulary values.",
)
def derived_labels_within_vocabulary(product_labels: pd.DataFrame) -> dg.AssetCheckResult:
    outside = values_outside_vocabulary(product_labels[["nm", *schema.DERIVED_LABEL_COLUMNS]])
    return dg.AssetCheckResult(passed=outside.empty, metadata={"outside": metadata.table(outside)})


@dg.asset_check(
    asset="product_labels",
    description="File labels (category, sub_category, isadult) within the known WB vocabulary; a real "
    "catalogue may have new values, so this warns instead of failing.",
)
def file_labels_within_vocabulary(product_labels: pd.DataFrame) -> dg.AssetCheckResult:
    columns = [c for c in schema.TEST_LABEL_COLUMNS if c in product_labels.columns]
    outside = values_outside_vocabulary(product_labels[["nm", *columns]])
    return dg.AssetCheckResult(
        passed=outside.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"outside": metadata.table(outside), "rows_outside": int(outside["count"].sum())},
    )


@dg.asset_check(
    asset="product_labels",
    blocking=True,
    additional_ins={"clean_products": dg.AssetIn()},
    description="Exactly one label row per clean product.",
)
def labels_cover_clean_products(product_labels: pd.DataFrame, clean_products: pd.DataFrame) -> dg.AssetCheckResult:
    same = len(product_labels) == len(clean_products) and set(product_labels["nm"]) == set(clean_products["nm"])
    return dg.AssetCheckResult(
        passed=bool(same), metadata={"labels": len(product_labels), "clean_products": len(clean_products)}
    )
