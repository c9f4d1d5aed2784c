"""Data tests on the labels. Each reads only the columns it tests from storage, never a whole table."""

import dagster as dg

from wb_pipeline.core.data import schema, storage
from wb_pipeline.core.labels.table import values_outside_vocabulary
from wb_pipeline.defs import metadata
from wb_pipeline.defs.resources import WBStorage


@dg.asset_check(
    asset="product_labels",
    blocking=True,
    description="Derived labels (sex, age_restrictions, season, fragility) only take vocabulary values.",
)
def derived_labels_within_vocabulary(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
    labels = storage.read_parquet(
        pipeline_storage.layout.asset_file("product_labels"), ["nm", *schema.DERIVED_LABEL_COLUMNS]
    )
    outside = values_outside_vocabulary(labels)
    return dg.AssetCheckResult(passed=outside.empty, metadata={"outside": metadata.table(outside)})


@dg.asset_check(
    asset="product_labels",
    description="File labels (category, sub_category, isadult) within the known WB vocabulary; a real "
    "catalogue may have new values, so this warns instead of failing.",
)
def file_labels_within_vocabulary(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
    path = pipeline_storage.layout.asset_file("product_labels")
    columns = [c for c in schema.TEST_LABEL_COLUMNS if c in storage.parquet_columns(path)]
    outside = values_outside_vocabulary(storage.read_parquet(path, ["nm", *columns]))
    return dg.AssetCheckResult(
        passed=outside.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"outside": metadata.table(outside), "rows_outside": int(outside["count"].sum())},
    )


@dg.asset_check(
    asset="product_labels",
    blocking=True,
    additional_deps=["clean_products"],
    description="Exactly one label row per clean product.",
)
def labels_cover_clean_products(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
    layout = pipeline_storage.layout
    labels = storage.read_parquet(layout.asset_file("product_labels"), ["nm"])["nm"]
    clean = storage.read_parquet(layout.asset_file("clean_products"), ["nm"])["nm"]
    same = len(labels) == len(clean) and set(labels) == set(clean)
    return dg.AssetCheckResult(passed=bool(same), metadata={"labels": len(labels), "clean_products": len(clean)})
