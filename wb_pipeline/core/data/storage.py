"""Atomic, fsspec-aware reads and writes of the pipeline's tables.

Every write goes to a temporary sibling and is renamed into place, so a killed run leaves the last
good file (object stores make a single PUT atomic on their own). Paths are `upath.UPath`, so the
same code serves local folders and `s3://`, `gs://`, `memory://` URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from upath import UPath


def as_upath(path: str | os.PathLike | UPath, **storage_options) -> UPath:
    """A UPath for a local path or any fsspec URL."""
    if isinstance(path, UPath) and not storage_options:
        return path
    return UPath(path, **storage_options)


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


class UnreadableFile(OSError):
    """A path that is not a regular file this code may read: a folder, FIFO, device or socket, a
    broken link, or a file above the size limit. The message names the path and what it is."""


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _file_kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "something else")


def open_regular_file(path: str | os.PathLike | UPath, max_bytes: int | None = None) -> IO[bytes]:
    """A binary read handle on `path`, opened only after checking what it is: a local path must be a
    regular file (a FIFO would block the reader forever, /dev/zero never ends), and none may be larger
    than `max_bytes`. The checks look at the opened file itself (fstat), so a swap between check and
    read is caught too; the FIFO is opened non-blocking, so even the check cannot hang.
    Raises `UnreadableFile` (or FileNotFoundError / PermissionError) naming the path."""
    path = as_upath(path)
    if not is_local(path):  # object stores hold regular objects only; the size comes from their listing
        if max_bytes is not None:
            size = path.stat().st_size
            if size is not None and size > max_bytes:
                raise UnreadableFile(f"{path}: {size} bytes, above the {max_bytes}-byte limit")
        return path.open("rb")
    local = Path(path.path)
    try:
        fd = os.open(local, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if local.is_symlink():
            raise UnreadableFile(f"{local}: it is a broken symbolic link") from None
        raise FileNotFoundError(f"{local}: no such file") from None
    except IsADirectoryError:
        raise UnreadableFile(f"{local}: it is a folder, not a file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(f"{local}: it is {_file_kind(info.st_mode)}, not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise UnreadableFile(f"{local}: {info.st_size} bytes, above the {max_bytes}-byte limit")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | os.PathLike | UPath, max_bytes: int) -> bytes:
    """The bytes of `path` through `open_regular_file`; never more than `max_bytes` are read (a file
    that grew past the limit since it was opened is refused too)."""
    with open_regular_file(path, max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableFile(f"{path}: more than {max_bytes} bytes (the file grew while it was read)")
    return data


def _tmp_sibling(path: UPath) -> UPath:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


@contextmanager
def _atomic_handle(path: UPath) -> Iterator:
    """A binary handle on a temp sibling of `path`, renamed onto `path` only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with tmp.open("wb") as handle:
            yield handle
        _replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: UPath, data: bytes) -> None:
    """Write `data` to `path` through a temp sibling + rename."""
    with _atomic_handle(path) as handle:
        handle.write(data)


# Rows per parquet row group: a reader of some rows, or of a batch at a time, decodes at most this many
# rows of a column (pyarrow's default, 1Mi rows, is 5 GiB of 1,280-d image vectors).
ROW_GROUP_ROWS = 65_536


def write_parquet(frame: pd.DataFrame | pa.Table, path: UPath) -> None:
    """Write a DataFrame or Arrow table as parquet, atomically."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    with _atomic_handle(path) as handle:
        pq.write_table(table, handle, row_group_size=ROW_GROUP_ROWS)


def write_parquet_stream(pieces: Iterable[pd.DataFrame], path: UPath) -> int:
    """Write the pieces, one after the other, as ONE parquet file (atomically; the schema is the first
    piece's, every piece must match it): memory follows a piece, not the file. Returns the rows written."""
    rows, writer = 0, None
    with _atomic_handle(path) as handle:
        try:
            for piece in pieces:
                table = pa.Table.from_pandas(piece, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(handle, table.schema)
                writer.write_table(table.cast(writer.schema), row_group_size=ROW_GROUP_ROWS)
                rows += len(piece)
            if writer is None:
                raise ValueError(f"write_parquet_stream: no pieces to write to {path}")
        finally:
            if writer is not None:
                writer.close()
    return rows


def read_rows_where(path: UPath, key: str, values: Sequence, columns: list[str]) -> pd.DataFrame:
    """The rows of a parquet file whose `key` is in `values` (only `columns`), read a row group at a
    time, so memory follows the rows asked for, not the file; a table written by
    `write_sharded_parquet` comes back in its original relative order."""
    wanted = pa.array(list(values), type=pa.string())
    with open_regular_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        read = [c for c in dict.fromkeys([key, *columns]) if c in names] + (
            [POSITION_COLUMN] if POSITION_COLUMN in names else []
        )
        parts = []
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=read)
            parts.append(table.filter(pc.is_in(table.column(key).cast(pa.string()), value_set=wanted)))
        table = pa.concat_tables(parts) if parts else parquet.schema_arrow.empty_table().select(read)
        table = table.replace_schema_metadata(parquet.schema_arrow.metadata)
    frame = arrow_to_frame(table)
    return frame[[c for c in dict.fromkeys([key, *columns]) if c in frame.columns]]


def read_parquet(path: UPath, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet file (any fsspec URL) into pandas; a table written by `write_sharded_parquet`
    comes back whole, in its original row order."""
    return read_sharded_parquet(path, None, columns)


# --- product shards ------------------------------------------------------------------------------
# A product's shard is a stable function of its id alone (CRC-32 of the UTF-8 `nm`, mod N): the same
# product lands in the same shard in every run, drop and machine, whatever else the catalogue holds.

SHARD_LAYOUT_KEY = b"wb_pipeline.shards"
POSITION_COLUMN = "__catalogue_position"


def product_shards(nm: Sequence[str], n_shards: int) -> np.ndarray:
    """The shard (0 .. n_shards-1) of each product id."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return np.fromiter(
        (zlib.crc32(str(value).encode("utf-8")) % n_shards for value in nm), dtype=np.int64, count=len(nm)
    )


def shard_count(n_products: int, products_per_shard: int) -> int:
    """The shard count for a catalogue of `n_products`: the smallest power of two that puts at most
    `products_per_shard` products in a shard on average. A power of two because shards then nest: a
    product of shard i of N is in shard i mod N/2 of N/2, so when a growing catalogue doubles N, each new
    shard reads its rows from one old shard's row groups and seeds its caches from that shard's caches
    (`related_shards`), instead of starting from nothing."""
    if products_per_shard < 1:
        raise ValueError(f"products_per_shard must be >= 1, got {products_per_shard}")
    wanted = max(1, -(-max(n_products, 0) // products_per_shard))
    return 1 << (wanted - 1).bit_length()


def related_shards(index: int, n_shards: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(the shards `(index, n)` at N/2, N/4, ... 1 that contain shard `(index, n_shards)`, nearest first;
    its two halves at 2N): where its caches can start from after the shard count changed. A shard of an
    older, smaller count held about as many products as one of N (the count followed the catalogue), so
    starting from the nearest one that exists costs about one shard's cache."""
    if n_shards & (n_shards - 1):
        return [], []  # not a power of two (a fixed WB_PIPELINE_SHARDS): counts need not nest
    containing, count = [], n_shards
    while count > 1:
        count //= 2
        containing.append((index % count, count))
    return containing, [(index, 2 * n_shards), (index + n_shards, 2 * n_shards)]


def shard_keys(n_shards: int) -> list[str]:
    """Names of the shards, zero-padded so they sort as numbers: '00' .. '07' for 8 shards."""
    width = max(2, len(str(n_shards - 1)))
    return [f"{shard:0{width}d}" for shard in range(n_shards)]


def write_sharded_parquet(frame: pd.DataFrame, path: UPath, n_shards: int, key: str = "nm") -> None:
    """Write `frame` as ONE parquet file (atomically) whose rows are grouped by the shard of `key`, one
    or more row groups per shard, plus their original positions: a shard step reads only its row
    groups (`read_sharded_parquet(path, shard)`), a whole read gets the rows back in their order."""
    shards = product_shards(frame[key].tolist(), n_shards)
    order = np.argsort(shards, kind="stable")
    table = pa.Table.from_pandas(frame.iloc[order], preserve_index=False)
    table = table.append_column(POSITION_COLUMN, pa.array(order, type=pa.int64()))
    bounds = np.searchsorted(shards[order], np.arange(n_shards + 1))
    layout = {"n_shards": n_shards, "key": key, "rows": [[int(bounds[s]), int(bounds[s + 1])] for s in range(n_shards)]}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SHARD_LAYOUT_KEY: json.dumps(layout)})
    with _atomic_handle(path) as handle, pq.ParquetWriter(handle, table.schema) as writer:
        for shard in range(n_shards):  # row groups never straddle two shards
            start, end = layout["rows"][shard]
            if end > start:
                writer.write_table(table.slice(start, end - start), row_group_size=64 * 1024)
        if len(table) == 0:
            writer.write_table(table)


# Spill files of `write_sharded_parquet_stream`: the table is held at most 1/this at a time (once N allows).
MAX_SPILL_BUCKETS = 256
SHARD_COLUMN = "__shard"


def write_sharded_parquet_stream(
    pieces: Iterable[pd.DataFrame], path: UPath, n_shards: int, key: str = "nm"
) -> np.ndarray:
    """`write_sharded_parquet` for a table that arrives in pieces and is never whole: each piece is
    spilled to local temp files by shard range (up to `MAX_SPILL_BUCKETS`), then each range is read
    back, ordered by shard and appended. Memory: one piece, then one range (the table / min(N, 256)).
    Same file, layout and row order as `write_sharded_parquet` of the concatenated pieces. Returns the
    rows per shard."""
    buckets = min(n_shards, MAX_SPILL_BUCKETS)
    shards_per_bucket = -(-n_shards // buckets)
    counts = np.zeros(n_shards, dtype=np.int64)
    schema = None
    with tempfile.TemporaryDirectory(prefix="sharded-") as spill:
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for piece in pieces:
                table = pa.Table.from_pandas(piece, preserve_index=False)
                schema = schema or table.schema
                table = table.cast(schema)
                start = int(counts.sum())
                shards = product_shards(piece[key].tolist(), n_shards)
                counts += np.bincount(shards, minlength=n_shards)
                table = table.append_column(POSITION_COLUMN, pa.array(np.arange(start, start + len(piece))))
                table = table.append_column(SHARD_COLUMN, pa.array(shards))
                bucket_of = shards // shards_per_bucket
                for bucket in np.unique(bucket_of).tolist():
                    part = table.filter(pa.array(bucket_of == bucket))
                    if bucket not in writers:
                        writers[bucket] = pq.ParquetWriter(os.path.join(spill, f"{bucket}.parquet"), part.schema)
                    writers[bucket].write_table(part)
        finally:
            for writer in writers.values():
                writer.close()
        if schema is None:
            raise ValueError(f"{path}: no pieces to write (give at least one, possibly empty, piece)")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        layout = {
            "n_shards": n_shards,
            "key": key,
            "rows": [[int(bounds[s]), int(bounds[s + 1])] for s in range(n_shards)],
        }
        final = schema.append(pa.field(POSITION_COLUMN, pa.int64()))
        final = final.with_metadata({**(final.metadata or {}), SHARD_LAYOUT_KEY: json.dumps(layout)})
        with _atomic_handle(path) as handle, pq.ParquetWriter(handle, final) as out:
            for bucket in range(buckets):
                if bucket not in writers:
                    continue
                table = pq.read_table(os.path.join(spill, f"{bucket}.parquet"))
                table = table.sort_by([(SHARD_COLUMN, "ascending"), (POSITION_COLUMN, "ascending")])
                shards = table.column(SHARD_COLUMN).to_numpy()
                table = table.drop_columns([SHARD_COLUMN]).cast(final)
                edges = np.searchsorted(shards, np.arange(shards.min(), shards.max() + 2)) if len(shards) else []
                for low, high in zip(edges[:-1], edges[1:], strict=False):  # row groups never straddle two shards
                    if high > low:
                        out.write_table(table.slice(low, high - low), row_group_size=ROW_GROUP_ROWS)
            if not counts.sum():
                out.write_table(final.empty_table())
    return counts


def read_sharded_parquet(
    path: UPath, shard: tuple[int, int] | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """Rows of a parquet file: all of them in their original order (`shard=None`), or only the rows of
    shard `(index, n_shards)` in their original relative order. A file written by
    `write_sharded_parquet` with the same shard count, or one that nests with it (either divides the
    other: powers of two, `shard_count`), serves a shard from the row groups that hold it; any other
    file is read whole and filtered by the column it was sharded by (`nm` when it was not) (correct,
    just not cheaper)."""
    with open_regular_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        layout = (parquet.schema_arrow.metadata or {}).get(SHARD_LAYOUT_KEY)
        layout = json.loads(layout) if layout else None
        names = parquet.schema_arrow.names
        wanted = None if columns is None else [c for c in columns if c in names] + ([POSITION_COLUMN] if layout else [])
        key = (layout or {}).get("key", "nm")
        stored = layout["n_shards"] if layout is not None else None
        nested = shard is not None and stored is not None and (shard[1] % stored == 0 or stored % shard[1] == 0)
        finer = nested and shard[1] > stored  # the wanted shard is a part of one stored shard
        if shard is not None and (finer or not nested) and wanted is not None and key not in wanted:
            wanted.append(key)  # to filter by; dropped again below
        if nested:
            # Shard counts that nest (one divides the other): only the row groups of the stored shards
            # that hold the wanted one, i.e. its own, the one it is a part of, or the ones it is made of.
            holders = [shard[0] % stored] if shard[1] >= stored else list(range(shard[0], stored, shard[1]))
            spans = [layout["rows"][holder] for holder in holders]
            groups, offset = [], 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if any(offset < end and offset + rows > start for start, end in spans):
                    groups.append(group)
                offset += rows
            table = (
                parquet.read_row_groups(groups, columns=wanted)
                if groups
                else parquet.schema_arrow.empty_table().select(wanted or names)
            )
            if not finer:
                return arrow_to_frame(table)
        else:
            table = parquet.read(columns=wanted)
    frame = arrow_to_frame(table)
    if shard is not None:
        frame = frame[product_shards(frame[key].tolist(), shard[1]) == shard[0]].reset_index(drop=True)
        if columns is not None and key not in columns:
            frame = frame.drop(columns=[key])
    return frame


def parquet_columns(path: UPath) -> list[str]:
    """Column names of a parquet file, from its footer (the shard layout's position column left out)."""
    with open_regular_file(path) as handle:
        return [name for name in pq.ParquetFile(handle).schema_arrow.names if name != POSITION_COLUMN]


def blank_counts(path: UPath, columns: Sequence[str], batch_rows: int = 65_536) -> dict[str, int]:
    """Per column of a parquet file, the values that are missing or only whitespace, counted batch by
    batch (memory: one batch of those columns, never the table)."""
    counts = dict.fromkeys(columns, 0)
    with open_regular_file(path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=list(columns)):
            for name in columns:
                values = batch.column(name)
                text = pc.utf8_trim_whitespace(values.cast(pa.string()))
                counts[name] += values.null_count + int(pc.sum(pc.equal(text, "")).as_py() or 0)
    return counts


def parquet_rows(path: UPath) -> int:
    """Rows of a parquet file, from its footer (nothing else is read)."""
    with open_regular_file(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def arrow_to_frame(table: pa.Table) -> pd.DataFrame:
    """pandas from Arrow; a table written by `write_sharded_parquet` in its original row order."""
    if SHARD_LAYOUT_KEY not in (table.schema.metadata or {}):
        return table.to_pandas()
    return _drop_position(table.sort_by(POSITION_COLUMN))


def _drop_position(table: pa.Table) -> pd.DataFrame:
    table = table.drop_columns([POSITION_COLUMN])
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != SHARD_LAYOUT_KEY}
    return table.replace_schema_metadata(metadata).to_pandas()


def _replace(src: UPath, dst: UPath) -> None:
    if is_local(src):
        os.replace(Path(src.path), Path(dst.path))  # atomic on POSIX, overwrites
    else:
        src.fs.mv(src.path, dst.path)


ENCODER_MODEL_FOLDERS = ("e5", "onnx", "open_clip")


@dataclass(frozen=True)
class StorageLayout:
    """Every path the pipeline reads or writes under its storage dir, built here and nowhere else.

    `base_dir`: the storage dir (local path or fsspec URL); `models_dir`: the LOCAL folder of
    converted / exported encoder models (sentence-transformers and onnxruntime load from disk), by
    default `<base_dir>/models`, which is only right while the storage dir is local.

        <base_dir>/assets/<asset>.parquet                  asset values (the storage IO manager)
        <base_dir>/assets/<stage>.shards/<N>/<key>.parquet one shard's output of a sharded stage (+ .json)
        <base_dir>/runs/<run id>/...                       small step results of a run (shard lists)
        <base_dir>/cache/<stage>/<N>-shards/<key>          per-shard caches (embeddings, image checks)
        <base_dir>/models/classification/<label>/          saved classifiers (+ training_manifest.json)
        <base_dir>/models/contrastive/<fingerprint>/       saved joint models
        <base_dir>/search/index/<build id>/                faiss index builds
        <models_dir>/{e5,onnx,open_clip}/                  converted / exported encoder models
    """

    base_dir: str
    models_dir: str | None = None

    @property
    def root(self) -> UPath:
        return as_upath(self.base_dir)

    @property
    def assets(self) -> UPath:
        return self.root / "assets"

    def asset_file(self, asset: str) -> UPath:
        """Where the storage IO manager keeps an (unpartitioned) asset's value."""
        return self.assets / f"{asset}.parquet"

    def shard_output(self, stage: str, n_shards: int, key: str) -> UPath:
        """The latest output of shard `key` (of `n_shards`) of a sharded stage; its metadata beside it
        as `<key>.json`. Stable across runs: a run that skips a shard keeps the last one's file."""
        return self.assets / f"{stage}.shards" / str(n_shards) / f"{key}.parquet"

    def run_step_results(self, run_id: str) -> UPath:
        """Small JSON results that a run's steps pass to each other (a stage's shard list and reports)."""
        return self.root / "runs" / run_id

    def shard_cache(self, stage: str, n_shards: int, name: str) -> UPath:
        """A cache of one product shard of `stage` (a new shard count starts new caches)."""
        return self.root / "cache" / stage / f"{n_shards}-shards" / name

    @property
    def classification_models(self) -> UPath:
        return self.root / "models" / "classification"

    @property
    def contrastive_models(self) -> UPath:
        return self.root / "models" / "contrastive"

    @property
    def search_index(self) -> UPath:
        return self.root / "search" / "index"

    @property
    def encoder_models(self) -> str:
        """The encoder models folder: `models_dir`, else `<base_dir>/models`."""
        return self.models_dir or str(self.root / "models")


def encoder_model_folder(models_dir: str, kind: str) -> UPath:
    """`<models_dir>/<kind>`: e5 (the converted default text model), onnx (exported graphs), open_clip."""
    if kind not in ENCODER_MODEL_FOLDERS:
        raise ValueError(f"encoder model folder {kind!r}: one of {ENCODER_MODEL_FOLDERS}")
    return as_upath(models_dir) / kind


def content_hash(data: bytes | str) -> str:
    """Hex BLAKE2b-128 of the exact bytes (str is hashed as UTF-8)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.blake2b(raw, digest_size=16).hexdigest()
