"""Data tests on the search group: the index holds exactly the products of its space, its ANN
recall against exact search, and duplicate groups that partition the products."""

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core.embeddings.vectors import stored_ids
from wb_pipeline.core.search.index import index_recall
from wb_pipeline.core.search.store import load_build
from wb_pipeline.defs.resources import WBStorage
from wb_pipeline.defs.search.assets import index_folder

MIN_RECALL = 0.95
RECALL_K = 10
RECALL_QUERIES = 500
RECALL_SEED = 1  # other queries than the build's own measurement (seed 0)


def coverage(nm: pd.Series, pipeline_storage: WBStorage) -> dict[str, int]:
    """How `nm` differs from the embedded products (the stored text table's ids alone): missing, extra
    and repeated ids."""
    nm = nm.astype(str)
    expected = set(stored_ids(pipeline_storage.layout.asset_file("text_embeddings")).astype(str))
    return {
        "missing": len(expected - set(nm)),
        "extra": len(set(nm) - expected),
        "duplicated": int(nm.duplicated().sum()),
        "embedded_products": len(expected),
    }


@dg.asset_check(
    asset="product_index",
    blocking=True,
    additional_deps=["text_embeddings"],
    description="The saved index holds one vector per product of the space (= every embedded product), "
    "no product twice, and its product table matches it.",
)
def product_index_size_matches_space(product_index: pd.DataFrame, pipeline_storage: WBStorage) -> dg.AssetCheckResult:
    build = load_build(index_folder(product_index))
    found = coverage(build.products["nm"], pipeline_storage)
    sizes_agree = build.index.size == found["embedded_products"] == len(product_index)
    return dg.AssetCheckResult(
        passed=bool(sizes_agree and not (found["missing"] or found["extra"] or found["duplicated"])),
        metadata={"index_size": build.index.size, "table_rows": len(product_index), **found},
    )


@dg.asset_check(
    asset="product_index",
    description=f"Recall@{RECALL_K} of the index against exact search on {RECALL_QUERIES} sampled products is "
    f">= {MIN_RECALL} (warns; an exact index has recall 1 by construction).",
)
def product_index_recall(product_index: pd.DataFrame) -> dg.AssetCheckResult:
    build = load_build(index_folder(product_index))
    recall = index_recall(build.index, RECALL_K, RECALL_QUERIES, RECALL_SEED, threads=2)  # never all vectors at once
    return dg.AssetCheckResult(
        passed=bool(np.isnan(recall) or recall >= MIN_RECALL),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            f"recall_at_{RECALL_K}": None if np.isnan(recall) else round(recall, 4),
            "kind": build.index.kind,
            "threshold": MIN_RECALL,
            "ef_search": build.index.ef_search,
            "nprobe": build.index.nprobe,
            # an ivf index stores codes: its decoded vectors are both the queries and the truth here, so
            # this is the lists' recall; the build's own recall (product_index metadata) includes the codes'
            "judged_against": "decoded vectors" if build.index.kind == "ivf" else "stored vectors",
        },
    )


@dg.asset_check(
    asset="duplicate_groups",
    blocking=True,
    additional_deps=["text_embeddings"],
    description="Every embedded product is in exactly one duplicate group (singletons allowed) and each "
    "group's recorded size is its real size.",
)
def duplicate_groups_partition_products(
    duplicate_groups: pd.DataFrame, pipeline_storage: WBStorage
) -> dg.AssetCheckResult:
    found = coverage(duplicate_groups["nm"], pipeline_storage)  # `duplicated` = a product in two groups
    real_sizes = duplicate_groups.groupby("group_id")["nm"].transform("size")
    wrong_sizes = int((real_sizes != duplicate_groups["group_size"]).sum())
    no_group = int(duplicate_groups["group_id"].isna().sum())
    return dg.AssetCheckResult(
        passed=bool(not (found["duplicated"] or found["missing"] or found["extra"] or wrong_sizes or no_group)),
        metadata={
            "products": len(duplicate_groups),
            **found,
            "wrong_group_size": wrong_sizes,
            "without_group": no_group,
            "groups": int(duplicate_groups["group_id"].nunique()),
        },
    )
