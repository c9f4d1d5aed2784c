"""Group `preprocessing`: the notebook's cleaning (every product ends clean or rejected) and product text."""


import time

import dagster as dg
import pandas as pd

from wb_pipeline.core import text
from wb_pipeline.core.cleaning import CleaningConfig, clean_products as clean_products_core
from wb_pipeline.core.product_text import build_product_text
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core

CleaningSettings = config_class(CleaningConfig, "CleaningSettings")
TextPreprocessingSettings = config_class(text.TextPreprocessingConfig, "TextPreprocessingSettings")


@dg.multi_asset(
    group_name="preprocessing",
    outs={
        "clean_products": dg.AssetOut(
            kinds={"pandas"},
            description="Products that pass the cleaning rules (train and test, `split` column); titles/descriptions filled.",
            code_version="2",
        ),
        "rejected_products": dg.AssetOut(
            kinds={"pandas"},
            description="Every product that did not pass, with a machine-readable `reason` and a `detail`.",
            code_version="2",
        ),
    },
)
def clean_and_rejected_products(
    raw_products_train: pd.DataFrame,
    raw_products_test: pd.DataFrame,
    image_index: pd.DataFrame,
    config: CleaningSettings,
):
    """The notebook's `clean_dataset`, bugs fixed (see `wb_pipeline.core.cleaning`)."""
    result = clean_products_core(
        {"train": raw_products_train, "test": raw_products_test}, image_index, to_core(CleaningConfig, config)
    )
    clean, rejected = result.clean, result.rejected
    yield dg.Output(
        clean,
        output_name="clean_products",
        metadata={
            "dagster/row_count": len(clean),
            "by_split": metadata.value_counts(clean["split"], "split"),
            "input_rows": len(raw_products_train) + len(raw_products_test),
            "preview": metadata.preview(clean.drop(columns=["characteristics"], errors="ignore")),
        },
    )
    yield dg.Output(
        rejected,
        output_name="rejected_products",
        metadata={
            "dagster/row_count": len(rejected),
            "reasons": metadata.table(
                rejected.groupby(["split", "reason"]).size().reset_index(name="count"), max_rows=200
            ),
            "preview": metadata.preview(rejected, rows=10),
        },
    )


@dg.asset(group_name="preprocessing", kinds={"pandas"}, code_version="1")
def product_text(clean_products: pd.DataFrame, config: TextPreprocessingSettings) -> dg.MaterializeResult:
    """Per product: natural text (HTML stripped, for transformer encoders) and the notebook's
    preprocessed tokens (units/dimensions removed, lower-cased, stop-words/punctuation/digits dropped,
    60/300 word caps)."""
    started = time.perf_counter()
    frame = build_product_text(clean_products, to_core(text.TextPreprocessingConfig, config))
    seconds = time.perf_counter() - started
    words = frame["description_preprocessed"].str.split().str.len()
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": len(frame),
            "seconds": round(seconds, 3),
            "rows_per_second": round(len(frame) / seconds, 1) if seconds else None,
            "mean_description_words": float(words.mean()) if len(words) else 0.0,
            "empty_preprocessed_titles": int(frame["title_preprocessed"].eq("").sum()),
            "preview": metadata.preview(frame),
        },
    )
