"""Make a new-product drop (a WB-layout folder) out of products of another WB-layout folder.

Used by tests and `benchmarks/drop_drift.py`: an in-distribution drop from another seed of the
generator, an out-of-distribution one from the generator with other categories and English titles,
or real products re-laid as a drop (read from their folder, written only into the drop folder).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from wb_pipeline.core.data import schema


def write_drop(
    source: Path,
    target: Path,
    n: int,
    seed: int = 0,
    exclude_nm: set[str] | frozenset = frozenset(),
    splits: tuple[str, ...] = ("train",),
    min_image_bytes: int = 0,
    without_image: int = 0,
) -> list[str]:
    """Copy `n` random products (rows of the `splits` tables that have a `{nm}.jpg` of at least
    `min_image_bytes` and an nm not in `exclude_nm`) with their photos from `source` into the new
    drop folder `target`; the first `without_image` of them get no photo (a drop with a missing
    modality). Returns their nm (as str), in drop order."""
    files = {"train": schema.TRAIN_FILE, "test": schema.TEST_FILE}
    tables = {split: pd.read_parquet(Path(source) / files[split]) for split in splits}
    with zipfile.ZipFile(Path(source) / schema.IMAGES_ZIP) as zf:
        sizes = {info.filename[:-4]: info.file_size for info in zf.infolist() if info.filename.endswith(".jpg")}
    candidates = [
        (split, str(nm))
        for split, table in tables.items()
        for nm in table["nm"].dropna().astype(str)
        if nm not in exclude_nm and sizes.get(nm, -1) >= min_image_bytes
    ]
    candidates = list(dict.fromkeys(candidates))
    if len(candidates) < n:
        raise ValueError(f"write_drop: only {len(candidates)} products of {source} qualify, {n} asked")
    chosen = [candidates[i] for i in np.sort(np.random.default_rng(seed).choice(len(candidates), n, replace=False))]
    target.mkdir(parents=True)
    for split, table in tables.items():
        own = {nm for s, nm in chosen if s == split}
        if own:
            table[table["nm"].astype(str).isin(own)].to_parquet(target / files[split], index=False)
    with (
        zipfile.ZipFile(Path(source) / schema.IMAGES_ZIP) as src,
        zipfile.ZipFile(target / schema.IMAGES_ZIP, "w") as dst,
    ):
        for _, nm in chosen[without_image:]:
            dst.writestr(f"{nm}.jpg", src.read(f"{nm}.jpg"))
    return [nm for _, nm in chosen]
