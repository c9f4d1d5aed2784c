"""Group `labels`: parsed characteristics and the derived labels."""

import dagster as dg
import pandas as pd

from wb_pipeline.core.data.characteristics import characteristics_table
from wb_pipeline.core.labels.rules import LabelRulesConfig, derive_labels
from wb_pipeline.core.labels.table import assemble_labels, values_outside_vocabulary
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core

LabelRulesSettings = config_class(LabelRulesConfig, "LabelRulesSettings")


@dg.multi_asset(
    group_name="labels",
    outs={
        "product_characteristics": dg.AssetOut(
            kinds={"pandas"},
            description="Long table nm, name, value: the parsed `characteristics` of every clean train product.",
            code_version="1",
        ),
        "characteristics_parse_errors": dg.AssetOut(
            kinds={"pandas"},
            description="Train products whose `characteristics` cell could not be parsed: nm, reason, detail. "
            "The product stays clean; it just has no labels from characteristics.",
            code_version="1",
        ),
    },
)
def parsed_characteristics(clean_products: pd.DataFrame):
    """Safe parse of the `characteristics` bytes in all stored forms (never `eval`)."""
    train = clean_products[clean_products["split"] == "train"]
    parsed = characteristics_table(train["nm"], train["characteristics"])
    long, errors = parsed.long, parsed.rejections
    yield dg.Output(
        long,
        output_name="product_characteristics",
        metadata={
            "dagster/row_count": len(long),
            "products_with_characteristics": int(long["nm"].nunique()),
            "parsed_cells": len(parsed.parsed),
            "train_products": len(train),
            "top_names": metadata.value_counts(long["name"], "name"),
            "preview": metadata.preview(long, rows=10),
        },
    )
    yield dg.Output(
        errors,
        output_name="characteristics_parse_errors",
        metadata={
            "dagster/row_count": len(errors),
            "reasons": metadata.value_counts(errors["reason"], "reason"),
            "preview": metadata.preview(errors, rows=10),
        },
    )


@dg.asset(group_name="labels", kinds={"pandas"}, code_version="1")
def product_labels(
    clean_products: pd.DataFrame, product_characteristics: pd.DataFrame, config: LabelRulesSettings
) -> dg.MaterializeResult:
    """One row per clean product: `sex`, `age_restrictions`, `season`, `fragility` (from characteristics,
    by the notebook's rules with its bugs fixed) and the file labels `category`, `sub_category`,
    `isadult`; categorical, unknown stays missing."""
    train_nm = clean_products.loc[clean_products["split"] == "train", "nm"]
    derivation = derive_labels(product_characteristics, train_nm, to_core(LabelRulesConfig, config))
    labels = assemble_labels(clean_products, derivation.labels)
    label_columns = [c for c in labels.columns if c not in ("nm", "split")]
    result_metadata = {
        "dagster/row_count": len(labels),
        "unmapped_raw_values": metadata.table(derivation.unmapped, max_rows=200),
        "outside_vocabulary": metadata.table(values_outside_vocabulary(labels), max_rows=200),
    }
    for column in label_columns:
        result_metadata[f"distribution_{column}"] = metadata.value_counts(labels[column], column)
    result_metadata["labelled_counts"] = metadata.table(
        pd.DataFrame({"label": label_columns, "labelled": [int(labels[c].notna().sum()) for c in label_columns]})
    )
    return dg.MaterializeResult(value=labels, metadata=result_metadata)
