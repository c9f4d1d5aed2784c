"""Scale benchmark: the real assets from ingestion to both embeddings on a generated catalogue.

Usage::

    .venv/bin/python -m benchmarks.scale                    # 128,000 products (about 5 GB of generated data)
    .venv/bin/python -m benchmarks.scale --short            # 2,000 products (CI)
    .venv/bin/python -m benchmarks.scale --products 32000 --shards 4 --executor multiprocess
    .venv/bin/python -m benchmarks.scale --products 8000 --dask          # + the same run on 2 dask workers
    .venv/bin/python -m benchmarks.scale --compare out/scale/scale-8000-1sh-multiprocess.json ...

Generates the catalogue with the sample generator (reused when ``<out>/data-<n>-<seed>`` already holds
one of the same spec: its manifest is written last), prepares the models (e5 conversion, onnx
export: reused from ``--models``), then materialises the ``ingestion``, ``preprocessing`` and
``embeddings`` groups — ``raw_products_train``, ``raw_products_test``, ``image_members`` (the zip's
directory, read once), ``image_index`` (its shard list, shard steps and gather),
``clean_products`` + ``rejected_products``, and the ``product_text``, ``text_embeddings`` and
``image_embeddings`` shard lists, shard steps and gathers, with their
asset checks — in ONE Dagster run over a fresh storage folder, on ``--shards`` N product shards
(default: the pipeline's). Per stage (its shard steps + gather summed) it prints wall seconds
(STEP_START..STEP_SUCCESS from the run's event log, so input loading and output writing are
included), rows (``dagster/row_count``), rows/s and peak RSS; then every step on its own.

Executors (``--executor``): ``in_process`` (default; every step in this process, RSS sampled every
0.2 s — a step's peak then includes whatever earlier steps left in the process) or ``multiprocess``
(one step at a time, each in a fresh process forked from a preloaded forkserver; a success hook
records that process's own peak RSS, /proc VmHWM, into ``step-memory.jsonl``): the per-shard-step
memory. ``--dask`` also runs the same selection on a local dask cluster of 2 single-threaded worker
processes (fresh storage) and reports its wall time against the measured run's.

Text baseline, in the same process after the run: on ``--baseline-subset`` products drawn from the
run's ``product_text``, the fp32 torch reference (multilingual-e5-small, full 512 tokens) vs the
pipeline's own ``text_embeddings`` asset (its default resource and settings, empty cache), on the
products' encoder text as generated and with each description lengthened to the real catalogue's
~200 words.

Projection for the real catalogue (98,660 train + 29,928 test products): each stage's time scales
with the product count, except the text encoding, which is the real product count at the
pipeline's text rate measured on the ~200-word descriptions (generated descriptions are much
shorter, and any token budget or truncation of the text path is then measured, not assumed).
A second total shows the text stage if real Russian text has REFERENCE.md's ~2.3 tokens per word
rather than the generated vocabulary's rate.

Projection for 10 million products on K workers: the shard steps' seconds per product spread over K
workers, every other step (raw tables, cleaning, gathers, checks) in series on one, both linear in
products at the measured shard size (see `projection_many`).

Never passes or fails on a timing. Results: ``<out>/scale-<n>-<N>sh-<executor>.json`` and ``.md``.
"""

from .benchmark import run_benchmark
from .cli import main
from .memory import machine_info, process_peak_rss_mib
from .pipeline import run_pipeline, scale_benchmark_job
from .report import compare, step_rows, write_outputs
from .stages import (
    CHECKS_STAGE,
    REAL_DESCRIPTION_WORDS,
    REAL_PRODUCTS,
    SHARDED_STAGES,
    STAGES,
    TARGET_PRODUCTS_LARGE,
)
from .text_baseline import TextBudget, lengthen_descriptions, token_stats

__all__ = [
    "CHECKS_STAGE",
    "REAL_DESCRIPTION_WORDS",
    "REAL_PRODUCTS",
    "SHARDED_STAGES",
    "STAGES",
    "TARGET_PRODUCTS_LARGE",
    "TextBudget",
    "compare",
    "lengthen_descriptions",
    "machine_info",
    "main",
    "process_peak_rss_mib",
    "run_benchmark",
    "run_pipeline",
    "scale_benchmark_job",
    "step_rows",
    "token_stats",
    "write_outputs",
]
