"""Embedding tables and the persistent content-hash cache that makes embedding incremental.

Contract (clip-retrieval style): an `EmbeddingTable` is `nm` + a float32 matrix in the same row
order, L2-normalised rows, stored as parquet with a fixed-size-list column.

The cache is keyed by (encoder fingerprint, content hash of the exact text or image bytes): a
product whose input did not change is never embedded twice, and a changed encoder config gives
another fingerprint, hence a fresh cache. It is a folder of immutable parquet shards per
fingerprint; each finished chunk is written as its own shard (temp file + rename), so a run killed
midway resumes from the finished chunks, and two concurrent runs only ever add files (duplicates
are dropped on load).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from upath import UPath

from wb_pipeline.core.data import storage

# Marks a parquet file as an EmbeddingTable, so a reader knows what to rebuild.
KIND_KEY = b"wb_pipeline.kind"
EMBEDDING_TABLE_KIND = b"embedding_table"


@dataclass
class EmbeddingTable:
    """`nm` (str) and `vectors` (float32 [n, dim]) in the same row order, plus free-form metadata."""

    nm: np.ndarray
    vectors: np.ndarray
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nm = np.asarray(self.nm, dtype=object)
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or len(self.nm) != len(self.vectors):
            raise ValueError(f"EmbeddingTable: {len(self.nm)} ids but vectors of shape {self.vectors.shape}")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.nm)

    def to_arrow(self) -> pa.Table:
        flat = pa.array(self.vectors.reshape(-1), type=pa.float32())
        vectors = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        table = pa.table({"nm": pa.array(self.nm.tolist(), type=pa.string()), "vector": vectors})
        return table.replace_schema_metadata({KIND_KEY: EMBEDDING_TABLE_KIND})

    @classmethod
    def from_arrow(cls, table: pa.Table) -> EmbeddingTable:
        column = table.column("vector").combine_chunks()
        dim = column.type.list_size
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        return cls(nm=np.asarray(table.column("nm").to_pylist(), dtype=object), vectors=vectors)

    def positions(self, nm: Sequence[str]) -> np.ndarray:
        """Row of each id of `nm` in this table, -1 where it has no vector."""
        return pd.Index(self.nm).get_indexer(list(nm))

    def subset(self, nm: Sequence[str]) -> EmbeddingTable:
        """Rows for `nm`, in that order (KeyError naming the first missing id)."""
        position = self.positions(nm)
        if (position < 0).any():
            raise KeyError(f"no embedding for nm {list(nm)[int(np.argmax(position < 0))]!r}")
        return EmbeddingTable(nm=self.nm[position], vectors=self.vectors[position])


def read_embedding_table(path: UPath) -> EmbeddingTable:
    with storage.open_regular_file(path) as handle:  # a FIFO or folder in its place is an error, not a hang
        return EmbeddingTable.from_arrow(pq.read_table(handle))


def read_embedding_rows(path: UPath, positions: np.ndarray) -> EmbeddingTable:
    """Rows `positions` (sorted, unique) of a stored embedding table, reading only the row groups that
    hold them: a sample of a catalogue's vectors without the catalogue's vectors in memory."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) and (np.any(np.diff(positions) <= 0) or positions[0] < 0):
        raise ValueError("read_embedding_rows: positions must be sorted, unique and >= 0")
    with storage.open_regular_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        sizes = [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if len(positions) and positions[-1] >= starts[-1]:
            raise IndexError(f"{path}: row {int(positions[-1])} asked for, the table has {int(starts[-1])}")
        parts = []
        for group in range(parquet.num_row_groups):
            low, high = np.searchsorted(positions, [starts[group], starts[group + 1]])
            if high > low:
                rows = pa.array(positions[low:high] - starts[group])
                parts.append(parquet.read_row_group(group, columns=["nm", "vector"]).take(rows))
        table = pa.concat_tables(parts) if parts else parquet.schema_arrow.empty_table().select(["nm", "vector"])
    return EmbeddingTable.from_arrow(table)


@dataclass(frozen=True)
class VectorFileCheck:
    """What `check_vector_file` found: rows, vector dim, float32 storage, finite values, off-unit rows."""

    rows: int
    dim: int
    float32: bool
    finite: bool
    rows_not_unit_norm: int


def check_vector_file(
    path: UPath, norm_tolerance: float, batch_rows: int = 65_536, column: str = "vector"
) -> VectorFileCheck:
    """Check a stored vector column (fixed-size or plain lists) batch by batch (its memory: one batch,
    not the table): float32, finite values, unit L2 norms within `norm_tolerance`; a row whose length
    differs from the first row's counts as not unit-norm."""
    rows = off = 0
    finite = True
    dim = None
    with storage.open_regular_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        vector_type = parquet.schema_arrow.field(column).type
        float32 = vector_type.value_type == pa.float32()
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[column]):
            values = batch.column(0)
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            if dim is None and len(lengths):
                dim = int(lengths[0])
            same = lengths == dim
            flat = values.filter(pa.array(same)).flatten().to_numpy(zero_copy_only=False)
            vectors = flat.reshape(-1, dim or 0)
            rows += len(lengths)
            finite = finite and bool(np.isfinite(vectors).all())
            off += int((np.abs(np.linalg.norm(vectors, axis=1) - 1.0) > norm_tolerance).sum()) + int((~same).sum())
    return VectorFileCheck(rows, dim or 0, float32, finite, off)


def stored_dim(path: UPath) -> int:
    """The vector dimension of a stored embedding table, from its schema alone."""
    with storage.open_regular_file(path) as handle:
        return int(pq.ParquetFile(handle).schema_arrow.field("vector").type.list_size)


def stored_ids(path: UPath) -> pd.Index:
    """The `nm` column of a stored table alone."""
    with storage.open_regular_file(path) as handle:
        return pd.Index(pq.read_table(handle, columns=["nm"]).column("nm").to_pylist())


def is_embedding_table(table: pa.Table) -> bool:
    return (table.schema.metadata or {}).get(KIND_KEY) == EMBEDDING_TABLE_KIND


class EmbeddingCache:
    """Vectors by content hash for one encoder fingerprint, under `root/<fingerprint>/`.

    `seeds`: other caches' roots (same fingerprint) to start from when this one is empty, e.g. the
    same products' shard at the shard count before; a hash missing here is looked up there and, when
    found, copied here, so only the vectors this cache is asked for move over."""

    def __init__(self, root: UPath, fingerprint: str, dim: int, seeds: Sequence[UPath] = ()):
        self.folder = storage.as_upath(root) / fingerprint
        self.fingerprint = fingerprint
        self.dim = dim
        self._index: dict[str, int] = {}
        self._blocks: list[np.ndarray] = []  # appended per chunk, concatenated only when read
        self._rows = 0
        self._load()
        self._seed_roots = list(seeds) if not self._index else []
        self._seeds: dict[str, EmbeddingCache] = {}  # each opened on the first miss it may answer

    def _shards(self) -> list[UPath]:
        if not self.folder.exists():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.endswith(".parquet") and not p.name.startswith("."))

    def _load(self) -> None:
        hashes: list[str] = []
        blocks: list[np.ndarray] = []
        for shard in self._shards():
            try:
                with shard.open("rb") as handle:
                    table = pq.read_table(handle)
                column = table.column("vector").combine_chunks()
            except (pa.ArrowException, KeyError, OSError) as error:
                raise ValueError(
                    f"embedding cache chunk {shard} is unreadable ({error}); delete that file and re-run:"
                    " its vectors are embedded again"
                ) from error
            if column.type.list_size != self.dim:
                raise ValueError(f"{shard}: cached vectors have dim {column.type.list_size}, expected {self.dim}")
            hashes += table.column("content_hash").to_pylist()
            blocks.append(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim))
        if blocks:
            first = pd.Index(hashes).duplicated(keep="first")
            keep = ~np.asarray(first)
            self._blocks = [np.concatenate(blocks)[keep]]
            self._rows = len(self._blocks[0])
            kept_hashes = np.asarray(hashes, dtype=object)[keep]
            self._index = {h: i for i, h in enumerate(kept_hashes)}

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, vectors of the found rows in input order)."""
        if self._seed_roots:
            self._copy_from_seeds(hashes)
        positions = np.fromiter((self._index.get(h, -1) for h in hashes), dtype=np.int64, count=len(hashes))
        found = positions >= 0
        if len(self._blocks) > 1:  # one concatenation per lookup, not one per added chunk
            self._blocks = [np.concatenate(self._blocks)]
        vectors = self._blocks[0] if self._blocks else np.zeros((0, self.dim), dtype=np.float32)
        return found, vectors[positions[found]]

    def _copy_from_seeds(self, hashes: Sequence[str]) -> None:
        missing = [h for h in dict.fromkeys(hashes) if h not in self._index]
        for root in self._seed_roots:
            if not missing:
                break
            if str(root) not in self._seeds:  # opened only while hashes are still missing
                self._seeds[str(root)] = EmbeddingCache(root, self.fingerprint, self.dim)
            found, vectors = self._seeds[str(root)].lookup(missing)
            self.add([h for h, hit in zip(missing, found, strict=True) if hit], vectors)
            missing = [h for h, hit in zip(missing, found, strict=True) if not hit]

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Persist one finished chunk as a new shard (atomic), and remember it in memory."""
        if len(hashes) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "content_hash": pa.array(list(hashes), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim),
            }
        )
        shard = self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        storage.write_parquet(table, shard)
        start = self._rows
        new = [h for h in dict.fromkeys(hashes) if h not in self._index]
        order = {h: i for i, h in enumerate(hashes)}
        self._blocks.append(vectors[[order[h] for h in new]])
        self._rows += len(new)
        self._index.update({h: start + i for i, h in enumerate(new)})


@dataclass
class EmbedStats:
    total: int = 0
    from_cache: int = 0
    embedded: int = 0
    seconds: float = 0.0

    def plus(self, other: EmbedStats) -> EmbedStats:
        return EmbedStats(
            self.total + other.total,
            self.from_cache + other.from_cache,
            self.embedded + other.embedded,
            self.seconds + other.seconds,
        )


ProgressCallback = Callable[[int, int, float], None]  # (done, total, seconds so far)


def embed_incrementally(
    hashes: Sequence[str],
    encode_chunk: Callable[[Any], np.ndarray],
    cache: EmbeddingCache,
    chunk_size: int = 1024,
    progress: ProgressCallback | None = None,
    prepare_chunk: Callable[[np.ndarray], Any] | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Vectors for every row: cached ones looked up, the rest encoded chunk by chunk and cached.

    Rows whose hash is not cached are encoded in chunks of `chunk_size`, each distinct hash once.
    Without `prepare_chunk`, `encode_chunk(row_positions)` returns the L2-normalised vectors of those
    rows (positions into `hashes`). With it, `prepare_chunk(row_positions)` (reading, decoding) runs
    one chunk ahead in a background thread, overlapping the next chunk's I/O with this chunk's
    inference, and `encode_chunk` receives what it returned.
    """
    started = time.perf_counter()
    hashes = list(hashes)
    found, cached = cache.lookup(hashes)
    out = np.zeros((len(hashes), cache.dim), dtype=np.float32)
    out[found] = cached
    missing_positions = np.flatnonzero(~found)
    # one representative row per distinct missing hash, in input order
    _, first_rows = np.unique(np.asarray(hashes, dtype=object)[missing_positions], return_index=True)
    todo = missing_positions[np.sort(first_rows)]
    chunks = [todo[start : start + chunk_size] for start in range(0, len(todo), chunk_size)]
    stats = EmbedStats(total=len(hashes), from_cache=int(found.sum()))
    prepare = prepare_chunk or (lambda rows: rows)
    done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-chunk") as ahead:
        pending = ahead.submit(prepare, chunks[0]) if chunks else None
        for position, rows in enumerate(chunks):
            payload = pending.result()
            if position + 1 < len(chunks):
                pending = ahead.submit(prepare, chunks[position + 1])
            vectors = np.asarray(encode_chunk(payload), dtype=np.float32)
            if vectors.shape != (len(rows), cache.dim):
                raise ValueError(f"encoder returned shape {vectors.shape} for {len(rows)} rows of dim {cache.dim}")
            cache.add([hashes[r] for r in rows], vectors)
            done += len(rows)
            if progress is not None:
                progress(done, len(todo), time.perf_counter() - started)
    if len(todo):
        still, vectors = cache.lookup([hashes[r] for r in missing_positions])
        out[missing_positions[still]] = vectors
    stats.embedded = int(len(todo))
    stats.seconds = time.perf_counter() - started
    return out, stats
