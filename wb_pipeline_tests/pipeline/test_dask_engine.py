"""The whole `full_pipeline` on a real dask.distributed cluster: a `dask scheduler` and two `dask worker`
processes started here as separate OS processes on 127.0.0.1, the job launched with `dg.execute_job`
against the scheduler's address. Checks that the steps ran in the worker processes, that the outputs
went through the storage dir, and that they equal an in-process run's on the same data and config.

The workers get the data folders the documented way, from `WB_PIPELINE_*` environment variables (they
rebuild the job by calling `full_pipeline_on_dask()` with no arguments); the tiny random text model
and the shared models folder come through the run config's `resources` section. Image encoder: the
real default (EfficientNet-Lite0, onnxruntime)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from dask.distributed import Client

from wb_pipeline import settings
from wb_pipeline.core.data.storage import arrow_to_frame
from wb_pipeline.core.embeddings.vectors import EmbeddingTable, is_embedding_table
from wb_pipeline.definitions import build_definitions
from wb_pipeline.engines import dask_run_config, full_pipeline_on_dask, reconstructable_full_pipeline_on_dask

pytestmark = pytest.mark.slow

N_WORKERS = 2
N_SHARDS = 4
STARTUP_TIMEOUT_S = 120
# Groups whose outputs are compared with the in-process run (the reference run materializes only these)
COMPARED_GROUPS = ("ingestion", "preprocessing", "labels", "embeddings")


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture()
def dask_cluster(tmp_path):
    """A dask scheduler (OS-chosen free port, address from its scheduler file) and two single-threaded
    workers, each its own `python -m dask worker` process; yields the address and the workers' env."""
    folder = tmp_path / "dask"
    folder.mkdir()
    scheduler_file = folder / "scheduler.json"
    env = {
        **os.environ,
        settings.RAW_DIR_ENV: str(tmp_path / "unset-raw"),  # replaced by the test before workers start
        # steps may start processes of their own: dask's daemonic workers could not
        "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
    }
    processes: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(name: str, args: list[str], process_env: dict) -> None:
        log = folder / f"{name}.log"
        logs.append(log)
        with log.open("w") as handle:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dask", *args],
                    env=process_env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                )
            )

    def launch(worker_env: dict) -> str:
        start(
            "scheduler",
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            env,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not scheduler_file.exists() and time.monotonic() < deadline:
            assert processes[0].poll() is None, f"dask scheduler exited: {_tail(logs[0])}"
            time.sleep(0.2)
        assert scheduler_file.exists(), f"dask scheduler did not start: {_tail(logs[0])}"
        for index in range(N_WORKERS):
            start(
                f"worker-{index}",
                [
                    "worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--host",
                    "127.0.0.1",
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--name",
                    f"wb-worker-{index}",
                    "--local-directory",
                    str(folder / f"w{index}"),
                ],
                {**env, **worker_env},
            )
        return json.loads(scheduler_file.read_text())["address"]

    try:
        yield launch
    finally:
        for process in reversed(processes):  # workers first, then the scheduler
            _stop(process)
        for log in logs:
            if log.exists():
                print(f"--- {log.name} (tail) ---\n{_tail(log, 1500)}")


def _run_config(text_model: Path, models_dir: Path) -> dict:
    return {
        "resources": {
            "text_encoder": {"config": {"model": str(text_model), "max_seq_length": 32, "cache_dir": str(models_dir)}},
            "image_encoder": {"config": {"cache_dir": str(models_dir)}},
        }
    }


def _step_pids(instance: dg.DagsterInstance, run_id: str) -> dict[str, int]:
    """step key -> pid of the process that emitted its STEP_START event (the event log's own record)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    return {r.event_log_entry.step_key: r.event_log_entry.dagster_event.pid for r in records}


def _read_output(storage: Path, key: dg.AssetKey):
    """An asset's file as the storage IO manager wrote it: a DataFrame (in catalogue order, also when
    it is stored grouped by shard) or an EmbeddingTable."""
    table = pq.read_table(storage / "assets" / f"{key.to_python_identifier()}.parquet")
    return EmbeddingTable.from_arrow(table) if is_embedding_table(table) else arrow_to_frame(table)


def _step_times(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """step key -> (start, end) timestamps from the run's STEP_START / STEP_SUCCESS events."""
    starts = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    ends = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records
    end = {r.event_log_entry.step_key: r.event_log_entry.timestamp for r in ends}
    return {
        r.event_log_entry.step_key: (r.event_log_entry.timestamp, end[r.event_log_entry.step_key])
        for r in starts
        if r.event_log_entry.step_key in end
    }


def _compare_outputs(storage: Path, reference_storage: Path, keys) -> int:
    """Every compared asset file equals the in-process run's; returns how many vectors were compared."""
    compared_vectors = 0
    for key in keys:
        got, expected = _read_output(storage, key), _read_output(reference_storage, key)
        assert type(got) is type(expected), key
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(got, expected, obj=key.to_user_string())
        else:  # an EmbeddingTable: same products in the same order, bit-identical vectors (same encoders,
            # same CPU, same thread counts: nothing in the maths depends on which process ran it)
            assert list(got.nm) == list(expected.nm), key
            assert got.vectors.dtype == expected.vectors.dtype == np.float32
            np.testing.assert_array_equal(got.vectors, expected.vectors, err_msg=str(key))
            compared_vectors += len(got.nm)
    return compared_vectors


def test_full_pipeline_runs_on_a_dask_cluster_like_in_process(
    dask_cluster, tmp_path, small_sample_dir, shared_models_dir, tiny_st_folder, monkeypatch
):
    storage, incoming = tmp_path / "storage-dask", tmp_path / "incoming"
    folders = {
        settings.RAW_DIR_ENV: str(small_sample_dir),
        settings.STORAGE_DIR_ENV: str(storage),
        settings.INCOMING_DIR_ENV: str(incoming),
        settings.SHARDS_ENV: str(N_SHARDS),
    }
    for name, value in folders.items():
        monkeypatch.setenv(name, value)  # the orchestrating (test) process plans from the same folders
    address = dask_cluster(folders)
    run_config = _run_config(tiny_st_folder, shared_models_dir)

    with Client(address, timeout=STARTUP_TIMEOUT_S) as client:
        client.wait_for_workers(N_WORKERS, timeout=STARTUP_TIMEOUT_S)
        worker_pids = set(client.run(os.getpid).values())  # dask's own answer: the worker processes
    assert len(worker_pids) == N_WORKERS and os.getpid() not in worker_pids

    (tmp_path / "home").mkdir()
    started = time.time()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert instance.is_persistent  # the workers open the same instance from its ref
        with dg.execute_job(
            reconstructable_full_pipeline_on_dask(),
            instance=instance,
            run_config=dask_run_config(address, run_config),
            raise_on_error=False,
        ) as result:
            assert result.success, [e.message for e in result.all_events if e.is_failure][:5]
            run_id = result.run_id
            failed_errors = [
                e.check_name
                for e in result.get_asset_check_evaluations()
                if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
            ]
            assert failed_errors == []
        dask_seconds = time.time() - started

        step_pids = _step_pids(instance, run_id)
        run = instance.get_run_by_id(run_id)
        planned_steps = {
            step.key for step in instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id).steps
        }
        # every planned step started, and each sharded stage's one mapped step as one step per shard
        static_steps = {key for key in planned_steps if not key.endswith("[?]")}
        assert static_steps <= set(step_pids), static_steps - set(step_pids)
        assert {key.split("[")[0] for key in set(step_pids) - static_steps} == {
            key.split("[")[0] for key in planned_steps - static_steps
        }
        assert set(step_pids.values()) <= worker_pids, step_pids  # every step ran in a dask worker process
        assert os.getpid() not in step_pids.values()
        assert len(set(step_pids.values())) == N_WORKERS  # and the steps were spread over both workers
        # the shard steps of one stage split over both workers, two of them running at the same time
        shard_steps = {key: pid for key, pid in step_pids.items() if "_shard[" in key}
        mapped_steps = planned_steps - static_steps  # one `<stage>.<stage>_shard[?]` per sharded stage
        assert len(shard_steps) == len(mapped_steps) * N_SHARDS and len(set(shard_steps.values())) == N_WORKERS
        times = sorted(span for key, span in _step_times(instance, run_id).items() if key in shard_steps)
        assert any(later[0] < earlier[1] for earlier, later in zip(times, times[1:])), times

        # outputs travelled through the storage dir, one parquet file per asset written during this run
        asset_keys = full_pipeline_on_dask().asset_layer.executable_asset_keys
        for key in asset_keys:
            assert instance.get_latest_materialization_event(key).run_id == run_id
            path = storage / "assets" / f"{key.to_python_identifier()}.parquet"
            assert path.exists() and path.stat().st_mtime >= started - 1, path
        assert any((storage / "cache").rglob("*.parquet"))  # the embedding caches too

    # the same data and config in process and unsharded (one shard), into a separate storage dir: every
    # output bit-identical, so neither the executor nor the shard count changes a value (the int8 text
    # engine embeds one text per forward pass, so a vector does not depend on which other texts share
    # its shard). One reference, not one per shard count: a difference at either fails the same check.
    clean_products = pd.read_parquet(storage / "assets" / "clean_products.parquet")
    for n_shards in (1,):
        name = f"ref-{n_shards}"
        (tmp_path / f"home-{name}").mkdir()
        reference_defs = build_definitions(
            raw_dir=str(small_sample_dir),
            storage_dir=str(tmp_path / f"storage-{name}"),
            incoming_dir=str(incoming),
            n_shards=n_shards,
        )
        with dg.instance_for_test(temp_dir=str(tmp_path / f"home-{name}")) as reference_instance:
            planned = dg.AssetSelection.groups(*COMPARED_GROUPS).resolve(reference_defs.resolve_asset_graph())
            compared = sorted(planned)
            assert (
                len(compared) >= 8
            )  # raw tables, image index, clean/rejected, text, characteristics, labels, embeddings
            reference_started = time.time()
            reference = reference_defs.resolve_job_def("full_pipeline").execute_in_process(
                run_config=run_config, instance=reference_instance, asset_selection=sorted(planned)
            )
            assert reference.success
            reference_seconds = time.time() - reference_started
        compared_vectors = _compare_outputs(storage, tmp_path / f"storage-{name}", compared)
        assert compared_vectors == 2 * len(clean_products) > 0  # both embedding tables were compared
        print(
            f"dask run {dask_seconds:.1f} s ({len(step_pids)} steps on {len(set(step_pids.values()))} workers), "
            f"in-process reference with {n_shards} shard(s) {reference_seconds:.1f} s; {len(compared)} assets equal, "
            f"{compared_vectors} vectors bit-identical"
        )
