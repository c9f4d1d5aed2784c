"""The product index: build time and memory, batch-1 query latency, recall@10 vs exact search,
incremental add vs rebuild, and a search query's latency with the encoder included.

    .venv/bin/python -m benchmarks.search            # 10,000 and 128,000 vectors (several minutes on 2 cores)
    .venv/bin/python -m benchmarks.search --short    # CI smoke run: 10,000 vectors (< 1 min)

Vectors are generated, of the default combined joint vector's dimension (``DIM``: a text and a photo
half, each the joint head's plus the CCA part's dimensions): unit vectors around ``n / 100`` random
centres (products come in families of similar items), seeded. Queries are held-out vectors
of the same distribution, not in the index. Per size:

* ``exact`` (faiss ``IndexFlatIP``) and ``hnsw`` (``IndexHNSWFlat`` with the project's defaults,
  `core.search.index.IndexConfig`): build seconds (``--threads`` OpenMP threads), index memory
  (the serialised index: vectors + graph), p50 / p99 latency of one query at a time on one thread,
  recall@10 against exact search (judged on each found vector's true similarity; ties within 1e-5
  count as hits);
* HNSW at other ``efSearch`` values (search effort, no rebuild): the recall / latency trade-off;
* incremental: 1% new vectors added to the built index vs building the whole index again;
* ``ivf``: the inverted file of compressed codes `product_index` builds above its memory budget
  (``IndexConfig.memory_budget_mib``), with each of ``--ivf-codes``, trained on the default seeded
  sample, at several ``nprobe``: build seconds, memory, latency, recall; and which kind the default
  budget picks at that size.

Then a text query end to end at batch 1: the default text encoder (multilingual-e5-small, onnx
int8, ``query: `` prompt, ``--threads`` threads) on short Russian queries, a joint text head of
the real shape (384 → 256, random weights: the cost does not depend on them), and the HNSW search
on the largest index; and a photo query (decode + EfficientNet-Lite0 onnx + image head + search).
Target: <= 50 ms per text query on 2 cores for a 128,000-product index, encoder included. Timings
are medians of interleaved repetitions; this VM has bursts of outside load. Results also go to
``benchmarks/out/search[-short].json``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.paths import MODELS_DIR, OUT_DIR
from wb_pipeline.core.models.contrastive import ContrastiveConfig

DIM = 2 * (ContrastiveConfig().joint_dim + ContrastiveConfig().closed_form_dim)  # the default combined joint vector
K = 10
TARGET_MS = 50.0
QUERIES = (
    "женские зимние ботинки",
    "платье летнее миди",
    "кроссовки мужские белые",
    "чехол для телефона",
    "набор посуды стеклянный",
    "детский конструктор lego",
    "шампунь для волос",
    "рюкзак школьный",
)


def generate(n: int, seed: int, dim: int = DIM, spread: float = 1.4) -> tuple[np.ndarray, np.ndarray]:
    """(n index vectors, 500 held-out query vectors) around n/100 random centres, unit norm."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 10), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    total = n + 500
    vectors = np.empty((total, dim), np.float32)
    for start in range(0, total, 32_768):  # in blocks: 128k × 256 floats plus noise would double the memory
        stop = min(start + 32_768, total)
        block = centres[rng.integers(0, len(centres), stop - start)]
        block = block + spread / np.sqrt(dim) * rng.standard_normal(block.shape).astype(np.float32)
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors[:n], vectors[n:]


def stored_joint_vectors(storage_dir: str, held_out: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(indexed, held-out query) rows of a materialized run's combined joint vectors (unit norm)."""
    import pyarrow.parquet as pq

    from wb_pipeline import settings

    path = settings.layout(storage_dir).asset_file("joint_embeddings")
    column = pq.read_table(str(path), columns=["combined_joint"]).column(0)
    vectors = np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = np.random.default_rng(seed).random(len(vectors)) < held_out
    return np.ascontiguousarray(vectors[~queries]), np.ascontiguousarray(vectors[queries])


def latency_ms(search, queries: np.ndarray, reps: int) -> tuple[float, float]:
    """(p50, p99) ms of one query at a time, over `reps` passes through the queries."""
    times = []
    for _ in range(reps):
        for query in queries:
            started = time.perf_counter()
            search(query[None, :])
            times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def bench_size(
    vectors: np.ndarray,
    queries: np.ndarray,
    threads: int,
    reps: int,
    ef_values: list[int],
    ivf_codes: list[str],
    nprobes: list[int],
    label: str = "",
) -> tuple[list[dict], object]:
    """Every index kind over `vectors`, queried with `queries` (not in the index)."""
    from wb_pipeline.core.search.index import IndexConfig, VectorIndex, hits_at_k

    config = IndexConfig(threads=threads)
    n = label or len(vectors)
    rows = []
    started = time.perf_counter()
    exact = VectorIndex.build(vectors, config, "exact")
    exact_build = time.perf_counter() - started
    exact_sims, _ = exact.search(queries, K, threads)
    p50, p99 = latency_ms(lambda q: exact.search(q, K, 1), queries[:200], reps)
    rows.append(
        {
            "vectors": n,
            "index": "exact (flat)",
            "build_s": exact_build,
            "memory_mib": exact.memory_bytes() / 2**20,
            "p50_ms": p50,
            "p99_ms": p99,
            "recall_at_10": 1.0,
        }
    )
    exact = None  # frees the flat index before the HNSW build
    started = time.perf_counter()
    hnsw = VectorIndex.build(vectors, config, "hnsw")
    hnsw_build = time.perf_counter() - started
    for ef in sorted({config.ef_search, *ef_values}):
        hnsw.index.hnsw.efSearch = ef
        sims, positions = hnsw.search(queries, K, threads)
        p50, p99 = latency_ms(lambda q: hnsw.search(q, K, 1), queries[:200], reps)
        rows.append(
            {
                "vectors": n,
                "index": f"hnsw M={config.hnsw_m} efC={config.ef_construction} efSearch={ef}"
                + (" (default)" if ef == config.ef_search else ""),
                "build_s": hnsw_build if ef == config.ef_search else None,
                "memory_mib": hnsw.memory_bytes() / 2**20 if ef == config.ef_search else None,
                "p50_ms": p50,
                "p99_ms": p99,
                "recall_at_10": hits_at_k(queries, vectors, positions, exact_sims),
            }
        )
    hnsw.index.hnsw.efSearch = config.ef_search
    # incremental: 1% new products added to an index of the other 99%, vs building all of it again
    n_new = max(len(vectors) // 100, 1)
    started = time.perf_counter()
    base = VectorIndex.build(vectors[:-n_new], config, "hnsw")
    base_build = time.perf_counter() - started
    started = time.perf_counter()
    base.add(vectors[-n_new:], threads)
    add_seconds = time.perf_counter() - started
    sims, positions = base.search(queries, K, threads)
    rows.append(
        {
            "vectors": n,
            "index": f"hnsw + {n_new} added (1%)",
            "build_s": add_seconds,
            "memory_mib": base.memory_bytes() / 2**20,
            "p50_ms": None,
            "p99_ms": None,
            "recall_at_10": hits_at_k(queries, vectors, positions, exact_sims),
            "note": f"add {add_seconds:.2f} s vs full rebuild {hnsw_build:.1f} s "
            f"({hnsw_build / max(add_seconds, 1e-9):.0f}x); 99% build {base_build:.1f} s",
        }
    )
    del base
    rows += bench_ivf(vectors, queries, exact_sims, config, threads, reps, ivf_codes, nprobes, label)
    size, dim = vectors.shape
    chosen = config.kind_for(size, dim)
    rows[-1]["note"] = (
        f"at the default memory budget ({config.memory_budget_mib:,} MiB) the pipeline builds "
        + (f"ivf {config.codes_for(size, dim)}" if chosen == "ivf" else chosen)
        + f" over {size:,} vectors of {dim} dimensions"
    )
    return rows, hnsw


def bench_ivf(
    vectors, queries, exact_sims, config, threads: int, reps: int, codes: list[str], nprobes: list[int], label=""
):
    """The compressed index (what `product_index` builds above its memory budget) with each code spec,
    trained on the default seeded sample, at each `nprobe`."""
    import dataclasses

    from wb_pipeline.core.search.index import VectorIndex, hits_at_k

    rows = []
    for spec in codes:
        ivf_config = dataclasses.replace(config, ivf_codes=spec)
        started = time.perf_counter()
        ivf = VectorIndex.build(vectors, ivf_config, "ivf")
        build = time.perf_counter() - started
        for nprobe in nprobes:
            ivf.set_effort(config.ef_search, nprobe)
            _, positions = ivf.search(queries, K, threads)
            p50, p99 = latency_ms(lambda q: ivf.search(q, K, 1), queries[:200], reps)
            first = nprobe == nprobes[0]
            rows.append(
                {
                    "vectors": label or len(vectors),
                    "index": f"ivf {config.lists_for(len(vectors))} lists, {spec}, nprobe={nprobe}"
                    + (" (default)" if nprobe == config.nprobe else ""),
                    "build_s": build if first else None,
                    "memory_mib": ivf.memory_bytes() / 2**20 if first else None,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "recall_at_10": hits_at_k(queries, vectors, positions, exact_sims),
                }
            )
    return rows


def jpeg_bytes(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((360, 300, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def run_stages(prefix: str, steps: list, value, stages: dict[str, list[float]]) -> None:
    """Feed `value` through the (name, function) steps, timing each and the whole."""
    started = time.perf_counter()
    for name, step in steps:
        step_started = time.perf_counter()
        value = step(value)
        stages[f"{prefix}: {name}"].append(time.perf_counter() - step_started)
    stages[f"{prefix}: total"].append(time.perf_counter() - started)


def bench_queries(index, threads: int, reps: int) -> list[dict]:
    """Batch-1 text and photo queries end to end against `index` (a VectorIndex in a 256-d space)."""
    import torch

    from wb_pipeline.core.data import images
    from wb_pipeline.core.models.contrastive import ContrastiveConfig, JointSpaceModel
    from wb_pipeline.core.search.spaces import query_vector
    from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource

    torch.set_num_threads(threads)
    text_resource = TextEncoderResource(cache_dir=str(MODELS_DIR), num_threads=threads)
    text_encoder = text_resource.build_query_encoder()
    image_encoder = ImageEncoderResource(cache_dir=str(MODELS_DIR), num_threads=threads).build()
    torch.manual_seed(0)
    # Default layout (CCA part + head) with the head sized so that the combined vectors ([text, image]
    # joint vectors, what the default `joint` index holds) match the index's dimension.
    closed_form_dim = ContrastiveConfig().closed_form_dim
    model = JointSpaceModel(
        text_encoder.dim, image_encoder.dim, ContrastiveConfig(joint_dim=index.dim // 2 - closed_form_dim)
    ).eval()
    assert 2 * model.output_dim == index.dim, (model.output_dim, index.dim)
    photos = [jpeg_bytes(seed) for seed in range(4)]
    config = images.ImageConfig()
    stages: dict[str, list[float]] = {
        name: []
        for name in (
            "text: encoder",
            "text: joint head",
            "text: search",
            "text: total",
            "photo: decode",
            "photo: encoder",
            "photo: joint head",
            "photo: search",
            "photo: total",
        )
    }
    text_encoder.encode([QUERIES[0]])  # warm-up: model load, first-call allocations
    image_encoder.encode([images.decode_image(photos[0], config, image_encoder.min_decode_side)])
    text_steps = [
        ("encoder", lambda q: text_encoder.encode([q])),
        ("joint head", lambda v: query_vector("joint", text_vector=v, joint_model=model)),
        ("search", lambda v: index.search(v, K, 1)),
    ]
    photo_steps = [
        ("decode", lambda data: images.decode_image(data, config, image_encoder.min_decode_side)),
        ("encoder", lambda photo: image_encoder.encode([photo])),
        ("joint head", lambda v: query_vector("joint", image_vector=v, joint_model=model)),
        ("search", lambda v: index.search(v, K, 1)),
    ]
    for _ in range(reps):
        for query in QUERIES:
            run_stages("text", text_steps, query, stages)
        for data in photos:
            run_stages("photo", photo_steps, data, stages)
    return [
        {
            "stage": name,
            "p50_ms": float(np.percentile(values, 50) * 1e3),
            "p99_ms": float(np.percentile(values, 99) * 1e3),
            "calls": len(values),
        }
        for name, values in stages.items()
    ]


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if digits == 4 else f"{value:.{digits}f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="10,000 vectors only, fewer repetitions (CI)")
    parser.add_argument("--threads", type=int, default=2, help="threads for building and the encoders (default 2)")
    parser.add_argument("--reps", type=int, default=None, help="passes over the queries (default 3, short 1)")
    parser.add_argument("--sizes", type=int, nargs="*", help="index sizes (default 10000 128000; short 10000)")
    parser.add_argument(
        "--real-storage",
        nargs="*",
        help="materialized storage dirs (e.g. storage/eval/mango): their joint vectors indexed the same way, "
        "a seeded 10%% held out as queries",
    )
    parser.add_argument(
        "--ivf-codes",
        nargs="*",
        help=f"codes of the compressed index (default SQ8 SQ4 PQ{DIM // 4}; short SQ8 SQ4; PQ trains slowly)",
    )
    args = parser.parse_args()
    from wb_pipeline.core.search.index import IndexConfig, faiss_threads

    reps = args.reps or (1 if args.short else 3)
    sizes = args.sizes or ([10_000] if args.short else [10_000, 128_000])
    ef_values = [32, 64, 128] if args.short else [16, 32, 64, 128, 256]
    ivf_codes = args.ivf_codes or (["SQ8", "SQ4"] if args.short else ["SQ8", "SQ4", f"PQ{DIM // 4}"])
    nprobes = [8, 32] if args.short else [8, 16, 32, 64]
    started = time.perf_counter()
    rows, largest = [], None
    with faiss_threads(args.threads):
        for n in sizes:
            vectors, queries = generate(n, seed=0)
            size_rows, largest = bench_size(vectors, queries, args.threads, reps, ef_values, ivf_codes, nprobes)
            rows.extend(size_rows)
            print(f"({n} vectors done, {time.perf_counter() - started:.0f} s)", flush=True)
        for storage_dir in args.real_storage or []:
            vectors, queries = stored_joint_vectors(storage_dir)
            label = f"{len(vectors):,} real ({Path(storage_dir).name})"
            size_rows, _ = bench_size(vectors, queries, args.threads, reps, ef_values, ivf_codes, nprobes, label)
            rows.extend(size_rows)
        query_rows = bench_queries(largest, args.threads, reps)
    config = IndexConfig()
    print(
        f"\nIndex over generated {DIM}-d unit vectors; {args.threads} build threads, 1 search thread, "
        f"batch-1 queries (held-out vectors)\n"
    )
    print("| vectors | index | build s | memory MiB | p50 ms | p99 ms | recall@10 |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {_fmt(row['vectors'])} | {row['index']} | {_fmt(row['build_s'])} | {_fmt(row['memory_mib'], 1)} | "
            f"{_fmt(row['p50_ms'], 3)} | {_fmt(row['p99_ms'], 3)} | {_fmt(row['recall_at_10'], 4)} |"
        )
    for row in rows:
        if row.get("note"):
            print(f"- {_fmt(row['vectors'])}: {row['note']}")
    total = next(r for r in query_rows if r["stage"] == "text: total")
    print(
        f"\nQuery latency at batch 1 against the {largest.size:,}-vector HNSW index "
        f"(encoder threads {args.threads}, search 1 thread):\n"
    )
    print("| stage | p50 ms | p99 ms | calls |\n|---|---|---|---|")
    for row in query_rows:
        print(f"| {row['stage']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['calls']} |")
    verdict = "met" if total["p50_ms"] <= TARGET_MS else "NOT met"
    print(
        f"\nText query, encoder included: p50 {total['p50_ms']:.1f} ms (target <= {TARGET_MS:.0f} ms: {verdict}); "
        f"defaults M={config.hnsw_m}, efConstruction={config.ef_construction}, efSearch={config.ef_search}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"search{'-short' if args.short else ''}.json"
    out.write_text(json.dumps({"index": rows, "queries": query_rows, "threads": args.threads, "reps": reps}, indent=1))


if __name__ == "__main__":
    main()
