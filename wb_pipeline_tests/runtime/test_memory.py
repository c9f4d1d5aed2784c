"""A run's memory: one-time model builds in their own processes (the same files as in process, and the
caller never holds the builders' memory), and freed memory handed back to the OS after each step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wb_pipeline.core.embeddings.encoders import text_onnx
from wb_pipeline.core.embeddings.encoders.text_onnx import OnnxTextEncoder
from wb_pipeline.core.runtime import memory

TEXTS = ["платье женское летнее", "ботинки", "набор посуды для кухни из 12 предметов"]


def test_run_isolated_returns_the_result_from_another_process_and_raises_its_errors():
    assert memory.run_isolated(os.getpid) != os.getpid()
    assert memory.run_isolated(json.loads, '{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(json.JSONDecodeError) as raised:
        memory.run_isolated(json.loads, "{broken")
    assert any("separate process" in note for note in raised.value.__notes__)


def test_run_isolated_works_from_a_script_without_a_main_guard(tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(
        "import os\nfrom wb_pipeline.core.runtime.memory import run_isolated\n"
        "print(run_isolated(os.getpid) != os.getpid())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


RELEASE_PROBE = """
from wb_pipeline.core.runtime import memory

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

before = rss_mib()
cycle = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MiB of heap blocks, below mmap's threshold
cycle.append(cycle)
del cycle  # unreachable, but a cycle: freed only by the collector
held = rss_mib()
memory.release_free_memory()
print(held - before, held - rss_mib())
"""


def test_release_free_memory_returns_what_a_reference_cycle_held():
    # In a fresh interpreter: a long test process has free heap of its own to reuse, which would hide the growth.
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    grown, released = (float(value) for value in done.stdout.split())
    assert grown > 150
    assert released > 150


def test_the_graph_built_stage_by_stage_in_other_processes_is_the_same_file(tiny_st_folder, tmp_path, monkeypatch):
    """The tiny test model builds in process; forced through the isolated path (as multilingual-e5-small
    is), export, fusion and int8 each run in a fresh process and give byte-identical files and vectors."""
    in_process = OnnxTextEncoder(tiny_st_folder, max_seq_length=32, cache_dir=tmp_path / "here", num_threads=1)
    assert not in_process._isolated()
    reference = in_process.encode(TEXTS)
    calls = []
    real = memory.run_isolated

    def counting(function, *args, **kwargs):
        calls.append(function.__name__)
        return real(function, *args, **kwargs)

    monkeypatch.setattr(text_onnx, "run_isolated", counting)
    monkeypatch.setattr(text_onnx, "ISOLATE_ABOVE_BYTES", 0)
    isolated = OnnxTextEncoder(tiny_st_folder, max_seq_length=32, cache_dir=tmp_path / "there", num_threads=1)
    vectors = isolated.encode(TEXTS)
    assert calls == ["_export_graph", "fuse_bert_graph", "_quantize_int8"]
    assert isolated.onnx_path.name == in_process.onnx_path.name
    assert isolated.onnx_path.read_bytes() == in_process.onnx_path.read_bytes()
    np.testing.assert_array_equal(vectors, reference)


def test_fusion_with_the_weights_aside_writes_what_the_optimizer_writes(tiny_st_folder, tmp_path):
    from onnxruntime.transformers.optimizer import optimize_model

    encoder = OnnxTextEncoder(
        tiny_st_folder, max_seq_length=32, cache_dir=tmp_path, num_threads=1, quantization="none", fuse=False
    )
    encoder.encode(TEXTS)  # the plain export
    layout = encoder.layout
    optimized = optimize_model(
        str(encoder.onnx_path),
        model_type="bert",
        num_heads=layout.num_heads,
        hidden_size=layout.hidden_size,
        opt_level=0,
    )
    optimized.save_model_to_file(str(tmp_path / "optimizer.onnx"))
    working_dir = os.getcwd()
    text_onnx.fuse_bert_graph(encoder.onnx_path, tmp_path / "aside.onnx", layout.num_heads, layout.hidden_size)
    assert os.getcwd() == working_dir
    assert (tmp_path / "aside.onnx").read_bytes() == (tmp_path / "optimizer.onnx").read_bytes()
    assert b"SkipLayerNormalization" in (tmp_path / "aside.onnx").read_bytes()  # it did fuse


def test_every_job_releases_memory_after_each_step():
    from wb_pipeline.defs.automation import jobs
    from wb_pipeline.defs.progress import release_memory_after_step

    for job in (
        jobs.full_pipeline,
        jobs.reembed_new_products,
        jobs.predict_new_drops,
        jobs.retrain_models,
        jobs.refresh_search_index,
    ):
        assert release_memory_after_step in job.hooks, job.name


def test_fold_worker_processes_do_not_import_torch():
    """Each fold-parallel worker imports `core.models.classification` to run its folds; torch there would cost
    ~0.6 GB per worker process (two beside the run's process in `label_classifiers`)."""
    code = (
        "import sys\nimport wb_pipeline.core.models.classification, wb_pipeline.core.models.fusion\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
