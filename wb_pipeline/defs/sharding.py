"""Product shards in the asset graph: the heavy per-product steps run once per shard.

A product's shard is `core.data.storage.product_shards` (CRC-32 of `nm` mod N, N = `WB_PIPELINE_SHARDS`).
Each heavy stage is N shard assets (`<stage>_shard_<k>`: the image check, product text, text and
image vectors) plus one asset under the stage's usual name that gathers them in catalogue order,
so every downstream asset, check and job reads the same tables as before. Whole-catalogue tables
that shard steps read (`clean_products`, `image_index`) are stored grouped by shard
(`core.data.storage.write_sharded_parquet`), and a shard step's input loads only its own row groups:
its memory follows the shard, not the catalogue. docs/DESIGN-NOTES.md says why shards are assets of
one run rather than Dagster partitions.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import pandas as pd

from wb_pipeline.core.data.storage import shard_keys

# Output metadata: store this DataFrame grouped by product shard (the IO manager's `n_shards`); True
# shards by the `nm` column, a column name by that column.
SHARDED_LAYOUT = "wb_pipeline/sharded_layout"
# Input metadata: load only shard (index, count) of the upstream table / only these columns.
SHARD_INPUT = "wb_pipeline/shard"
COLUMNS_INPUT = "wb_pipeline/columns"
SHARD_TAG = "wb_pipeline/shard"


def shard_asset_name(stage: str, key: str) -> str:
    return f"{stage}_shard_{key}"


def shard_names(stage: str, n_shards: int) -> list[str]:
    return [shard_asset_name(stage, key) for key in shard_keys(n_shards)]


def shard_input(index: int, n_shards: int) -> dg.AssetIn:
    """An input that loads only the rows of shard `index` of a table stored with `SHARDED_LAYOUT`."""
    return dg.AssetIn(metadata={SHARD_INPUT: [index, n_shards]})


def columns_input(*columns: str) -> dg.AssetIn:
    return dg.AssetIn(metadata={COLUMNS_INPUT: list(columns)})


def shard_description(stage: str, key: str, n_shards: int) -> str:
    return f"Shard {key} of {n_shards} of `{stage}`: the products whose CRC-32(nm) mod {n_shards} = {int(key)}."


RAN_NOW = "__ran_in_this_run"


def latest_shard_metadata(context: dg.AssetExecutionContext, names: Sequence[str]) -> list[dict]:
    """The metadata of each shard asset's latest materialization (the one whose output is being read),
    with `RAN_NOW`: whether that was in this run (a run may skip shards a drop does not touch)."""
    found = []
    for name in names:
        event = context.instance.get_latest_materialization_event(dg.AssetKey(name))
        meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
        found.append(
            {
                **{key: value.value for key, value in meta.items()},
                RAN_NOW: event is not None and event.run_id == context.run.run_id,
            }
        )
    return found


def summed(metadata: Sequence[dict], key: str, ran_now_only: bool = False) -> int:
    """`key` summed over the shards (only over those materialized in this run with `ran_now_only`)."""
    return int(sum(int(meta.get(key) or 0) for meta in metadata if meta[RAN_NOW] or not ran_now_only))


def in_catalogue_order(frame: pd.DataFrame, nm: pd.Series) -> pd.DataFrame:
    """The rows of `frame` (one per product, e.g. concatenated shards) in the order of `nm`."""
    position = pd.Index(frame["nm"]).get_indexer(nm.tolist())
    if (position < 0).any() or len(position) != len(frame):
        raise ValueError(
            f"the shards hold {len(frame)} rows but the catalogue lists {len(nm)} products "
            f"({int((position < 0).sum())} missing): re-run the shard steps"
        )
    return frame.iloc[position].reset_index(drop=True)
