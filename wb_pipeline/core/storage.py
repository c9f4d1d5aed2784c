"""Atomic, fsspec-aware reads and writes of the pipeline's tables.

Every write goes to a temporary sibling and is renamed into place, so a killed run leaves the last
good file (object stores make a single PUT atomic on their own). Paths are `upath.UPath`, so the
same code serves local folders and `s3://`, `gs://`, `memory://` URLs.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath


def as_upath(path: str | os.PathLike | UPath, **storage_options) -> UPath:
    """A UPath for a local path or any fsspec URL."""
    if isinstance(path, UPath) and not storage_options:
        return path
    return UPath(path, **storage_options)


def _tmp_sibling(path: UPath) -> UPath:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


def atomic_write_bytes(path: UPath, data: bytes) -> None:
    """Write `data` to `path` through a temp sibling + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
        _replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet(frame: pd.DataFrame | pa.Table, path: UPath) -> None:
    """Write a DataFrame or Arrow table as parquet, atomically."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with tmp.open("wb") as handle:
            pq.write_table(table, handle)
        _replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_parquet(path: UPath, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet file (any fsspec URL) into pandas."""
    with path.open("rb") as handle:
        return pq.read_table(handle, columns=columns).to_pandas()


def _replace(src: UPath, dst: UPath) -> None:
    if src.protocol in ("", "file", "local"):
        os.replace(Path(src.path), Path(dst.path))  # atomic on POSIX, overwrites
    else:
        src.fs.mv(src.path, dst.path)
