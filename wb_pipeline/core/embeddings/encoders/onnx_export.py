"""Export a torch module to ONNX once, cache the file atomically, and open it with onnxruntime.

Pure core (no dagster). Used by the image encoders (one input, one output, dynamic batch axis) and
the ONNX text encoder (several named inputs with dynamic batch and sequence axes, plus derived
files: a graph with fused transformer ops, an int8-quantised graph), all written atomically.

Why a cache: exporting takes seconds, loading an ``.onnx`` file takes milliseconds, and every
Dagster run (and every worker process) builds its encoder anew.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_OPSET",
    "atomic_output",
    "export_to_onnx",
    "cached_onnx_export",
    "cached_derived_file",
    "onnx_cache_path",
    "open_onnx_session",
    "OnnxFeatureRunner",
]

logger = logging.getLogger(__name__)

#: opset 17 is what the legacy (TorchScript-based) exporter handles well; ``dynamo=True`` would
#: need onnxscript, which is not a dependency.
DEFAULT_OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAME = "features"


@contextmanager
def atomic_output(destination: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success rename it into place.

    A killed writer never leaves a truncated file at ``destination``, and two concurrent writers
    of the same file both end with a complete one. On an exception the temporary file is removed.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{destination.stem}.", suffix=destination.suffix + ".tmp", dir=destination.parent
    )
    os.close(handle)
    try:
        yield Path(temp_name)
        os.replace(temp_name, destination)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def export_to_onnx(
    module: torch.nn.Module,  # noqa: F821 - torch is imported lazily
    example_input: torch.Tensor | tuple[torch.Tensor, ...],  # noqa: F821
    destination: Path,
    opset_version: int = DEFAULT_OPSET,
    *,
    input_names: Sequence[str] = (INPUT_NAME,),
    output_names: Sequence[str] = (OUTPUT_NAME,),
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Path:
    """Export ``module`` (eval mode) to ``destination`` atomically (see :func:`atomic_output`).

    The defaults fit a single-input, single-output feature extractor whose batch axis (dim 0) is
    dynamic. A multi-input model passes a tuple of example tensors, their ``input_names`` and its
    own ``dynamic_axes`` (e.g. batch and sequence axes of a text transformer).

    The module must be in the default (contiguous) memory format and must not have been
    converted to ``channels_last`` inside ``torch.inference_mode()`` (that breaks the exporter).
    """
    import torch

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if dynamic_axes is None:
        dynamic_axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    with atomic_output(Path(destination)) as temp_path:
        module.eval()
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns about strided Slice ops it cannot fold, and about
            # Python control flow it traces once (shape checks of attention masks): harmless here.
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                inputs,
                str(temp_path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
                opset_version=opset_version,
                dynamo=False,
                do_constant_folding=True,
            )
    return Path(destination)


def open_onnx_session(
    path: Path, num_threads: int | None = None, allow_spinning: bool = False
) -> onnxruntime.InferenceSession:  # noqa: F821
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


def onnx_cache_path(
    cache_key: str, file_stem: str, cache_dir: Path | None = None, opset_version: int = DEFAULT_OPSET
) -> Path:
    """Where :func:`cached_onnx_export` keeps the export of ``cache_key`` (the file may not exist yet)."""
    import torch

    if cache_dir is None:
        raise ValueError(
            f"{file_stem}: no folder for the ONNX export given (cache_dir); the pipeline's is "
            "`<models dir>/onnx` (core.data.storage.encoder_model_folder)"
        )
    folder = Path(cache_dir)
    digest = hashlib.sha256(f"{cache_key}|opset={opset_version}|torch={torch.__version__}".encode()).hexdigest()[:16]
    return folder / f"{file_stem}-{digest}.onnx"


def cached_onnx_export(
    cache_key: str,
    file_stem: str,
    build_module: Callable[[], tuple[torch.nn.Module, torch.Tensor]],  # noqa: F821
    cache_dir: Path | None = None,
    num_threads: int | None = None,
    opset_version: int = DEFAULT_OPSET,
    allow_spinning: bool = False,
    *,
    input_names: Sequence[str] = (INPUT_NAME,),
    output_names: Sequence[str] = (OUTPUT_NAME,),
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    open_session: bool = True,
) -> tuple[Path, onnxruntime.InferenceSession | None]:  # noqa: F821
    """Return ``(path, session)`` for a cached export, exporting first when needed.

    Args:
        cache_key: identity of everything that changes the graph (weights hash, input size,
            exporter version); hashed into the file name, so a changed key never reuses a file.
        file_stem: readable prefix of the file name, e.g. ``"efficientnet-lite0-r224"``.
        build_module: called only on a cache miss; returns ``(module, example_input)``, where
            ``example_input`` is one tensor or a tuple of tensors (one per input name).
        cache_dir: folder of exported files (required on export; the pipeline's: `<models dir>/onnx`).
        num_threads: onnxruntime intra-op threads.
        opset_version: ONNX opset.
        allow_spinning: see :func:`open_onnx_session`.
        input_names, output_names, dynamic_axes: see :func:`export_to_onnx`.
        open_session: False returns ``(path, None)`` (for callers that derive another file first);
            the cached file is then trusted if it exists and is non-empty.

    A cached file that onnxruntime cannot open (e.g. written by a foreign tool) is exported again.
    """
    path = onnx_cache_path(cache_key, file_stem, cache_dir, opset_version)
    if path.exists():
        if not open_session and path.stat().st_size > 0:
            return path, None
        try:
            return path, open_onnx_session(path, num_threads, allow_spinning) if open_session else None
        except Exception as error:  # a broken cache entry must not break the run
            logger.warning("cached ONNX file %s is unreadable (%s); exporting again", path, error)
    module, example_input = build_module()
    export_to_onnx(
        module,
        example_input,
        path,
        opset_version=opset_version,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic_axes,
    )
    logger.info("exported %s", path)
    return path, open_onnx_session(path, num_threads, allow_spinning) if open_session else None


def cached_derived_file(source: Path, tag: str, derive: Callable[[Path, Path], None]) -> Path:
    """``<source stem>-<tag>.onnx`` beside ``source``, built once by ``derive(source, temp_path)``.

    For files computed from an export (a graph with fused ops, a quantised graph): ``derive`` writes
    into a temporary path that is renamed into place only when it returns (see
    :func:`atomic_output`), so a killed build leaves no half-written file. The tag must name
    everything about the derivation that changes the result (e.g. ``"int8-qint8-perchannel"``).
    """
    source = Path(source)
    destination = source.with_name(f"{source.stem}-{tag}.onnx")
    if destination.exists() and destination.stat().st_size > 0:
        return destination
    with atomic_output(destination) as temp_path:
        derive(source, temp_path)
    logger.info("derived %s", destination)
    return destination


class OnnxFeatureRunner:
    """Runs a single-input, single-output ONNX session on float32 batches."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:  # noqa: F821
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Return the output for ``batch`` (float32, contiguous)."""
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([self.output_name], feed)[0]
