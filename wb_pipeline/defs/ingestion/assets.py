"""Group `ingestion`: the raw WB tables and the index of the images zip."""


import dagster as dg
import pandas as pd

from wb_pipeline.core import images, schema
from wb_pipeline.core.ingestion import read_wb_table
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.resources import WBRawData

ImageIndexSettings = config_class(images.ImageConfig, "ImageIndexSettings")


def _raw_table(context: dg.AssetExecutionContext, raw_data: WBRawData, file_name: str, required) -> dg.MaterializeResult:
    raw_data.ensure_available(context.log)
    path = raw_data.path(file_name)
    frame = read_wb_table(path, required)
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": len(frame),
            "source": str(path),
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


@dg.asset(group_name="ingestion", kinds={"zip", "pandas"}, code_version="1")
def image_index(
    context: dg.AssetExecutionContext, raw_data: WBRawData, config: ImageIndexSettings
) -> dg.MaterializeResult:
    """One row per `{nm}.jpg` member of the images zip: byte size, decodable, width, height, mode, reason.

    Streams member by member (the zip is never extracted); sizes from `image_df.parquet` are
    recorded and cross-checked when the file exists. Members that are not a plain `{nm}.jpg`
    (path traversal, folders, other files, duplicate names) are listed in metadata with a reason.
    """
    raw_data.ensure_available(context.log)
    sizes_path = raw_data.path(schema.IMAGE_SIZES_FILE)
    sizes = read_wb_table(sizes_path, schema.IMAGE_SIZES_REQUIRED_COLUMNS) if sizes_path.exists() else None
    with raw_data.path(schema.IMAGES_ZIP).open("rb") as handle, images.open_zip(handle) as zf:
        index, rejected_members = images.build_image_index(zf, sizes, to_core(images.ImageConfig, config))
    return dg.MaterializeResult(
        value=index,
        metadata={
            "dagster/row_count": len(index),
            "decodable": int(index["decodable"].sum()),
            "reasons": metadata.value_counts(index["reason"], "reason"),
            "rejected_members": len(rejected_members),
            "rejected_member_reasons": metadata.table(rejected_members, max_rows=100),
            "used_image_df_sizes": sizes is not None,
            "preview": metadata.preview(index),
        },
    )
