"""Reading the WB parquet files: schema validation with clear errors and `nm` normalised to str."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from upath import UPath

from wb_pipeline.core.data import storage


class SchemaError(ValueError):
    """A WB input file does not have the expected layout. The message names the file and column."""


def normalize_nm(values: pa.Array | pa.ChunkedArray | pd.Series, source: str) -> pd.Series:
    """Product ids as strings: ints -> '123', integral floats -> '123', strings stripped.

    Nulls stay missing (the cleaning step rejects them with a reason). A float id with a fractional
    part is a data error and raises, naming `source`.
    """
    array = pa.chunked_array([values]) if isinstance(values, pa.Array) else values
    if isinstance(array, pd.Series):
        array = pa.chunked_array([pa.array(array, from_pandas=True)])
    kind = array.type
    if pa.types.is_integer(kind):
        result = pc.cast(array, pa.string())
    elif pa.types.is_floating(kind):
        floats = array.to_numpy(zero_copy_only=False)
        finite = floats[~np.isnan(floats)]
        if finite.size and not np.all(finite == np.floor(finite)):
            raise SchemaError(f"{source}: column 'nm' holds non-integral numbers")
        result = pa.array([None if np.isnan(v) else str(int(v)) for v in floats], type=pa.string())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        result = pc.utf8_trim_whitespace(array)
        result = pc.if_else(pc.equal(result, ""), pa.scalar(None, pa.string()), result)
    elif pa.types.is_null(kind):
        result = pa.nulls(len(array), pa.string())
    else:
        raise SchemaError(f"{source}: column 'nm' has unsupported type {kind}")
    return pd.Series(result.to_pylist(), dtype=object)


def read_wb_table(path: UPath, required_columns: Sequence[str]) -> pd.DataFrame:
    """Read one WB parquet file, check its columns and normalise `nm` to str.

    Raises `SchemaError` naming the file and the missing column(s); `FileNotFoundError` naming the file.
    Extra columns are kept; column order of `required_columns` comes first.
    """
    try:
        with storage.open_regular_file(path) as handle:
            table = pq.read_table(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"WB input file not found: {path}") from None
    except storage.UnreadableFile as error:  # a folder, FIFO, device or broken link in the file's place
        raise SchemaError(f"not a readable parquet file: {error}") from None
    except (pa.ArrowInvalid, OSError) as error:
        raise SchemaError(f"{path}: not a readable parquet file ({error})") from error
    missing = [name for name in required_columns if name not in table.column_names]
    if missing:
        raise SchemaError(f"{path}: missing required column(s) {missing}; found {table.column_names}")
    frame = table.drop_columns(["nm"]).to_pandas()
    frame.insert(0, "nm", normalize_nm(table.column("nm"), str(path)))
    ordered = list(required_columns) + [c for c in frame.columns if c not in required_columns]
    return frame[ordered]


# --- can a run start on this folder? ----------------------------------------------------------------


def one_line(error: BaseException) -> str:
    """An exception's message on one line, at most 300 characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
