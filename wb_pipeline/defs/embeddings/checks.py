"""Data tests on the embedding tables (the same checks for text and image). They read the stored
tables batch by batch / column by column (`core.embeddings.vectors.check_vector_file`, `stored_ids`),
so a check's memory does not grow with the catalogue."""

import dagster as dg

from wb_pipeline.core.embeddings.vectors import check_vector_file, stored_ids
from wb_pipeline.defs.resources import WBStorage

NORM_TOLERANCE = 1e-3


def _checks_for(asset_name: str) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=asset_name,
        name=f"{asset_name}_vectors_valid",
        blocking=True,
        description="float32, 2-D, finite values, unit L2 norms (read batch by batch).",
    )
    def vectors_valid(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
        found = check_vector_file(pipeline_storage.layout.asset_file(asset_name), NORM_TOLERANCE)
        return dg.AssetCheckResult(
            passed=found.float32 and found.finite and found.rows_not_unit_norm == 0,
            metadata={
                "dtype": "float32" if found.float32 else "not float32",
                "dim": found.dim,
                "rows": found.rows,
                "finite": found.finite,
                "rows_not_unit_norm": found.rows_not_unit_norm,
            },
        )

    @dg.asset_check(
        asset=asset_name,
        name=f"{asset_name}_cover_clean_products",
        blocking=True,
        description="Exactly one row per clean product, no orphan rows (reads the `nm` columns only).",
    )
    def cover_clean_products(pipeline_storage: WBStorage) -> dg.AssetCheckResult:
        layout = pipeline_storage.layout
        ids, clean = stored_ids(layout.asset_file(asset_name)), stored_ids(layout.asset_file("clean_products"))
        missing, orphans = clean.difference(ids), ids.difference(clean)
        duplicated = int(ids.duplicated().sum())
        return dg.AssetCheckResult(
            passed=len(missing) == 0 and len(orphans) == 0 and duplicated == 0,
            metadata={"missing": len(missing), "orphans": len(orphans), "duplicated": duplicated},
        )

    return [vectors_valid, cover_clean_products]


text_embedding_checks = _checks_for("text_embeddings")
image_embedding_checks = _checks_for("image_embeddings")
