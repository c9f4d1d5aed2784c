"""Data tests on the cleaning step's outputs."""

import dagster as dg
import pandas as pd

from wb_pipeline.defs import metadata

CLEAN_REQUIRED_COLUMNS = ("nm", "split", "title", "description")


@dg.asset_check(asset="clean_products", blocking=True, description="`nm` is unique and never missing.")
def clean_products_nm_unique(clean_products: pd.DataFrame) -> dg.AssetCheckResult:
    duplicated = clean_products["nm"].duplicated(keep=False)
    missing = clean_products["nm"].isna()
    return dg.AssetCheckResult(
        passed=bool(not duplicated.any() and not missing.any()),
        metadata={
            "duplicated_rows": int(duplicated.sum()),
            "missing_nm": int(missing.sum()),
            "examples": ", ".join(clean_products.loc[duplicated, "nm"].astype(str).head(10)),
        },
    )


@dg.asset_check(
    asset="clean_products",
    blocking=True,
    description="The required columns exist and title/description are filled on every row.",
)
def clean_products_required_columns(clean_products: pd.DataFrame) -> dg.AssetCheckResult:
    missing_columns = [c for c in CLEAN_REQUIRED_COLUMNS if c not in clean_products.columns]
    empty = {
        c: int(clean_products[c].isna().sum() + clean_products[c].astype(str).str.strip().eq("").sum())
        for c in ("title", "description")
        if c in clean_products.columns
    }
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
    additional_ins={
        "raw_products_train": dg.AssetIn(),
        "raw_products_test": dg.AssetIn(),
        "rejected_products": dg.AssetIn(),
    },
    description="Nothing is lost: every input row is either clean or rejected (counts per split).",
)
def input_equals_clean_plus_rejected(
    clean_products: pd.DataFrame,
    raw_products_train: pd.DataFrame,
    raw_products_test: pd.DataFrame,
    rejected_products: pd.DataFrame,
) -> dg.AssetCheckResult:
    rows = []
    for split, raw in (("train", raw_products_train), ("test", raw_products_test)):
        n_clean = int((clean_products["split"] == split).sum())
        n_rejected = int((rejected_products["split"] == split).sum())
        rows.append({"split": split, "input": len(raw), "clean": n_clean, "rejected": n_rejected})
    counts = pd.DataFrame(rows)
    return dg.AssetCheckResult(
        passed=bool((counts["input"] == counts["clean"] + counts["rejected"]).all()),
        metadata={"counts": metadata.table(counts)},
    )


@dg.asset_check(
    asset="clean_products",
    blocking=True,
    additional_ins={"image_index": dg.AssetIn()},
    description="Every clean product has a decodable, non-empty image in the zip.",
)
def clean_products_have_decodable_image(clean_products: pd.DataFrame, image_index: pd.DataFrame) -> dg.AssetCheckResult:
    good = image_index.loc[image_index["decodable"] & ~image_index["is_empty"], "nm"]
    without = ~clean_products["nm"].isin(good)
    return dg.AssetCheckResult(
        passed=not bool(without.any()),
        metadata={
            "without_image": int(without.sum()),
            "examples": ", ".join(clean_products.loc[without, "nm"].astype(str).head(10)),
        },
    )
