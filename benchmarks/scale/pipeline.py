"""Running the real assets for the scale benchmark: the generated dataset, the benchmark's job over the
ingestion, preprocessing and embeddings groups (in-process, multiprocess or on a local dask cluster)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .memory import RssSampler, read_step_memory, rss_mib, step_memory_hook
from .stages import (
    BENCH_DIR,
    DASK_WORKERS,
    EXECUTORS,
    JOB_NAME,
    SELECTED_GROUPS,
    STEP_MEMORY_FILE,
    expected_assets,
)


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


def _step_output_metadata(instance, run_id: str) -> dict[str, dict[str, Any]]:
    """step key -> the metadata of its output (a shard step reports its rows and figures there)."""
    import dagster as dg

    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT, limit=100_000).records
    found = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        found[event.step_key] = {k: v.value for k, v in event.step_output_data.metadata.items()}
    return found


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
    metadata: dict[str, dict[str, Any]]  # asset -> materialization metadata; shard step key -> output metadata
    rss_peak_mib: float  # this process and its children (multiprocess: + forkserver + step process; dask: + cluster)
    rss_before_mib: float  # after loading the encoders, before the run
    rss_after_mib: float
    warm_up_s: dict[str, float]
    storage_bytes: int
    product_text: pd.DataFrame | None = field(repr=False, default=None)
    # multiprocess only: step key -> peak RSS of the step's own process (see `record_step_memory`)
    step_memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    cluster_start_s: float | None = None  # dask only: starting the local cluster (not in run_wall_s)


FORKSERVER_PRELOAD = (
    "dagster._core.executor.multiprocess",
    "torch",
    "onnxruntime",
    "wb_pipeline.definitions",
    "benchmarks.scale.pipeline",
)


def benchmark_definitions(parameters: dict[str, Any]):
    """The pipeline's Definitions over the given folders, encoder configs and shard count, plus the
    benchmark's job: the ingestion, preprocessing and embeddings groups (every stage's shard steps and
    gathers, and their checks) on the chosen executor (`parameters["executor"]`)."""
    import dagster as dg

    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.embeddings.resources import (
        ImageEncoderResource,
        TextEncoderResource,
    )

    defs = build_definitions(
        raw_dir=parameters["raw_dir"],
        storage_dir=parameters["storage_dir"],
        incoming_dir=parameters["incoming_dir"],
        models_dir=parameters["models_dir"],
        text_encoder=TextEncoderResource(**parameters["text_encoder"]),
        image_encoder=ImageEncoderResource(**parameters["image_encoder"]),
        n_shards=parameters["n_shards"],
    )
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
            {"max_concurrent": 1, "start_method": {"forkserver": {"preload_modules": list(FORKSERVER_PRELOAD)}}}
        )
        hooks = {step_memory_hook(parameters["step_memory_log"])}
    elif executor == "dask":
        from wb_pipeline.engines import pool_safe_dask_executor

        executor_def = pool_safe_dask_executor
    else:
        raise ValueError(f"executor {executor!r}: expected one of {EXECUTORS}")
    job = dg.define_asset_job(
        JOB_NAME, selection=dg.AssetSelection.groups(*SELECTED_GROUPS), executor_def=executor_def, hooks=hooks
    )
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

    return dg.build_reconstructable_job(
        __spec__.name if __spec__ else "benchmarks.scale.pipeline",
        "scale_benchmark_job",
        reconstructable_kwargs={"parameters_json": json.dumps(parameters)},
        reconstructor_working_directory=str(BENCH_DIR.parent),
    )


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
            self.cluster = LocalCluster(
                n_workers=self.n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                memory_limit=0,
                host="127.0.0.1",
            )
        self.start_s = time.perf_counter() - started
        return self

    @property
    def address(self) -> str:
        return self.cluster.scheduler_address

    def __exit__(self, *exc: object) -> None:
        self.cluster.close()


def resolved_shard_count(raw_dir: Path | str, n_shards: int | None) -> int:
    """`n_shards`, else the pipeline's own choice for this raw folder: a fixed `WB_PIPELINE_SHARDS`, or
    the power of two that keeps `WB_PIPELINE_PRODUCTS_PER_SHARD` products in a shard."""
    from wb_pipeline import settings
    from wb_pipeline.core.data import schema, storage

    if n_shards:
        return n_shards
    products = sum(
        storage.parquet_rows(storage.as_upath(Path(raw_dir) / name))
        for name in (schema.TRAIN_FILE, schema.TEST_FILE)
        if (Path(raw_dir) / name).exists()
    )
    return settings.n_shards() or storage.shard_count(products, settings.products_per_shard())


def run_pipeline(
    raw_dir: Path,
    work_dir: Path,
    models_dir: Path,
    *,
    text_encoder=None,
    image_encoder=None,
    log_level: str = "WARNING",
    n_shards: int | None = None,
    executor: str = "in_process",
    load_product_text: bool = True,
) -> PipelineRun:
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

    from wb_pipeline.defs.embeddings.resources import (
        ImageEncoderResource,
        TextEncoderResource,
    )

    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r}: expected one of {EXECUTORS}")
    n_shards = resolved_shard_count(raw_dir, n_shards)
    text_encoder = text_encoder or TextEncoderResource(cache_dir=str(models_dir))
    image_encoder = image_encoder or ImageEncoderResource(cache_dir=str(models_dir))
    warm_up = _warm_up(text_encoder, image_encoder)
    work_dir.mkdir(parents=True, exist_ok=True)
    storage_dir, incoming_dir = work_dir / "storage", work_dir / "incoming"
    incoming_dir.mkdir(parents=True, exist_ok=True)
    memory_log = work_dir / STEP_MEMORY_FILE
    memory_log.unlink(missing_ok=True)
    parameters = {
        "raw_dir": str(raw_dir),
        "storage_dir": str(storage_dir),
        "incoming_dir": str(incoming_dir),
        "models_dir": str(models_dir),
        "text_encoder": text_encoder.model_dump(),
        "image_encoder": image_encoder.model_dump(),
        "n_shards": n_shards,
        "executor": executor,
        "step_memory_log": str(memory_log),
    }
    defs = benchmark_definitions(parameters)
    planned = {key.to_user_string() for key in defs.resolve_job_def(JOB_NAME).asset_layer.executable_asset_keys}
    if planned != expected_assets():
        raise RuntimeError(
            f"the benchmark job selects {sorted(planned ^ expected_assets())} "
            "beyond / short of the stages: update STAGES"
        )
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
            with dg.execute_job(
                reconstructable_job(parameters), instance, run_config=run_config, raise_on_error=False
            ) as result:
                run_wall = time.perf_counter() - started
                success, run_id = result.success, result.run_id
                failures = [e.message for e in result.all_events if e.is_failure]
        if not success:
            raise RuntimeError(f"the benchmark run ({executor}) failed: {failures[:3]}")
        steps = {}
        for stat in instance.get_run_step_stats(run_id):
            if stat.start_time is None or stat.end_time is None:
                continue
            steps[stat.step_key] = {
                "start": stat.start_time,
                "end": stat.end_time,
                "seconds": stat.end_time - stat.start_time,
                "peak_rss_mib": sampler.peak_between(stat.start_time, stat.end_time),
            }
        step_memory = read_step_memory(memory_log) if executor == "multiprocess" else {}
        if executor == "multiprocess":
            missing = set(steps) - set(step_memory)
            if missing:
                raise RuntimeError(f"no memory record from steps {sorted(missing)}")
            for key, step in steps.items():  # the step's own process, not this one's + the child's
                step["peak_rss_mib"] = step_memory[key]["vm_hwm_mib"]
        metadata = {asset: _metadata(instance, asset) for asset in sorted(expected_assets())}
        metadata.update(_step_output_metadata(instance, run_id))  # the shard steps' rows and figures
        rss_after_run = rss_mib()
        product_text = defs.load_asset_value("product_text", instance=instance) if load_product_text else None
    storage_bytes = sum(p.stat().st_size for p in storage_dir.rglob("*") if p.is_file())
    return PipelineRun(
        run_wall_s=run_wall,
        success=success,
        executor=executor,
        n_shards=n_shards,
        steps=steps,
        metadata=metadata,
        rss_peak_mib=sampler.peak(),
        rss_before_mib=sampler.samples[0][1],
        rss_after_mib=rss_after_run,
        warm_up_s=warm_up,
        storage_bytes=storage_bytes,
        product_text=product_text,
        step_memory=step_memory,
        cluster_start_s=cluster.start_s if cluster is not None else None,
    )
