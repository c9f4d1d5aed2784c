"""Checking a WB-layout folder before a run reads it (`check_wb_folder`): the files, readable, of the right kind,
with their required columns and usable ids, at least one product and one photo; used by drops and by
`python -m wb_pipeline.check_raw` before `make eval`."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field

import pandas as pd
from upath import UPath

from wb_pipeline.core.data import storage
from wb_pipeline.core.data.ingestion import SchemaError, one_line, read_wb_table


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
    product_files = [
        (schema.TRAIN_FILE, schema.TRAIN_REQUIRED_COLUMNS),
        (schema.TEST_FILE, schema.TEST_REQUIRED_COLUMNS),
    ]
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
                notes.append(
                    f"{name}: {len(bad)} of {len(frame)} prices are not usable numbers "
                    f"({', '.join(f'{r} {n}' for r, n in bad.value_counts().items())}; e.g. {examples}): "
                    "those products get a missing price (listed in clean_products' rejected_values)"
                )
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
        notes.append(
            f"{schema.IMAGES_ZIP}: {len(bad_members)} of {len(members)} members are not a plain {{nm}}.jpg "
            f"and are never read ({', '.join(f'{r} {n}' for r, n in bad_members.value_counts().items())}; "
            f"e.g. {examples}): listed in image_index's rejected_members"
        )
    if not counts["photos"]:
        return FolderCheck(
            f"no_photos: {schema.IMAGES_ZIP} holds no {{nm}}.jpg member ({len(members)} members)", tuple(notes), counts
        )
    if schema.IMAGE_SIZES_FILE in names:
        try:
            read_wb_table(root / schema.IMAGE_SIZES_FILE, schema.IMAGE_SIZES_REQUIRED_COLUMNS)
        except (SchemaError, OSError) as error:
            return FolderCheck(f"bad_image_sizes_file: {one_line(error)}", tuple(notes), counts)
    return FolderCheck(None, tuple(notes), counts)
