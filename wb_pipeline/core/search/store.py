"""Index builds on storage, and the incremental update of the product index.

One build is a folder `<root>/<build id>/`:

- `index.faiss`: the index in faiss's own binary format (never a pickle);
- `products.parquet`: `nm`, `vector_hash`, `title` in index position order (row i = position i);
- `manifest.json`: format version, library and version, space, kind, dimension, size, graph
  parameters, what the vectors came from (joint model folder, encoder fingerprints), how it was
  built and its recall. Written last: a folder without it is an unfinished build.

The build id is a hash of the index parameters and the (nm, vector hash) list in position order,
so the same vectors give the same folder and an unchanged catalogue costs nothing.

Incremental update (`update_index`): when the previous build has the same parameters and every
product it holds is still in the space with a bit-identical vector, the new products are added to
a copy of it (appended positions); anything else — a removed or changed product, another joint
model (all vectors change), the size crossing `exact_below` or the memory budget, other graph or
code parameters — rebuilds it. An extended ivf index keeps the lists and codes it was trained with.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from upath import UPath

from wb_pipeline.core.data import storage
from wb_pipeline.core.search.index import LIBRARY, LIBRARY_VERSION, IndexConfig, VectorIndex, recall_at_k
from wb_pipeline.core.search.spaces import SPACES

INDEX_FILE = "index.faiss"
PRODUCTS_FILE = "products.parquet"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest is a few KB; never read a huge or endless one


def vector_hashes(vectors: np.ndarray) -> np.ndarray:
    """BLAKE2b-64 hex of each row's float32 bytes (bit-identical vectors ⇔ equal hashes)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in vectors], dtype=object)


def index_params(config: IndexConfig, kind: str, dim: int, size: int) -> dict[str, Any]:
    """What must match for a build to be extended instead of rebuilt."""
    params: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "library": LIBRARY,
        "space": config.space,
        "kind": kind,
        "dim": int(dim),
        "metric": "inner_product",
    }
    if kind == "hnsw":
        params.update(hnsw_m=config.hnsw_m, ef_construction=config.ef_construction)
    if kind == "ivf":  # the settings, not the resolved lists: a growing catalogue keeps its trained lists
        params.update(ivf_codes=config.codes_for(size, dim), ivf_lists=config.ivf_lists)
    return params


def build_id(params: dict[str, Any], nm: np.ndarray, hashes: np.ndarray) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode("utf-8"))
    for product, vector_hash in zip(nm, hashes):
        digest.update(f"{product}\t{vector_hash}\n".encode())
    return digest.hexdigest()[:24]


@dataclass
class IndexBuild:
    folder: UPath
    index: VectorIndex
    products: pd.DataFrame  # nm, vector_hash, title; row i = index position i
    manifest: dict[str, Any]


def read_manifest(folder: UPath) -> dict[str, Any] | None:
    path = storage.as_upath(folder) / MANIFEST_FILE
    try:
        with storage.open_regular_file(path, MAX_MANIFEST_BYTES) as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def load_build(folder: str | UPath, ef_search: int | None = None, nprobe: int | None = None) -> IndexBuild:
    """A saved build; FileNotFoundError / ValueError naming the folder and what is wrong."""
    folder = storage.as_upath(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no readable {MANIFEST_FILE} (not an index build, or an unfinished one)")
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("library") != LIBRARY:
        raise ValueError(
            f"{folder}: index format {manifest.get('library')!r} v{manifest.get('format_version')!r}, "
            f"this code reads {LIBRARY!r} v{FORMAT_VERSION}"
        )
    wrong = [key for key, kind in (("space", str), ("size", int)) if not isinstance(manifest.get(key), kind)]
    wrong += [
        key
        for key, default in (("ef_search", 128), ("nprobe", 32))
        if not isinstance(manifest.get(key, default), int) or manifest.get(key, default) < 1
    ]
    if wrong:
        raise ValueError(f"{folder}: {MANIFEST_FILE} lacks a usable {', '.join(wrong)}")
    if manifest["space"] not in SPACES:
        raise ValueError(f"{folder}: {MANIFEST_FILE} names space {manifest['space']!r}, not one of {SPACES}")
    dims = manifest.get("encoder_dims")
    if manifest["space"] == "early_concat" and not (
        isinstance(dims, dict) and all(isinstance(dims.get(side), int) for side in ("text", "image"))
    ):
        raise ValueError(f"{folder}: an early_concat index needs its encoder_dims (text, image) in {MANIFEST_FILE}")
    for name in (INDEX_FILE, PRODUCTS_FILE):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder}: {name} is missing")
    with storage.open_regular_file(folder / INDEX_FILE) as handle:
        index = VectorIndex.from_bytes(
            handle.read(), ef_search or manifest.get("ef_search", 128), nprobe or manifest.get("nprobe", 32)
        )
    products = storage.read_parquet(folder / PRODUCTS_FILE)
    if not {"nm", "title"} <= set(products.columns):
        raise ValueError(f"{folder}: {PRODUCTS_FILE} lacks nm or title")
    if index.size != len(products) or index.size != manifest.get("size"):
        raise ValueError(
            f"{folder}: the index holds {index.size} vectors, {PRODUCTS_FILE} {len(products)} rows, "
            f"the manifest says {manifest.get('size')}"
        )
    if manifest.get("dim", index.dim) != index.dim:
        raise ValueError(
            f"{folder}: the index's vectors have {index.dim} dimensions, the manifest says {manifest['dim']}"
        )
    return IndexBuild(folder, index, products, manifest)


def save_build(folder: UPath, index: VectorIndex, products: pd.DataFrame, manifest: dict[str, Any]) -> None:
    """Write the three files (manifest last), each atomically."""
    folder = storage.as_upath(folder)
    folder.mkdir(parents=True, exist_ok=True)
    storage.atomic_write_bytes(folder / INDEX_FILE, index.to_bytes())
    storage.write_parquet(products.reset_index(drop=True), folder / PRODUCTS_FILE)
    storage.atomic_write_bytes(
        folder / MANIFEST_FILE, json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False).encode("utf-8")
    )


@dataclass
class UpdatePlan:
    mode: Literal["full", "incremental", "unchanged"]
    reason: str
    order: np.ndarray  # current rows in index position order
    new_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows appended (incremental)


def plan_update(previous: IndexBuild | None, nm: np.ndarray, hashes: np.ndarray, params: dict[str, Any]) -> UpdatePlan:
    """Extend `previous` or rebuild (see the module docstring)."""
    everything = np.arange(len(nm), dtype=np.int64)
    if previous is None:
        return UpdatePlan("full", "no previous index", everything)
    old_params = {key: previous.manifest.get("params", {}).get(key) for key in params}
    if old_params != params:
        changed = sorted(key for key in params if old_params.get(key) != params[key])
        return UpdatePlan("full", f"index parameters changed: {', '.join(changed)}", everything)
    current = pd.Series(everything, index=pd.Index(np.asarray(nm, dtype=object).astype(str)))
    old_nm = previous.products["nm"].astype(str).to_numpy()
    rows = current.reindex(old_nm).to_numpy()
    removed = int(np.isnan(rows).sum()) if rows.dtype.kind == "f" else 0
    if removed:
        return UpdatePlan("full", f"{removed} indexed products are gone (faiss HNSW cannot remove)", everything)
    rows = rows.astype(np.int64)
    changed = int(
        (np.asarray(hashes, dtype=object)[rows] != previous.products["vector_hash"].to_numpy(dtype=object)).sum()
    )
    if changed:
        return UpdatePlan("full", f"{changed} indexed products have other vectors now", everything)
    new_rows = np.setdiff1d(everything, rows, assume_unique=True)
    new_rows = new_rows[np.argsort(new_rows, kind="stable")]
    order = np.concatenate([rows, new_rows])
    if len(new_rows) == 0:
        return UpdatePlan("unchanged", "same products, same vectors", order)
    return UpdatePlan("incremental", f"{len(new_rows)} new products added to {len(rows)} indexed", order, new_rows)


@dataclass
class BuildStats:
    mode: str
    reason: str
    added: int
    seconds: float
    recall_at_k: float
    recall_seconds: float


def update_index(
    root: str | UPath,
    previous_folder: str | None,
    nm: np.ndarray,
    vectors: np.ndarray,
    titles: np.ndarray,
    config: IndexConfig,
    info: dict[str, Any] | None = None,
    log=None,
) -> tuple[IndexBuild, BuildStats]:
    """Build (or extend) the index over `vectors` (row-aligned with `nm` and `titles`) under
    `root/<build id>/`, starting from the build in `previous_folder` when it can be extended.
    `info` (joint model folder, encoder fingerprints...) goes into the manifest as it is."""
    root = storage.as_upath(root)
    nm = np.asarray(nm, dtype=object).astype(str)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(nm) or len(vectors) == 0:
        raise ValueError(f"update_index: {len(nm)} products but vectors of shape {vectors.shape} (need >= 1 product)")
    hashes = vector_hashes(vectors)
    kind = config.kind_for(*vectors.shape)
    params = index_params(config, kind, vectors.shape[1], len(vectors))
    previous = None
    if previous_folder:
        try:
            previous = load_build(previous_folder, config.ef_search, config.nprobe)
        except (OSError, ValueError) as error:
            if log is not None:
                log(f"previous index not usable, rebuilding: {error}")
    plan = plan_update(previous, nm, hashes, params)
    started = time.perf_counter()
    if plan.mode == "full":
        index = VectorIndex.build(vectors, config, kind)
    else:
        index = previous.index
        index.set_effort(config.ef_search, config.nprobe)
        index.add(vectors[plan.new_rows], config.threads)
    seconds = time.perf_counter() - started
    order = plan.order
    products = pd.DataFrame(
        {
            "nm": nm[order],
            "vector_hash": hashes[order],
            "title": pd.Series(np.asarray(titles, dtype=object)[order], dtype=object),
        }
    )
    started = time.perf_counter()
    recall = recall_at_k(index, vectors[order], config.recall_k, config.recall_queries, config.seed, config.threads)
    recall_seconds = time.perf_counter() - started
    identifier = build_id(params, products["nm"].to_numpy(), products["vector_hash"].to_numpy())
    folder = root / identifier
    previous_sequence = int(previous.manifest.get("sequence", 0)) if previous is not None else 0
    manifest = {
        "format_version": FORMAT_VERSION,
        "library": LIBRARY,
        "library_version": LIBRARY_VERSION,
        "build_id": identifier,
        "params": params,
        "space": config.space,
        "kind": kind,
        "dim": int(vectors.shape[1]),
        "size": index.size,
        "ef_search": config.ef_search,
        "nprobe": config.nprobe,
        "sequence": previous_sequence + 1,
        "build": {
            "mode": plan.mode,
            "reason": plan.reason,
            "added": int(len(plan.new_rows)) if plan.mode != "full" else index.size,
            "seconds": round(seconds, 4),
        },
        f"recall_at_{config.recall_k}": None if np.isnan(recall) else round(recall, 5),
        **(info or {}),
    }
    existing = read_manifest(folder)
    if existing is None or existing.get("build_id") != identifier:
        save_build(folder, index, products, manifest)
    else:
        manifest = {**existing, "build": manifest["build"]}
    prune_builds(root, keep=config.keep_builds, current=identifier)
    stats = BuildStats(plan.mode, plan.reason, manifest["build"]["added"], seconds, recall, recall_seconds)
    return IndexBuild(folder, index, products, manifest), stats


def prune_builds(root: UPath, keep: int, current: str) -> list[str]:
    """Delete finished builds beyond the newest `keep` (by manifest sequence); never `current`."""
    root = storage.as_upath(root)
    if not root.exists():
        return []
    builds = []
    for folder in root.iterdir():
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest is not None and folder.name != current:
            builds.append((int(manifest.get("sequence", 0)), folder))
    builds.sort(key=lambda item: item[0], reverse=True)
    removed = []
    for _, folder in builds[max(keep - 1, 0) :]:
        folder.fs.rm(folder.path, recursive=True)
        removed.append(folder.name)
    return removed
