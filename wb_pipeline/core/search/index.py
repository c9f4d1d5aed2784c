"""A nearest-neighbour index over unit product vectors, built with faiss.

Why faiss (faiss-cpu) and not usearch: measured on this project's 2-core VM (`docs/DESIGN-NOTES.md`):
at 128,000 × 256-d vectors faiss HNSW builds 2.4× faster than usearch HNSW with the same graph
parameters (123 s vs 295 s), answers a batch-1 query 2.4× faster (p50 0.32 vs 0.78 ms) at the same
recall, has an exact flat index in the same file format, and needs no extra dependency (usearch
pulls in numkong).

- Below `IndexConfig.exact_below` vectors the index is exact (`IndexFlatIP`: a BLAS matrix product,
  recall 1 by construction); at or above it, HNSW (`IndexHNSWFlat`, inner product), as long as the
  HNSW index fits `IndexConfig.memory_budget_mib` (it holds every vector in float32 beside its graph);
  above the budget, an inverted file with compressed codes (`ivf`: `IVF<lists>,<codes>`, by default
  the finest codes that fit the budget: 8-bit scalar, 4-bit scalar, then product quantization at
  a quarter, an eighth ... of a byte a dimension), trained on a seeded sample of at most
  `train_sample` vectors and filled in blocks. Vectors are unit-norm, so inner product = cosine
  similarity.
- Saved in faiss's own binary format (`faiss.serialize_index`, the bytes `faiss.write_index` writes),
  never pickled; `ef_search` is not part of that format and is set again on load.
- Incremental: every index kind takes `add` (an `ivf` index keeps the lists it was trained with);
  faiss HNSW cannot remove vectors, so a changed or removed product means a rebuild (decided in
  `core.search.store.plan_update`).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from wb_pipeline.core.search.spaces import AUTO_SPACE, SPACES, IndexSpace

LIBRARY = "faiss-cpu"
LIBRARY_VERSION = faiss.__version__
IndexKind = Literal["exact", "hnsw", "ivf"]
# `IndexConfig.ivf_codes`: the code part of a faiss factory string that the inverted file stores per vector
IVF_CODES = re.compile(r"^(auto|SQ(4|6|8|fp16)|PQ\d+(x\d+)?)$")
IVF_ID_BYTES = 8  # each vector's id in its inverted list (int64)
ADD_BLOCK_ROWS = 65_536  # vectors encoded and added at a time (bounds the transient copy of a compressed build)
# Similarities within this of the exact k-th one count as a hit: identical vectors (same photo,
# same text) tie, and which of them an exact search returns is arbitrary.
TIE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class IndexConfig:
    """The `product_index`: which space, exact or HNSW, graph parameters, and the recall measurement.

    `exact_below`: below this many vectors the index is exact (a flat scan costs ~1 ms per query at
    20,000 × 256 on 2 cores, and builds instantly); at or above it HNSW.
    HNSW defaults (M=16, efConstruction=100, efSearch=64): recall@10 >= 0.99 at 128,000 generated
    256-d vectors in `benchmarks/search.py`, well under 1 ms per query; M=32 bought <= 0.0006 recall
    for 3x the build time. `ef_search` is search effort only: raise it without rebuilding.
    `threads`: OpenMP threads faiss may use for building and batch searches (0 = faiss's default).
    `recall_queries` products are searched both ways to measure recall@`recall_k` of the ANN
    against exact search (skipped for an exact index: 1 by construction).

    `memory_budget_mib`: the most the index may take in memory (every process that searches it loads
    it whole: `similar_products`, the search CLI, the service). Above what HNSW would take
    (`hnsw_bytes`), the index is an inverted file of compressed codes (`ivf`): `ivf_codes` per vector
    ("auto": the finest of `code_ladder` that fits the budget; or faiss's code spec: "SQ8" 1 byte a
    dimension, "SQ4", "SQfp16", "PQ<m>" m bytes a vector),
    `ivf_lists` lists (0: 4·√n, between 64 and 65,536, and at most a 39th of the training sample),
    trained on `train_sample` vectors drawn with `seed`, `nprobe` lists visited per query (search
    effort: raise it without rebuilding)."""

    # "auto" (the `product_index` asset's default) = `spaces.choose_index_space` from the clustering evidence
    space: IndexSpace = "joint"
    exact_below: int = 20_000
    hnsw_m: int = 16
    ef_construction: int = 100
    ef_search: int = 64
    threads: int = 2
    recall_queries: int = 1000
    recall_k: int = 10
    seed: int = 0
    keep_builds: int = 3  # index folders kept under <storage>/search/index (the newest ones)
    memory_budget_mib: int = 2048
    ivf_codes: str = "auto"
    ivf_lists: int = 0
    nprobe: int = 32
    train_sample: int = 100_000

    def __post_init__(self) -> None:
        if self.space not in (*SPACES, AUTO_SPACE):
            raise ValueError(f"IndexConfig.space must be one of {SPACES} or {AUTO_SPACE!r}, got {self.space!r}")
        if not IVF_CODES.match(self.ivf_codes):
            raise ValueError(
                f"IndexConfig.ivf_codes must be 'auto' or a faiss code spec like SQ8, SQ4, SQfp16 or PQ32, "
                f"got {self.ivf_codes!r}"
            )
        for name in (
            "hnsw_m",
            "ef_construction",
            "ef_search",
            "recall_k",
            "keep_builds",
            "memory_budget_mib",
            "nprobe",
            "train_sample",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("exact_below", "threads", "recall_queries", "ivf_lists"):
            if getattr(self, name) < 0:
                raise ValueError(f"IndexConfig.{name} must be >= 0, got {getattr(self, name)}")

    def kind_for(self, size: int, dim: int) -> IndexKind:
        """exact below `exact_below` vectors, else HNSW while it fits the memory budget, else ivf."""
        if size < self.exact_below:
            return "exact"
        return "hnsw" if hnsw_bytes(size, dim, self.hnsw_m) <= self.memory_budget_mib * 2**20 else "ivf"

    def lists_for(self, size: int) -> int:
        """Inverted lists of an ivf index over `size` vectors (`ivf_lists`, or 0: see the class)."""
        if self.ivf_lists:
            return self.ivf_lists
        trained_on = min(size, self.train_sample)
        return int(max(1, min(65_536, max(64, 4 * math.isqrt(size)), trained_on // 39)))

    def codes_for(self, size: int, dim: int) -> str:
        """The ivf codes of an index over `size` `dim`-d vectors: `ivf_codes`, or for "auto" the finest
        of `code_ladder(dim)` whose index fits `memory_budget_mib`; ValueError when none does."""
        if self.ivf_codes != "auto":
            return self.ivf_codes
        budget = self.memory_budget_mib * 2**20
        lists = self.lists_for(size)
        for codes, code_bytes in code_ladder(dim):
            if ivf_bytes(size, dim, code_bytes, lists) <= budget:
                return codes
        smallest = ivf_bytes(size, dim, code_ladder(dim)[-1][1], lists)
        raise ValueError(
            f"IndexConfig: {size:,} vectors of {dim} dimensions need {smallest / 2**20:,.2f} MiB even with the "
            f"coarsest codes; memory_budget_mib is {self.memory_budget_mib:,}"
        )


def code_ladder(dim: int) -> list[tuple[str, int]]:
    """(faiss code spec, bytes a vector) from the finest to the coarsest: 8-bit and 4-bit scalar codes,
    then product quantization with m = the largest divisor of `dim` at or below dim/4, dim/8, dim/16,
    dim/32 (m bytes: one 8-bit centroid id per sub-vector; faiss needs m to divide the dimension)."""
    ladder = [("SQ8", dim), ("SQ4", (dim + 1) // 2)]
    for fraction in (4, 8, 16, 32):
        m = max((d for d in range(1, dim // fraction + 1) if dim % d == 0), default=0)
        if m and m < ladder[-1][1] and f"PQ{m}" not in dict(ladder):
            ladder.append((f"PQ{m}", m))
    return ladder


def ivf_bytes(size: int, dim: int, code_bytes: int, lists: int) -> int:
    """What an ivf index takes: each vector's code and id, and the lists' float32 centroids."""
    return int(size * (code_bytes + IVF_ID_BYTES) + lists * dim * 4)


def hnsw_bytes(size: int, dim: int, m: int) -> int:
    """What faiss's HNSW over `size` `dim`-d float32 vectors takes: the vectors, 2·m level-0 links a
    vector (int32), the upper levels' links (1/(m-1) of the vectors have them, m links a level), its
    level and offset (within 0.05% of `memory_bytes` at 10,000-60,000 vectors; tested within 3%)."""
    return int(size * (4 * dim + 4 * 2 * m + 4 * m * m / max(m - 1, 1) ** 2 + 12))


@contextlib.contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run the block with faiss (OpenMP) limited to `threads` (None / 0: leave it as it is)."""
    if not threads:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _as_matrix(vectors: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D [n, dim] matrix, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{what}: vectors of dimension {array.shape[1]}, the index holds {dim}")
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{what}: vectors hold NaN or infinite values")
    return array


class VectorIndex:
    """A faiss index (exact flat, HNSW or an inverted file of compressed codes; inner product) with its
    kind and search effort (`ef_search` for HNSW, `nprobe` for ivf)."""

    def __init__(self, index: faiss.Index, kind: IndexKind, ef_search: int = 128, nprobe: int = 32):
        self.index, self.kind = index, kind
        self.set_effort(ef_search, nprobe)

    def set_effort(self, ef_search: int, nprobe: int) -> None:
        """Search effort: HNSW's efSearch, ivf's lists visited per query (neither needs a rebuild)."""
        self.ef_search, self.nprobe = int(ef_search), int(nprobe)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = self.ef_search
        elif self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = self.nprobe

    @classmethod
    def empty(cls, dim: int, kind: IndexKind, config: IndexConfig) -> VectorIndex:
        if dim < 1:
            raise ValueError(f"VectorIndex: dimension must be >= 1, got {dim}")
        if kind == "exact":
            return cls(faiss.IndexFlatIP(int(dim)), "exact")
        if kind == "ivf":
            raise ValueError("VectorIndex.empty: an ivf index is trained on vectors first (VectorIndex.trained_ivf)")
        index = faiss.IndexHNSWFlat(int(dim), config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        return cls(index, "hnsw", config.ef_search)

    @classmethod
    def trained_ivf(cls, vectors: np.ndarray, config: IndexConfig) -> VectorIndex:
        """An empty ivf index whose lists and codes are trained on a seeded sample of `vectors`."""
        size, dim = vectors.shape
        spec = f"IVF{config.lists_for(size)},{config.codes_for(size, dim)}"
        try:
            index = faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:  # e.g. PQ<m> with m not dividing the dimension
            raise ValueError(f"VectorIndex: faiss cannot build {spec!r} over {dim}-d vectors: {error}") from error
        rows = np.random.default_rng(config.seed).choice(size, size=min(size, config.train_sample), replace=False)
        with faiss_threads(config.threads):
            index.train(vectors[np.sort(rows)])
        return cls(index, "ivf", config.ef_search, config.nprobe)

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig, kind: IndexKind | None = None) -> VectorIndex:
        """An index over `vectors` (row i = position i); its kind by size and the memory budget unless
        `kind` says."""
        vectors = _as_matrix(vectors, "VectorIndex.build")
        if vectors.shape[1] == 0:
            raise ValueError("VectorIndex.build: vectors have dimension 0 (no products in the space?)")
        kind = kind or config.kind_for(*vectors.shape)
        index = cls.trained_ivf(vectors, config) if kind == "ivf" else cls.empty(vectors.shape[1], kind, config)
        index.add(vectors, config.threads)
        return index

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def add(self, vectors: np.ndarray, threads: int | None = None) -> None:
        """Append vectors; they get the next positions."""
        vectors = _as_matrix(vectors, "VectorIndex.add", self.dim)
        with faiss_threads(threads):
            for start in range(0, len(vectors), ADD_BLOCK_ROWS):
                self.index.add(vectors[start : start + ADD_BLOCK_ROWS])

    def search(self, queries: np.ndarray, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities float32 [q, k], positions int64 [q, k]), best first; position -1 and
        similarity -inf where the index holds fewer than k vectors."""
        queries = _as_matrix(np.atleast_2d(queries), "VectorIndex.search", self.dim)
        if k < 1:
            raise ValueError(f"VectorIndex.search: k must be >= 1, got {k}")
        if len(queries) == 0 or self.size == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        with faiss_threads(threads):
            sims, positions = self.index.search(queries, k)
        sims = np.where(positions >= 0, sims, -np.inf).astype(np.float32)
        return sims, positions.astype(np.int64)

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The stored vectors at positions [start, stop) (default: all), in position order: the vectors
        themselves (exact, HNSW), or decoded from their codes (ivf: as close as the codes keep them)."""
        stop = self.size if stop is None else min(stop, self.size)
        if stop <= start:
            return np.zeros((0, self.dim), np.float32)
        self._readable()
        return self.index.reconstruct_n(int(start), int(stop - start))

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """The stored vectors at `positions` (any order, repeats allowed), as `vectors` reads them."""
        positions = np.asarray(positions, dtype=np.int64).ravel()
        if len(positions) == 0:
            return np.zeros((0, self.dim), np.float32)
        self._readable()
        return self.index.reconstruct_batch(positions)

    def _readable(self) -> None:
        """An ivf index needs its direct map (position -> list, offset) to reconstruct; built once."""
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            if not ivf.direct_map.type:
                ivf.make_direct_map()

    def memory_bytes(self) -> int:
        """Bytes of the serialised index (vectors + HNSW graph): what it takes in memory, ~exactly."""
        return int(faiss.serialize_index(self.index).nbytes)

    def to_bytes(self) -> bytes:
        """The index in faiss's own binary format (what `faiss.write_index` writes)."""
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, ef_search: int = 128, nprobe: int = 32) -> VectorIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if isinstance(index, faiss.IndexHNSWFlat):
            kind: IndexKind = "hnsw"
        elif isinstance(index, faiss.IndexFlatIP):
            kind = "exact"
        elif faiss.try_extract_index_ivf(index) is not None:
            kind = "ivf"
        else:
            raise ValueError(f"VectorIndex.from_bytes: unexpected faiss index type {type(index).__name__}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("VectorIndex.from_bytes: the index does not use the inner-product metric")
        return cls(index, kind, ef_search, nprobe)


def exact_search(
    queries: np.ndarray, gallery: np.ndarray, k: int, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (faiss flat scan: a blocked BLAS product)."""
    gallery = _as_matrix(gallery, "exact_search")
    flat = VectorIndex(faiss.IndexFlatIP(gallery.shape[1]), "exact")
    flat.add(gallery, threads)
    return flat.search(queries, k, threads)


def drop_self(sims: np.ndarray, positions: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per query row, the k best that are not the row itself (row `rows[i]`).

    When the row is not among its own results (possible with ties or an approximate index), the
    last result is dropped instead, so every row keeps exactly k."""
    rows = np.asarray(rows, dtype=np.int64)[:, None]
    is_self = positions == rows
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    return (sims[keep].reshape(len(rows), -1)[:, :k], positions[keep].reshape(len(rows), -1)[:, :k])


def neighbour_count(index: VectorIndex, k: int) -> int:
    """How many other products each product can have as neighbours: k, at most the index's size - 1."""
    return min(k, max(index.size - 1, 0))


def iter_neighbours(
    index: VectorIndex, k: int, threads: int | None = None, block_rows: int = 16_384, vectors: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The k nearest other products of every indexed product, `block_rows` products at a time:
    (positions [b], similarities [b, k], neighbour positions [b, k]) per block. The queries are the
    block's stored vectors (`vectors` when given), so memory follows a block, not the catalogue."""
    k = neighbour_count(index, k)
    for start in range(0, index.size, block_rows):
        rows = np.arange(start, min(start + block_rows, index.size))
        if k == 0:
            yield rows, np.zeros((len(rows), 0), np.float32), np.zeros((len(rows), 0), np.int64)
            continue
        queries = index.vectors(start, rows[-1] + 1) if vectors is None else vectors[rows]
        sims, positions = index.search(queries, k + 1, threads)
        yield rows, *drop_self(sims, positions, rows, k)


def neighbours_of_all(
    index: VectorIndex, k: int, threads: int | None = None, block_rows: int = 16_384, vectors: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other products of every indexed product: (similarities [n, k], positions [n, k])."""
    blocks = list(iter_neighbours(index, k, threads, block_rows, vectors))
    if not blocks:
        k = neighbour_count(index, k)
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([b[1] for b in blocks]), np.concatenate([b[2] for b in blocks])


def knn(vectors: np.ndarray, k: int, config: IndexConfig) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other rows of every row (exact or HNSW by size, as `config` says)."""
    vectors = _as_matrix(vectors, "knn")
    if len(vectors) == 0:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64)
    return neighbours_of_all(VectorIndex.build(vectors, config), k, config.threads, vectors=vectors)


def recall_at_k(
    index: VectorIndex, vectors: np.ndarray, k: int, n_queries: int, seed: int, threads: int | None = None
) -> float:
    """Recall@k of `index` against exact search over the same `vectors`, on `n_queries` stored
    vectors drawn at random as queries: the share of the exact top-k the index returns (a result
    whose similarity ties the exact k-th one within 1e-5 counts, so interchangeable duplicates do
    not count as misses). 1.0 for an exact index; NaN when there is nothing to query."""
    if index.kind == "exact":
        return 1.0
    n = len(vectors)
    k = min(k, n)
    if n == 0 or n_queries == 0 or k == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    queries = vectors[rows]
    exact_sims, _ = exact_search(queries, vectors, k, threads)
    _, ann_positions = index.search(queries, k, threads)
    return hits_at_k(queries, vectors, ann_positions, exact_sims)


def index_recall(
    index: VectorIndex, k: int, n_queries: int, seed: int, threads: int | None = None, block_rows: int = 65_536
) -> float:
    """`recall_at_k` of an index against its OWN stored vectors (decoded, for ivf), without holding them:
    the exact top-k is merged over `block_rows` vectors at a time, and only the queries and what the
    index found are read whole. 1.0 for an exact index; NaN when there is nothing to query."""
    if index.kind == "exact":
        return 1.0
    k = min(k, index.size)
    if index.size == 0 or n_queries == 0 or k == 0:
        return float("nan")
    rows = np.sort(np.random.default_rng(seed).choice(index.size, size=min(n_queries, index.size), replace=False))
    queries = index.vectors_at(rows)
    exact_sims = np.full((len(rows), k), -np.inf, np.float32)
    for start in range(0, index.size, block_rows):
        block_sims, _ = exact_search(queries, index.vectors(start, start + block_rows), k, threads)
        exact_sims = -np.sort(-np.concatenate([exact_sims, block_sims], axis=1), axis=1)[:, :k]
    _, positions = index.search(queries, k, threads)
    found = positions >= 0
    found_vectors = index.vectors_at(np.where(found, positions, 0)).reshape(*positions.shape, -1)
    return _share_found(queries, found_vectors, found, exact_sims)


def hits_at_k(queries: np.ndarray, vectors: np.ndarray, positions: np.ndarray, exact_sims: np.ndarray) -> float:
    """The share of the exact top-k (`exact_sims`, best first) that `positions` found. Judged on the
    TRUE similarity of each found vector, not on the one the index reports (an ivf index reports
    similarities decoded from its codes); a found vector that ties the exact k-th within 1e-5 counts."""
    found = positions >= 0
    return _share_found(queries, vectors[np.where(found, positions, 0)], found, exact_sims)


def _share_found(queries: np.ndarray, found_vectors: np.ndarray, found: np.ndarray, exact_sims: np.ndarray) -> float:
    """`hits_at_k` from the found vectors [q, k, dim] and which of them exist."""
    k = exact_sims.shape[1]
    true_sims = np.einsum("qd,qkd->qk", queries, found_vectors)
    hits = ((true_sims >= exact_sims[:, k - 1 : k] - TIE_TOLERANCE) & found).sum(axis=1)
    return float(np.mean(np.minimum(hits, k) / k))
