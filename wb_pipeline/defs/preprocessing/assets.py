"""Group `preprocessing`: the notebook's cleaning (every product ends clean or rejected) and product preprocessing."""

import time

import dagster as dg
import pandas as pd

from wb_pipeline.core.data.cleaning import CleaningConfig
from wb_pipeline.core.data.cleaning import clean_products as clean_products_core
from wb_pipeline.core.data.storage import StorageLayout, read_sharded_parquet
from wb_pipeline.core.text import preprocessing
from wb_pipeline.core.text.product_text import build_product_text
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.sharding import SHARDED_LAYOUT, ShardOutputs, ShardRun, shard_in_catalogue_order, sharded_stage

CleaningSettings = config_class(CleaningConfig, "CleaningSettings")
# A resource, not per-step config: every shard of a run must get the same preprocessing.
TextPreprocessingSettings = config_class(
    preprocessing.TextPreprocessingConfig, "TextPreprocessingSettings", base=dg.ConfigurableResource
)


@dg.multi_asset(
    group_name="preprocessing",
    outs={
        "clean_products": dg.AssetOut(
            kinds={"pandas"},
            description="Products that pass the cleaning rules (train and test, `split` column); titles/descriptions "
            "filled. Stored grouped by product shard (shard steps read only their rows).",
            code_version="2",
            metadata={SHARDED_LAYOUT: True},
        ),
        "rejected_products": dg.AssetOut(
            kinds={"pandas"},
            description="Every product that did not pass, with a machine-readable `reason` and a `detail`.",
            code_version="2",
        ),
    },
)
def clean_and_rejected_products(
    context: dg.AssetExecutionContext,
    raw_products_train: pd.DataFrame,
    raw_products_test: pd.DataFrame,
    image_index: pd.DataFrame,
    config: CleaningSettings,
):
    """The notebook's `clean_dataset`, bugs fixed (see `wb_pipeline.core.data.cleaning`). A single unusable
    value of a clean product (a `price` that is not a number) becomes missing and is listed in the
    `rejected_values` metadata of `clean_products`, with a warning in the run's log."""
    result = clean_products_core(
        {"train": raw_products_train, "test": raw_products_test}, image_index, to_core(CleaningConfig, config)
    )
    clean, rejected, values = result.clean, result.rejected, result.rejected_values
    if len(values):
        counts = values.groupby(["column", "reason"]).size()
        context.log.warning(
            "values set to missing: "
            + ", ".join(f"{column} {reason} x{count}" for (column, reason), count in counts.items())
            + f" (e.g. {', '.join(values['value'].head(3))})"
        )
    yield dg.Output(
        clean,
        output_name="clean_products",
        metadata={
            "dagster/row_count": len(clean),
            "by_split": metadata.value_counts(clean["split"], "split"),
            "input_rows": len(raw_products_train) + len(raw_products_test),
            "rejected_values": len(values),
            "rejected_value_reasons": metadata.table(
                values.groupby(["column", "reason"]).size().reset_index(name="count"), max_rows=50
            ),
            "rejected_value_examples": metadata.preview(values, rows=20),
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


def _product_text_shard(context: dg.OpExecutionContext, shard: ShardRun) -> tuple[pd.DataFrame, dict]:
    started = time.perf_counter()
    settings = context.resources.text_preprocessing_settings
    frame = build_product_text(
        shard.rows_of("clean_products"), to_core(preprocessing.TextPreprocessingConfig, settings)
    )
    seconds = time.perf_counter() - started
    words = frame["description_preprocessed"].str.split().str.len()
    return frame, {
        "seconds": round(seconds, 3),
        "rows_per_second": round(len(frame) / seconds, 1) if seconds else None,
        "mean_description_words": float(words.mean()) if len(words) else 0.0,
        "empty_preprocessed_titles": int(frame["title_preprocessed"].eq("").sum()),
    }


def _product_text_gather(context, shards: ShardOutputs, layout: StorageLayout) -> tuple[pd.DataFrame, dict]:
    nm = read_sharded_parquet(layout.asset_file("clean_products"), columns=["nm"])["nm"]
    frame = shard_in_catalogue_order(pd.concat(shards.values, ignore_index=True), nm)
    words = frame["description_preprocessed"].str.split().str.len()
    return frame, {
        "dagster/row_count": len(frame),
        "mean_description_words": float(words.mean()) if len(words) else 0.0,
        "empty_preprocessed_titles": int(frame["title_preprocessed"].eq("").sum()),
        "preview": metadata.preview(frame),
    }


product_text = sharded_stage(
    "product_text",
    upstream=["clean_products"],
    shard_work=_product_text_shard,
    gather_work=_product_text_gather,
    resources={"text_preprocessing_settings"},
    group_name="preprocessing",
    kinds={"pandas"},
    description="Per product: natural text (HTML stripped, for transformer encoders) and the notebook's "
    "preprocessed tokens (units/dimensions removed, lower-cased, stop-words/punctuation/digits dropped, "
    "60/300 word caps); one step per product shard (`product_text_shard[<key>]`), gathered in catalogue order.",
)
