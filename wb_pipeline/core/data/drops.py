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

from wb_pipeline.core.data import schema, storage
from wb_pipeline.core.data.folder_check import check_wb_folder
from wb_pipeline.core.data.ingestion import one_line

# Drop names become Dagster partition keys: keep them to a safe alphabet.
DROP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class DropStatus:
    name: str
    path: str
    signature: str  # changes whenever a file in the drop changes (name, size, mtime)
    problem: str | None  # None when valid; else "reason: detail"


def drop_signature(folder: UPath) -> str:
    """A hash of the drop's file names, sizes and mtimes. A file that cannot be stat'ed (a broken link, no
    permission) enters by its name and the error, so fixing it changes the signature."""
    parts = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        try:
            info = child.stat()
            parts.append(f"{child.name}:{info.st_size}:{getattr(info, 'st_mtime', '')}")
        except OSError as error:
            parts.append(f"{child.name}:unreadable:{type(error).__name__}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def validate_drop(folder: UPath) -> str | None:
    """None when the drop is usable, else a 'reason: detail' string (`ingestion.check_wb_folder`: one
    product file at least, readable, with its columns; the images zip with one `{nm}.jpg` at least)."""
    if not DROP_NAME_PATTERN.match(folder.name):
        return f"bad_drop_name: {folder.name!r} (allowed: letters, digits, '_', '.', '-')"
    return check_wb_folder(folder, require_all=False).problem


def scan_incoming(incoming_dir: str) -> list[DropStatus]:
    """Every sub-folder of the incoming folder, validated, in name order. A drop that cannot even be
    looked at (no permission, vanished mid-scan) gets its problem too: one bad drop never hides the
    others."""
    root = storage.as_upath(incoming_dir)
    if not root.exists():
        return []
    statuses = []
    for folder in sorted((p for p in root.iterdir() if _is_dir(p)), key=lambda p: p.name):
        try:
            signature = drop_signature(folder)
        except OSError as error:
            statuses.append(
                DropStatus(
                    folder.name, str(folder), f"unlisted:{type(error).__name__}", f"unreadable_drop: {one_line(error)}"
                )
            )
            continue
        try:
            problem = validate_drop(folder)
        except Exception as error:  # noqa: BLE001 - any other surprise is this drop's problem, not the scan's
            problem = f"unreadable_drop: {type(error).__name__}: {one_line(error)}"
        statuses.append(DropStatus(folder.name, str(folder), signature, problem))
    return statuses


def _is_dir(path: UPath) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def drop_ids(folder: UPath) -> tuple[list[str], list[str]]:
    """The `nm` of a drop's product rows and of its photos (a photo may replace the one of a product
    already in the catalogue). Reads only the `nm` columns and the zip's directory."""
    import pyarrow.parquet as pq

    from wb_pipeline.core.data.images import nm_from_member_name
    from wb_pipeline.core.data.ingestion import normalize_nm

    products: list[str] = []
    for name in (schema.TRAIN_FILE, schema.TEST_FILE):
        if (folder / name).exists():
            with storage.open_regular_file(folder / name) as handle:
                column = pq.read_table(handle, columns=["nm"]).column("nm")
            products += normalize_nm(column, source=name).dropna().tolist()
    photos: list[str] = []
    zip_path = folder / schema.IMAGES_ZIP
    if zip_path.exists():
        with storage.open_regular_file(zip_path) as handle, zipfile.ZipFile(handle) as zf:
            photos = [nm for nm in map(nm_from_member_name, zf.namelist()) if nm is not None]
    return products, photos


def drop_shards(folder: UPath, n_shards: int) -> set[int]:
    """The product shards a drop touches (see `storage.product_shards`): those of its products and photos."""
    products, photos = drop_ids(folder)
    return set(storage.product_shards(products + photos, n_shards).tolist())
