"""Data tests on the embedding tables (the same checks for text and image)."""

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core.embeddings.vectors import EmbeddingTable

NORM_TOLERANCE = 1e-3


def _checks_for(asset_name: str) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=asset_name,
        name=f"{asset_name}_vectors_valid",
        blocking=True,
        description="float32, 2-D, finite values, unit L2 norms.",
    )
    def vectors_valid(table: EmbeddingTable) -> dg.AssetCheckResult:
        vectors = table.vectors
        finite = bool(np.isfinite(vectors).all())
        norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.ones(0)
        off = int((np.abs(norms - 1.0) > NORM_TOLERANCE).sum())
        return dg.AssetCheckResult(
            passed=vectors.dtype == np.float32 and vectors.ndim == 2 and finite and off == 0,
            metadata={"dtype": str(vectors.dtype), "dim": table.dim, "finite": finite, "rows_not_unit_norm": off},
        )

    @dg.asset_check(
        asset=asset_name,
        name=f"{asset_name}_cover_clean_products",
        blocking=True,
        additional_ins={"clean_products": dg.AssetIn()},
        description="Exactly one row per clean product, no orphan rows.",
    )
    def cover_clean_products(table: EmbeddingTable, clean_products: pd.DataFrame) -> dg.AssetCheckResult:
        ids = pd.Index(table.nm)
        clean = pd.Index(clean_products["nm"])
        missing, orphans = clean.difference(ids), ids.difference(clean)
        duplicated = int(ids.duplicated().sum())
        return dg.AssetCheckResult(
            passed=len(missing) == 0 and len(orphans) == 0 and duplicated == 0,
            metadata={"missing": len(missing), "orphans": len(orphans), "duplicated": duplicated},
        )

    return [vectors_valid, cover_clean_products]


text_embedding_checks = _checks_for("text_embeddings")
image_embedding_checks = _checks_for("image_embeddings")
