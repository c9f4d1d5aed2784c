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

SMALL_CHUNKS = {"ops": {"text_embeddings": {"config": {"chunk_size": 8}},
                        "image_embeddings": {"config": {"chunk_size": 8}}}}

RUNNER = textwrap.dedent(
    """
    import sys, dagster as dg
    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.embeddings.resources import TextEncoderResource
    raw, storage, models, text_model = sys.argv[1:5]
    defs = build_definitions(raw_dir=raw, storage_dir=storage, incoming_dir=storage + "/incoming", models_dir=models,
                             text_encoder=TextEncoderResource(model=text_model, max_seq_length=32, cache_dir=models))
    run_config = {"ops": {"text_embeddings": {"config": {"chunk_size": 8}},
                          "image_embeddings": {"config": {"chunk_size": 8}}}}
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("reembed_new_products").execute_in_process(instance=instance, run_config=run_config)
    sys.exit(0 if result.success else 1)
    """
)


def _start(tmp_path: Path, name: str, raw: Path, storage: Path, models: Path, text_model: Path) -> subprocess.Popen:
    home = tmp_path / f"home-{name}"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    command = [sys.executable, "-c", RUNNER, str(raw), str(storage), str(models), str(text_model)]
    return subprocess.Popen(command, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _shards(storage: Path) -> list[Path]:
    return [p for p in (storage / "cache").rglob("*.parquet") if not p.name.startswith(".")]


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
        raw_dir=str(raw), storage_dir=str(storage), incoming_dir=str(storage / "incoming"), models_dir=str(models),
        text_encoder=TextEncoderResource(model=str(text_model), max_seq_length=32, cache_dir=str(models)),
    )


def test_sigkill_mid_embedding_then_resume_reuses_finished_chunks(
    tmp_path, small_sample_dir, shared_models_dir, tiny_st_folder, instance
):
    storage = tmp_path / "storage"
    process = _start(tmp_path, "killed", small_sample_dir, storage, shared_models_dir, tiny_st_folder)
    deadline = time.monotonic() + 300
    while len(_shards(storage)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, f"run ended before it could be killed: {process.stderr.read()[-2000:]}"
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
        assert run.wait(timeout=600) == 0, run.stderr.read()[-3000:]
    defs = _definitions(tmp_path, small_sample_dir, storage, shared_models_dir, tiny_st_folder)
    meta = _finish(defs, instance)
    assert meta["text_embeddings"]["embedded_now"] == 0 and meta["image_embeddings"]["embedded_now"] == 0
    _assert_complete(defs, instance)
