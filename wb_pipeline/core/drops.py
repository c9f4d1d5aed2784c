"""New-product drops: folders of WB-layout files that arrive in an incoming folder.

A drop is a sub-folder of the incoming folder holding `wb_school_train.parquet` and/or
`wb_school_test.parquet` plus `wb_school_horizcv_images.zip` (and optionally `image_df.parquet`),
in the same layout as the main dump. A drop is validated before it is registered; a bad one is
rejected with a reason (and retried when its files change, e.g. after a half-finished copy).
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass

from upath import UPath

from wb_pipeline.core import schema, storage
from wb_pipeline.core.ingestion import SchemaError, read_wb_table

# Drop names become Dagster partition keys: keep them to a safe alphabet.
DROP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class DropStatus:
    name: str
    path: str
    signature: str  # changes whenever a file in the drop changes (name, size, mtime)
    problem: str | None  # None when valid; else "reason: detail"


def drop_signature(folder: UPath) -> str:
    parts = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        info = child.stat()
        parts.append(f"{child.name}:{info.st_size}:{getattr(info, 'st_mtime', '')}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def validate_drop(folder: UPath) -> str | None:
    """None when the drop is usable, else a 'reason: detail' string."""
    if not DROP_NAME_PATTERN.match(folder.name):
        return f"bad_drop_name: {folder.name!r} (allowed: letters, digits, '_', '.', '-')"
    product_files = [(schema.TRAIN_FILE, schema.TRAIN_REQUIRED_COLUMNS), (schema.TEST_FILE, schema.TEST_REQUIRED_COLUMNS)]
    present = [(name, cols) for name, cols in product_files if (folder / name).exists()]
    if not present:
        return f"no_product_file: neither {schema.TRAIN_FILE} nor {schema.TEST_FILE}"
    for name, columns in present:
        try:
            read_wb_table(folder / name, columns)
        except SchemaError as error:
            return f"bad_product_file: {error}"
    zip_path = folder / schema.IMAGES_ZIP
    if not zip_path.exists():
        return f"missing_images_zip: {schema.IMAGES_ZIP}"
    try:
        with zip_path.open("rb") as handle, zipfile.ZipFile(handle) as zf:
            zf.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        return f"corrupt_images_zip: {error}"
    return None


def scan_incoming(incoming_dir: str) -> list[DropStatus]:
    """Every sub-folder of the incoming folder, validated, in name order."""
    root = storage.as_upath(incoming_dir)
    if not root.exists():
        return []
    statuses = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name):
        statuses.append(DropStatus(folder.name, str(folder), drop_signature(folder), validate_drop(folder)))
    return statuses


def drop_shards(folder: UPath, n_shards: int) -> set[int]:
    """The product shards a drop touches (see `storage.product_shards`): those of the nm of its product
    rows and of its photos (a photo may replace the one of a product already in the catalogue).
    Reads only the `nm` columns and the zip's directory."""
    import pyarrow.parquet as pq

    from wb_pipeline.core.images import nm_from_member_name
    from wb_pipeline.core.ingestion import normalize_nm

    ids: list[str] = []
    for name in (schema.TRAIN_FILE, schema.TEST_FILE):
        if (folder / name).exists():
            with (folder / name).open("rb") as handle:
                column = pq.read_table(handle, columns=["nm"]).column("nm")
            ids += normalize_nm(column, source=name).dropna().tolist()
    zip_path = folder / schema.IMAGES_ZIP
    if zip_path.exists():
        with zip_path.open("rb") as handle, zipfile.ZipFile(handle) as zf:
            ids += [nm for nm in map(nm_from_member_name, zf.namelist()) if nm is not None]
    return set(storage.product_shards(ids, n_shards).tolist())
