"""Fault tolerance of the embedding stage, with real processes: a run SIGKILLed mid-embedding, and two
runs started at once on the same storage. The text encoder is a tiny random sentence-transformers
model (what is tested does not depend on the weights); the image encoder is the real default."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from wb_pipeline.definitions import build_definitions
from wb_pipeline.defs.embeddings.resources import TextEncoderResource

pytestmark = pytest.mark.slow

# resources, not op config: the chunk size is one setting for every shard step of the run
SMALL_CHUNKS = {
    "resources": {
        "text_embedding_settings": {"config": {"chunk_size": 8}},
        "image_embedding_settings": {"config": {"chunk_size": 8}},
    }
}

RUNNER = textwrap.dedent(
    """
    import sys, dagster as dg
    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.embeddings.resources import TextEncoderResource
    raw, storage, models, text_model = sys.argv[1:5]
    defs = build_definitions(raw_dir=raw, storage_dir=storage, incoming_dir=storage + "/incoming", models_dir=models,
                             text_encoder=TextEncoderResource(model=text_model, max_seq_length=32, cache_dir=models),
                             n_shards=4)
    run_config = {"resources": {"text_embedding_settings": {"config": {"chunk_size": 8}},
                                "image_embedding_settings": {"config": {"chunk_size": 8}}}}
    with dg.DagsterInstance.get() as instance:
        job = defs.resolve_job_def("reembed_new_products")
        result = job.execute_in_process(instance=instance, run_config=run_config)
    sys.exit(0 if result.success else 1)
    """
)


def _start(tmp_path: Path, name: str, raw: Path, storage: Path, models: Path, text_model: Path) -> subprocess.Popen:
    home = tmp_path / f"home-{name}"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    command = [sys.executable, "-c", RUNNER, str(raw), str(storage), str(models), str(text_model)]
    # the run's log goes to a file: a pipe nobody reads until the end fills up and blocks the run
    with (tmp_path / f"run-{name}.log").open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    process.log_path = tmp_path / f"run-{name}.log"
    return process


def _log_tail(process: subprocess.Popen, chars: int = 3000) -> str:
    return process.log_path.read_text(errors="replace")[-chars:]


def _shards(storage: Path) -> list[Path]:
    """Finished embedding-cache chunks (of any product shard)."""
    return [
        p
        for stage in ("text_embeddings", "image_embeddings")
        for p in (storage / "cache" / stage).rglob("*.parquet")
        if not p.name.startswith(".")
    ]


def _finish(defs, instance):
    result = defs.resolve_job_def("reembed_new_products").execute_in_process(instance=instance, run_config=SMALL_CHUNKS)
    assert result.success
    meta = {}
    for key in ("text_embeddings", "image_embeddings"):
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        meta[key] = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return meta


def _assert_complete(defs, instance):
    clean = defs.load_asset_value("clean_products", instance=instance)
    for key in ("text_embeddings", "image_embeddings"):
        table = defs.load_asset_value(key, instance=instance)
        assert list(table.nm) == list(clean["nm"])  # no partial, missing or duplicated rows
        np.testing.assert_allclose(np.linalg.norm(table.vectors, axis=1), 1.0, atol=1e-4)


def _definitions(tmp_path, raw, storage, models, text_model):
    return build_definitions(
        raw_dir=str(raw),
        storage_dir=str(storage),
        incoming_dir=str(storage / "incoming"),
        models_dir=str(models),
        text_encoder=TextEncoderResource(model=str(text_model), max_seq_length=32, cache_dir=str(models)),
        n_shards=4,  # a fixed count: the small sample alone would be one shard
    )


def test_sigkill_mid_embedding_then_resume_reuses_finished_chunks(
    tmp_path, small_sample_dir, shared_models_dir, tiny_st_folder, instance
):
    storage = tmp_path / "storage"
    process = _start(tmp_path, "killed", small_sample_dir, storage, shared_models_dir, tiny_st_folder)
    deadline = time.monotonic() + 300
    while len(_shards(storage)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, f"run ended before it could be killed: {_log_tail(process, 2000)}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_chunks = len(_shards(storage))
    assert finished_chunks >= 3
    # a shard being written at the kill may leave a hidden temp file; readers never look at those
    defs = _definitions(tmp_path, small_sample_dir, storage, shared_models_dir, tiny_st_folder)
    meta = _finish(defs, instance)
    reused = meta["text_embeddings"]["from_cache"] + meta["image_embeddings"]["from_cache"]
    assert reused >= 8 * finished_chunks - 8  # every finished chunk was reused, not embedded again
    _assert_complete(defs, instance)


def test_two_runs_at_once_leave_a_consistent_cache_and_tables(
    tmp_path, small_sample_dir, shared_models_dir, tiny_st_folder, instance
):
    storage = tmp_path / "storage"
    runs = [_start(tmp_path, name, small_sample_dir, storage, shared_models_dir, tiny_st_folder) for name in ("a", "b")]
    for run in runs:
        assert run.wait(timeout=600) == 0, _log_tail(run)
    defs = _definitions(tmp_path, small_sample_dir, storage, shared_models_dir, tiny_st_folder)
    meta = _finish(defs, instance)
    assert meta["text_embeddings"]["embedded_now"] == 0 and meta["image_embeddings"]["embedded_now"] == 0
    _assert_complete(defs, instance)


def reembed_job(raw: str, storage: str, models: str, text_model: str) -> dg.JobDefinition:
    """`reembed_new_products` as a reconstructable job (re-execution from failure rebuilds it)."""
    return _definitions(None, Path(raw), Path(storage), Path(models), Path(text_model)).resolve_job_def(
        "reembed_new_products"
    )


def _executed_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    return {r.event_log_entry.step_key for r in records}


def test_a_corrupt_shard_fails_alone_and_a_retry_reruns_only_that_shard(
    tmp_path, small_sample_dir, shared_models_dir, tiny_st_folder, instance
):
    storage = tmp_path / "storage"
    job = dg.build_reconstructable_job(
        __name__,
        reembed_job.__name__,
        reconstructable_kwargs=dict(
            raw=str(small_sample_dir),
            storage=str(storage),
            models=str(shared_models_dir),
            text_model=str(tiny_st_folder),
        ),
    )
    in_process = {"execution": {"config": {"in_process": {}}}, **SMALL_CHUNKS}
    with dg.execute_job(job, instance=instance, run_config=in_process) as first:
        assert first.success
    chunks = sorted((storage / "cache" / "text_embeddings").rglob("*.parquet"))
    corrupt = next(path for path in chunks if "/01/" in str(path))  # a finished chunk of shard 01
    corrupt.write_bytes(b"not a parquet file")

    with dg.execute_job(job, instance=instance, run_config=in_process, raise_on_error=False) as broken:
        assert not broken.success
        failures = [e for e in broken.all_events if e.event_type_value == "STEP_FAILURE"]
        assert [e.step_key for e in failures] == ["text_embeddings.text_embeddings_shard[01]"]  # it fails alone ...
        assert str(corrupt) in failures[0].step_failure_data.error.to_string()  # ... naming the file
        landed = {e.step_key for e in broken.all_events if e.event_type_value == "STEP_SUCCESS"}
        assert {
            "text_embeddings.text_embeddings_shard[00]",
            "text_embeddings.text_embeddings_shard[02]",
            "text_embeddings.text_embeddings_shard[03]",
            "image_embeddings.image_embeddings_shard[01]",
        } <= landed  # ... while the other shards land
        broken_run = broken.run_id

    corrupt.unlink()  # what the error says to do
    options = dg.ReexecutionOptions.from_failure(broken_run, instance)
    with dg.execute_job(job, instance=instance, run_config=in_process, reexecution_options=options) as retry:
        assert retry.success
        rerun = _executed_steps(instance, retry.run_id)
    # only the failed shard (the shard list is reused, not listed again), then the stage's gather
    assert {key for key in rerun if key.startswith(("text_embeddings.", "image_embeddings."))} == {
        "text_embeddings.text_embeddings_shard[01]",
        "text_embeddings.text_embeddings_gather",
    }
    defs = _definitions(tmp_path, small_sample_dir, storage, shared_models_dir, tiny_st_folder)
    _assert_complete(defs, instance)
