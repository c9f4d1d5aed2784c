"""Group `preprocessing`: the notebook's cleaning (every product ends clean or rejected) and product preprocessing."""

import time

import dagster as dg
import pandas as pd

from wb_pipeline.core.data.cleaning import CleaningConfig
from wb_pipeline.core.data.cleaning import clean_products as clean_products_core
from wb_pipeline.core.data.storage import shard_keys
from wb_pipeline.core.text import preprocessing
from wb_pipeline.core.text.product_text import build_product_text
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.sharding import (
    SHARD_TAG,
    SHARDED_LAYOUT,
    columns_input,
    in_catalogue_order,
    shard_asset_name,
    shard_description,
    shard_input,
    shard_names,
)

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


def _product_text_shard(index: int, n_shards: int) -> dg.AssetsDefinition:
    key = shard_keys(n_shards)[index]

    @dg.asset(
        name=shard_asset_name("product_text", key),
        group_name="preprocessing",
        kinds={"pandas"},
        code_version="1",
        description=shard_description("product_text", key, n_shards),
        ins={"clean_products": shard_input(index, n_shards)},
        tags={SHARD_TAG: key},
    )
    def product_text_shard(
        clean_products: pd.DataFrame, text_preprocessing_settings: TextPreprocessingSettings
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        frame = build_product_text(
            clean_products, to_core(preprocessing.TextPreprocessingConfig, text_preprocessing_settings)
        )
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
            },
        )

    return product_text_shard


def build_product_text_assets(n_shards: int) -> list[dg.AssetsDefinition]:
    """`product_text_shard_<k>` per shard, and `product_text`: all of them in catalogue order."""
    shards = [_product_text_shard(index, n_shards) for index in range(n_shards)]
    names = shard_names("product_text", n_shards)

    @dg.asset(
        group_name="preprocessing",
        kinds={"pandas"},
        code_version="2",
        ins={"clean_products": columns_input("nm"), **{name: dg.AssetIn() for name in names}},
    )
    def product_text(clean_products: pd.DataFrame, **shard_texts: pd.DataFrame) -> dg.MaterializeResult:
        """Per product: natural text (HTML stripped, for transformer encoders) and the notebook's
        preprocessed tokens (units/dimensions removed, lower-cased, stop-words/punctuation/digits dropped,
        60/300 word caps); gathered from the `product_text_shard_<k>` assets in catalogue order."""
        frame = in_catalogue_order(
            pd.concat([shard_texts[name] for name in names], ignore_index=True), clean_products["nm"]
        )
        words = frame["description_preprocessed"].str.split().str.len()
        return dg.MaterializeResult(
            value=frame,
            metadata={
                "dagster/row_count": len(frame),
                "mean_description_words": float(words.mean()) if len(words) else 0.0,
                "empty_preprocessed_titles": int(frame["title_preprocessed"].eq("").sum()),
                "shards": n_shards,
                "preview": metadata.preview(frame),
            },
        )

    return [*shards, product_text]
