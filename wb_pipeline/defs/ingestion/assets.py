"""Group `ingestion`: the raw WB tables and the index of the images zip.

Each reads the main dump plus every registered new-product drop (see `defs/automation`), with a
`batch` column saying where a row came from (`main` or the drop name).
"""

import hashlib
import json

import dagster as dg
import pandas as pd

from wb_pipeline.core.data import images, schema, storage
from wb_pipeline.core.data.ingestion import read_wb_table
from wb_pipeline.core.data.storage import StorageLayout
from wb_pipeline.defs import metadata
from wb_pipeline.defs.automation.jobs import INGESTED_DROPS_METADATA_KEY, product_drops
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.resources import MAIN_BATCH, WBRawData, WBStorage
from wb_pipeline.defs.sharding import SHARDED_LAYOUT, ShardingSettings, ShardOutputs, ShardRun, sharded_stage

# A resource, not per-step config: every shard step of a run must check images the same way.
ImageIndexSettings = config_class(images.ImageConfig, "ImageIndexSettings", base=dg.ConfigurableResource)


def _sources(context: dg.AssetExecutionContext, raw_data: WBRawData):
    raw_data.ensure_available(context.log)
    drops = context.instance.get_dynamic_partitions(product_drops.name)
    return raw_data.sources(drops), sorted(drops)


def _raw_table(
    context: dg.AssetExecutionContext, raw_data: WBRawData, file_name: str, required
) -> dg.MaterializeResult:
    sources, drops = _sources(context, raw_data)
    parts = []
    for batch, folder in sources:
        if batch != MAIN_BATCH and not (folder / file_name).exists():
            continue  # a drop may carry only train or only test products
        frame = read_wb_table(folder / file_name, required)
        frame.insert(1, "batch", batch)
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True)
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": len(frame),
            "source": str(raw_data.path(file_name)),
            "rows_by_batch": metadata.value_counts(frame["batch"], "batch"),
            INGESTED_DROPS_METADATA_KEY: json.dumps(drops),
            "columns": ", ".join(frame.columns),
            "missing_nm": int(frame["nm"].isna().sum()),
            "preview": metadata.preview(frame.drop(columns=["characteristics"], errors="ignore")),
        },
    )


@dg.asset(group_name="ingestion", kinds={"parquet", "pandas"}, code_version="1")
def raw_products_train(context: dg.AssetExecutionContext, raw_data: WBRawData) -> dg.MaterializeResult:
    """`wb_school_train.parquet` as read: schema validated, `nm` normalised to str, nothing dropped."""
    return _raw_table(context, raw_data, schema.TRAIN_FILE, schema.TRAIN_REQUIRED_COLUMNS)


@dg.asset(group_name="ingestion", kinds={"parquet", "pandas"}, code_version="1")
def raw_products_test(context: dg.AssetExecutionContext, raw_data: WBRawData) -> dg.MaterializeResult:
    """`wb_school_test.parquet` as read (with its `category`, `sub_category`, `isadult` labels when present)."""
    return _raw_table(context, raw_data, schema.TEST_FILE, schema.TEST_REQUIRED_COLUMNS)


@dg.asset(group_name="ingestion", kinds={"zip", "pandas"}, code_version="2")
def image_members(
    context: dg.AssetExecutionContext, raw_data: WBRawData, pipeline_storage: WBStorage, sharding: ShardingSettings
) -> dg.MaterializeResult:
    """Where every member of the images zip(s) lies: one row per central-directory record (name, shard
    key, position, offset, sizes, CRC-32, compression), with its `batch`; see
    `core.data.images.iter_member_tables`. The one step that reads each zip's central directory, and it
    streams it: records are read 65,536 at a time and spilled by shard, so its memory follows a piece of
    the directory, not the zip (`zipfile` holds ~630 B a member). Stored grouped by shard, so the
    image-index and image-embedding shard steps open the zip from their own rows only."""
    sources, _ = _sources(context, raw_data)
    members, zip_bytes, by_batch = 0, 0, {}
    for _, folder in sources:  # the shard count from the zips' own member counts (their end records)
        with storage.open_regular_file(folder / schema.IMAGES_ZIP) as handle:
            members += images.zip_member_count(handle)
    n_shards = sharding.count_for(members)

    def pieces():
        nonlocal zip_bytes
        for batch, folder in sources:
            with storage.open_regular_file(folder / schema.IMAGES_ZIP) as handle:
                for table in images.iter_member_tables(handle):
                    table.insert(0, "batch", batch)
                    by_batch[batch] = by_batch.get(batch, 0) + len(table)
                    yield table
                zip_bytes += handle.seek(0, 2)

    counts = storage.write_sharded_parquet_stream(
        pieces(), pipeline_storage.layout.asset_file("image_members"), n_shards, key="shard_key"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": int(counts.sum()),
            "rows_by_batch": metadata.table(
                pd.DataFrame({"batch": list(by_batch), "count": list(by_batch.values())}), max_rows=100
            ),
            "zip_bytes": zip_bytes,
            "shards": n_shards,
        },
    )


def _image_index_shard(context: dg.OpExecutionContext, shard: ShardRun) -> tuple[pd.DataFrame, dict]:
    """The members of one shard checked (decode, content hash, content signals), each batch's result
    kept in the shard's cache so an unchanged member is not read again. The zip is opened from this
    shard's rows of `image_members`, not from its central directory."""
    raw_data, settings = context.resources.raw_data, context.resources.image_index_settings
    members = shard.rows_of("image_members")
    sources, _ = _sources(context, raw_data)
    image_config = to_core(images.ImageConfig, settings)
    check_key = hashlib.sha256(images.decode_check_key(image_config).encode()).hexdigest()[:16]
    indexes, rejected = [], []
    checked_now = 0
    for batch, folder in sources:
        sizes_path = folder / schema.IMAGE_SIZES_FILE
        sizes = read_wb_table(sizes_path, schema.IMAGE_SIZES_REQUIRED_COLUMNS) if sizes_path.exists() else None
        cache_path = shard.cache("image_index", f"{batch}-{check_key}-{shard.index}.parquet")
        previous = _previous_index(shard, cache_path, f"{batch}-{check_key}")
        batch_members = members[members["batch"] == batch]
        with (
            storage.open_regular_file(folder / schema.IMAGES_ZIP) as handle,
            images.open_listed_zip(handle, batch_members) as zf,
        ):
            index, rejected_members = images.build_image_index(
                zf, sizes, image_config, previous=previous, shard=shard.shard
            )
        storage.write_parquet(index, cache_path)
        reused = (
            0
            if previous is None
            else int(
                index.set_index(["member", "crc32", "byte_size"])
                .index.isin(previous.set_index(["member", "crc32", "byte_size"]).index)
                .sum()
            )
        )
        checked_now += len(index) - reused
        index.insert(1, "batch", batch)
        rejected_members.insert(0, "batch", batch)
        indexes.append(index)
        rejected.append(rejected_members)
    index = pd.concat(indexes, ignore_index=True)
    rejected_members = pd.concat(rejected, ignore_index=True)
    return index, {
        **_check_counts(index, checked_now),
        "rejected_members": len(rejected_members),
        "rejected_member_reasons": metadata.table(rejected_members, max_rows=100),
    }


def _previous_index(shard: ShardRun, cache_path, name: str) -> pd.DataFrame | None:
    """The shard's last checked index; after a change of shard count, the related shards' indexes
    (`ShardRun.seed_caches`), so no unchanged member is decoded again."""
    if cache_path.exists():
        return storage.read_parquet(cache_path)
    paths = shard.seed_caches("image_index", lambda related: f"{name}-{related.index}.parquet")
    # rows of other products are harmless: previous results are matched by (member, CRC-32, size)
    found = [storage.read_parquet(path) for path in paths]
    return pd.concat(found, ignore_index=True) if found else None


def _check_counts(index: pd.DataFrame, checked_now: int) -> dict:
    """Rows, decodable ones, and how many were read now vs reused from the previous index."""
    return {
        "dagster/row_count": len(index),
        "decodable": int(index["decodable"].sum()),
        "checked_now": checked_now,
        "reused_from_previous_index": len(index) - checked_now,
    }


def _image_index_gather(context, shards: ShardOutputs, layout: StorageLayout) -> tuple[pd.DataFrame, dict]:
    image_config = to_core(images.ImageConfig, context.resources.image_index_settings)
    drops = sorted(context.instance.get_dynamic_partitions(product_drops.name))
    index = images.merge_shard_indexes(shards.values, [MAIN_BATCH, *drops], image_config)
    return index, {
        **_check_counts(index, shards.summed("checked_now", ran_only=True)),
        "reasons": metadata.value_counts(index["reason"], "reason"),
        "empty_image_rule": image_config.empty_image_rule,
        "empty_by_rule": metadata.value_counts(index["empty_rule"], "empty_rule"),
        "small_images_kept": int((index["pixel_std"].notna() & ~index["is_empty"]).sum()),
        "rejected_members": shards.summed("rejected_members"),
        "preview": metadata.preview(index),
    }


image_index = sharded_stage(
    "image_index",
    # the raw tables too: their row counts are the catalogue size the shard count follows
    upstream=["image_members", "raw_products_train", "raw_products_test"],
    shard_work=_image_index_shard,
    gather_work=_image_index_gather,
    resources={"raw_data", "image_index_settings"},
    group_name="ingestion",
    kinds={"zip", "pandas"},
    output_metadata={SHARDED_LAYOUT: True},
    description="One row per `{nm}.jpg` member of the images zip(s): byte size, CRC-32, content hash, "
    "decodable, width, height, mode, reason, and for images under the empty-image size trigger the content "
    "check (signals, `empty_rule`, `empty_detail`; see `core.data.images.apply_empty_image_rule`). One step "
    "per product shard (`image_index_shard[<key>]`) streams its members from the zip (never extracted); "
    "sizes from `image_df.parquet` are recorded and cross-checked when the file exists. Members that are not "
    "a plain `{nm}.jpg` (path traversal, folders, other files, duplicate names) are listed in the shards' "
    "metadata with a reason. Incremental: a member whose (name, CRC-32, size) is unchanged since the last "
    "run is not read again. Stored grouped by shard, so each image-embedding shard reads only its rows.",
)
