"""Reading the WB parquet files: schema validation with clear errors and `nm` normalised to str."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field

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
        result = pa.array(
            [None if np.isnan(v) else str(int(v)) for v in floats], type=pa.string()
        )
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
        raise SchemaError(
            f"{path}: missing required column(s) {missing}; found {table.column_names}"
        )
    frame = table.drop_columns(["nm"]).to_pandas()
    frame.insert(0, "nm", normalize_nm(table.column("nm"), str(path)))
    ordered = list(required_columns) + [c for c in frame.columns if c not in required_columns]
    return frame[ordered]


# --- can a run start on this folder? ----------------------------------------------------------------


@dataclass(frozen=True)
class FolderCheck:
    """What `check_wb_folder` found: `problem` ('reason: detail') when a run cannot start on the folder,
    else None; `notes`: what the run will reject or set to missing, one line each (counted); `counts`:
    products per file and photos."""

    problem: str | None
    notes: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)


def check_wb_folder(folder: str | UPath, require_all: bool = True) -> FolderCheck:
    """Check a WB-layout folder before a run reads it: the folder, then each file present, readable (a
    regular file, not a link to nowhere, a FIFO or a folder), of the right kind, with its required
    columns and usable ids; at least one product and one `{nm}.jpg` photo. `require_all`: the main dump
    needs both product files and the zip; a drop needs one product file and the zip. Reads the product
    tables and the zip's directory only (no photo is decoded). Never raises for bad data."""
    from wb_pipeline.core.data import cleaning, images, schema

    root = storage.as_upath(folder)
    try:
        if not root.exists():
            return FolderCheck(f"missing_folder: {root} does not exist")
        if not root.is_dir():
            return FolderCheck(f"not_a_folder: {root} is a file, not a folder of WB files")
        names = {child.name for child in root.iterdir()}
    except OSError as error:
        return FolderCheck(f"unreadable_folder: {root}: {one_line(error)}")
    product_files = [(schema.TRAIN_FILE, schema.TRAIN_REQUIRED_COLUMNS), (schema.TEST_FILE, schema.TEST_REQUIRED_COLUMNS)]
    present = [(name, columns) for name, columns in product_files if name in names]
    absent = [name for name, _ in product_files if name not in names]
    if require_all and absent:
        return FolderCheck(f"missing_product_file: {root} has no {' and no '.join(absent)}")
    if not present:
        return FolderCheck(f"no_product_file: {root} has neither {schema.TRAIN_FILE} nor {schema.TEST_FILE}")
    notes: list[str] = []
    counts: dict[str, int] = {}
    for name, columns in present:
        try:
            frame = read_wb_table(root / name, columns)
        except (SchemaError, OSError) as error:
            return FolderCheck(f"bad_product_file: {one_line(error)}")
        counts[name] = len(frame)
        if "price" in frame.columns:
            _, reasons = cleaning.checked_prices(frame["price"])
            bad = reasons.dropna()
            if len(bad):
                examples = ", ".join(cleaning._shown(v) for v in frame.loc[bad.index, "price"].head(3))
                notes.append(f"{name}: {len(bad)} of {len(frame)} prices are not usable numbers "
                             f"({', '.join(f'{r} {n}' for r, n in bad.value_counts().items())}; e.g. {examples}): "
                             "those products get a missing price (listed in clean_products' rejected_values)")
        missing_nm = int(frame["nm"].isna().sum())
        if missing_nm:
            notes.append(f"{name}: {missing_nm} rows without an nm will be rejected (missing_nm)")
    if not sum(counts.values()):
        return FolderCheck(f"no_products: {', '.join(counts)} hold 0 rows", counts=counts)
    if schema.IMAGES_ZIP not in names:
        return FolderCheck(f"missing_images_zip: {root} has no {schema.IMAGES_ZIP}", counts=counts)
    try:
        with storage.open_regular_file(root / schema.IMAGES_ZIP) as handle, images.open_zip(handle) as zf:
            members = [info.filename for info in zf.infolist()]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        return FolderCheck(f"corrupt_images_zip: {one_line(error)}", counts=counts)
    rejected = {name: images.member_name_rejection(name) for name in members}
    counts["photos"] = sum(reason is None for reason in rejected.values())
    bad_members = pd.Series({name: reason for name, reason in rejected.items() if reason is not None}, dtype=object)
    if len(bad_members):
        examples = ", ".join(repr(name) for name in bad_members.index[:3])
        notes.append(f"{schema.IMAGES_ZIP}: {len(bad_members)} of {len(members)} members are not a plain {{nm}}.jpg "
                     f"and are never read ({', '.join(f'{r} {n}' for r, n in bad_members.value_counts().items())}; "
                     f"e.g. {examples}): listed in image_index's rejected_members")
    if not counts["photos"]:
        return FolderCheck(f"no_photos: {schema.IMAGES_ZIP} holds no {{nm}}.jpg member ({len(members)} members)",
                           tuple(notes), counts)
    if schema.IMAGE_SIZES_FILE in names:
        try:
            read_wb_table(root / schema.IMAGE_SIZES_FILE, schema.IMAGE_SIZES_REQUIRED_COLUMNS)
        except (SchemaError, OSError) as error:
            return FolderCheck(f"bad_image_sizes_file: {one_line(error)}", tuple(notes), counts)
    return FolderCheck(None, tuple(notes), counts)


def one_line(error: BaseException) -> str:
    """An exception's message on one line, at most 300 characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
