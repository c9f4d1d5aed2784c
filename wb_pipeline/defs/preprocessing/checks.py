"""Data tests on the cleaning step's outputs. Each reads only the columns it tests from storage (the
descriptions batch by batch), never a whole table."""

import dagster as dg
import pandas as pd

from wb_pipeline.core.data import storage
from wb_pipeline.defs import metadata
from wb_pipeline.defs.resources import WBStorage

CLEAN_REQUIRED_COLUMNS = ("nm", "split", "title", "description")


def _columns(pipeline_storage: WBStorage, asset: str, columns: list[str]) -> pd.DataFrame:
    return storage.read_parquet(pipeline_storage.layout.asset_file(asset), columns)


@dg.asset_check(asset="clean_products", blocking=True, description="`nm` is unique and never missing.")
def clean_products_nm_unique(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
    nm = _columns(pipeline_storage, "clean_products", ["nm"])["nm"]
    duplicated = nm.duplicated(keep=False)
    missing = nm.isna()
    return dg.AssetCheckResult(
        passed=bool(not duplicated.any() and not missing.any()),
        metadata={
            "duplicated_rows": int(duplicated.sum()),
            "missing_nm": int(missing.sum()),
            "examples": ", ".join(nm[duplicated].astype(str).head(10)),
        },
    )


@dg.asset_check(
    asset="clean_products",
    blocking=True,
    description="The required columns exist and title/description are filled on every row.",
)
def clean_products_required_columns(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
    path = pipeline_storage.layout.asset_file("clean_products")
    present = storage.parquet_columns(path)
    missing_columns = [c for c in CLEAN_REQUIRED_COLUMNS if c not in present]
    empty = storage.blank_counts(path, [c for c in ("title", "description") if c in present])
    return dg.AssetCheckResult(
        passed=not missing_columns and not any(empty.values()),
        metadata={
            "missing_columns": ", ".join(missing_columns) or "none",
            **{f"empty_{k}": v for k, v in empty.items()},
        },
    )


@dg.asset_check(
    asset="clean_products",
    blocking=True,
    additional_deps=["raw_products_train", "raw_products_test", "rejected_products"],
    description="Nothing is lost: every input row is either clean or rejected (counts per split).",
)
def input_equals_clean_plus_rejected(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
    layout = pipeline_storage.layout
    clean = _columns(pipeline_storage, "clean_products", ["split"])["split"]
    rejected = _columns(pipeline_storage, "rejected_products", ["split"])["split"]
    rows = []
    for split in ("train", "test"):
        n_input = storage.parquet_rows(layout.asset_file(f"raw_products_{split}"))
        n_clean, n_rejected = int((clean == split).sum()), int((rejected == split).sum())
        rows.append({"split": split, "input": n_input, "clean": n_clean, "rejected": n_rejected})
    counts = pd.DataFrame(rows)
    return dg.AssetCheckResult(
        passed=bool((counts["input"] == counts["clean"] + counts["rejected"]).all()),
        metadata={"counts": metadata.table(counts)},
    )


@dg.asset_check(
    asset="clean_products",
    blocking=True,
    additional_deps=["image_index"],
    description="Every clean product has a decodable, non-empty image in the zip.",
)
def clean_products_have_decodable_image(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
    nm = _columns(pipeline_storage, "clean_products", ["nm"])["nm"]
    image_index = _columns(pipeline_storage, "image_index", ["nm", "decodable", "is_empty"])
    good = image_index.loc[image_index["decodable"] & ~image_index["is_empty"], "nm"]
    without = ~nm.isin(good)
    return dg.AssetCheckResult(
        passed=not bool(without.any()),
        metadata={
            "without_image": int(without.sum()),
            "examples": ", ".join(nm[without].astype(str).head(10)),
        },
    )
