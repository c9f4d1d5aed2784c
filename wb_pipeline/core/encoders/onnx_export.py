"""Export a torch module to ONNX once, cache the file atomically, and open it with onnxruntime.

Pure core (no dagster). Used by the image encoders; generic enough for any single-input,
single-output feature extractor with a dynamic batch axis.

Why a cache: exporting takes seconds, loading an ``.onnx`` file takes milliseconds, and every
Dagster run (and every worker process) builds its encoder anew.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_OPSET",
    "default_cache_dir",
    "export_to_onnx",
    "cached_onnx_export",
    "open_onnx_session",
    "OnnxFeatureRunner",
]

logger = logging.getLogger(__name__)

#: opset 17 is what the legacy (TorchScript-based) exporter handles well; ``dynamo=True`` would
#: need onnxscript, which is not a dependency.
DEFAULT_OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAME = "features"


def default_cache_dir() -> Path:
    """Where exported models live unless told otherwise: `<storage dir>/models/onnx`, the same
    place the pipeline's resources use (`WB_PIPELINE_STORAGE_DIR`, default `storage/`)."""
    from wb_pipeline.settings import storage_dir

    return Path(storage_dir()) / "models" / "onnx"


def export_to_onnx(
    module: "torch.nn.Module",  # noqa: F821 - torch is imported lazily
    example_input: "torch.Tensor",  # noqa: F821
    destination: Path,
    opset_version: int = DEFAULT_OPSET,
) -> Path:
    """Export ``module`` (eval mode, one input, one output) to ``destination`` atomically.

    The graph is written to a temporary file in the destination folder and renamed into place,
    so a killed export never leaves a truncated ``.onnx`` behind and two concurrent exports of
    the same model both end with a valid file. The batch axis (dim 0) of the input and the
    output is dynamic.

    The module must be in the default (contiguous) memory format and must not have been
    converted to ``channels_last`` inside ``torch.inference_mode()`` (that breaks the exporter).
    """
    import torch

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{destination.stem}.", suffix=".onnx.tmp", dir=destination.parent
    )
    os.close(handle)
    try:
        module.eval()
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns about strided Slice ops it cannot fold: harmless.
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            torch.onnx.export(
                module,
                (example_input,),
                temp_name,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset_version,
                dynamo=False,
                do_constant_folding=True,
            )
        os.replace(temp_name, destination)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return destination


def open_onnx_session(
    path: Path, num_threads: int | None = None, allow_spinning: bool = False
) -> "onnxruntime.InferenceSession":  # noqa: F821
    """Open ``path`` with onnxruntime on the CPU.

    Args:
        path: an ``.onnx`` file.
        num_threads: intra-op threads; ``None`` lets onnxruntime use every core.
        allow_spinning: let idle intra-op threads busy-wait for work. Off by default: on a
            shared CPU, or with image decoding overlapped in other threads, spinning threads
            steal the cores the real work needs (measured ~2x slower there).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 0 if num_threads is None else int(num_threads)
    # One graph runs at a time; inter-op parallelism only adds thread contention here.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def cached_onnx_export(
    cache_key: str,
    file_stem: str,
    build_module: Callable[[], tuple["torch.nn.Module", "torch.Tensor"]],  # noqa: F821
    cache_dir: Path | None = None,
    num_threads: int | None = None,
    opset_version: int = DEFAULT_OPSET,
    allow_spinning: bool = False,
) -> tuple[Path, "onnxruntime.InferenceSession"]:  # noqa: F821
    """Return ``(path, session)`` for a cached export, exporting first when needed.

    Args:
        cache_key: identity of everything that changes the graph (weights hash, input size,
            exporter version); hashed into the file name, so a changed key never reuses a file.
        file_stem: readable prefix of the file name, e.g. ``"efficientnet-lite0-r224"``.
        build_module: called only on a cache miss; returns ``(module, example_input)``.
        cache_dir: folder of exported files (default :func:`default_cache_dir`).
        num_threads: onnxruntime intra-op threads.
        opset_version: ONNX opset.
        allow_spinning: see :func:`open_onnx_session`.

    A cached file that onnxruntime cannot open (e.g. written by a foreign tool) is exported again.
    """
    import torch

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(
        f"{cache_key}|opset={opset_version}|torch={torch.__version__}".encode()
    ).hexdigest()[:16]
    path = folder / f"{file_stem}-{digest}.onnx"
    if path.exists():
        try:
            return path, open_onnx_session(path, num_threads, allow_spinning)
        except Exception as error:  # a broken cache entry must not break the run
            logger.warning("cached ONNX file %s is unreadable (%s); exporting again", path, error)
    module, example_input = build_module()
    export_to_onnx(module, example_input, path, opset_version=opset_version)
    logger.info("exported %s", path)
    return path, open_onnx_session(path, num_threads, allow_spinning)


class OnnxFeatureRunner:
    """Runs a single-input, single-output ONNX session on float32 batches."""

    def __init__(self, session: "onnxruntime.InferenceSession") -> None:  # noqa: F821
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Return the output for ``batch`` (float32, contiguous)."""
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([self.output_name], feed)[0]
