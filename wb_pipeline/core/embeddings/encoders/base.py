"""The contract shared by every encoder (text and image) and small helpers they all need.

Pure: no dagster import. An encoder turns inputs into float32, L2-normalised vectors and
carries a ``fingerprint`` that changes whenever anything that changes the vectors changes
(weights, prompt, max tokens, resolution, channel order, ...). Embedding caches key on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Encoder",
    "TextEncoder",
    "l2_normalize",
    "config_fingerprint",
    "resolve_device",
    "canonical_json",
]


@runtime_checkable
class Encoder(Protocol):
    """Anything that produces fixed-size, L2-normalised float32 vectors.

    Attributes:
        fingerprint: sha256 hex of everything that changes the vectors; equal configs give
            equal fingerprints across processes and machines (see :func:`config_fingerprint`).
        dim: length of each output vector.
    """

    fingerprint: str
    dim: int


@runtime_checkable
class TextEncoder(Encoder, Protocol):
    """An :class:`Encoder` over strings."""

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Return float32 ``[len(texts), dim]``, rows L2-normalised, row i = ``texts[i]``."""
        ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Return ``x`` as float32 with every row scaled to unit L2 norm.

    Rows whose norm is zero (or not finite-positive) stay all-zero instead of becoming NaN:
    a zero vector means "no signal" and must not poison cosine similarities downstream.
    A 1-D input is treated as a single row and returned 1-D.

    Raises:
        ValueError: if ``x`` is not 1-D or 2-D.
    """
    array = np.asarray(x, dtype=np.float32)
    if array.ndim == 1:
        return l2_normalize(array[None, :])[0]
    if array.ndim != 2:
        raise ValueError(f"l2_normalize expects a 1-D or 2-D array, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    safe_norms = np.where(norms > 0, norms, 1.0).astype(np.float32)
    return (array / safe_norms).astype(np.float32, copy=False)


def canonical_json(value: Any) -> str:
    """Serialise ``value`` to JSON with sorted keys and no whitespace, so equal configs give equal text.

    Tuples become lists; non-JSON values (paths, enums, numpy scalars) are rendered with ``str``.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_fingerprint(kind: str, config: Mapping[str, Any], weights_id: str) -> str:
    """sha256 hex of the canonical JSON of ``{"kind", "config", "weights_id"}``.

    Args:
        kind: encoder family, e.g. ``"sentence-transformers"`` or ``"efficientnet-lite0"``.
        config: every setting that changes the vectors (prompt, max tokens, resolution, ...).
        weights_id: identity of the weights (a hub name + revision, or a hash of the files).
    """
    payload = {"kind": kind, "config": dict(config), "weights_id": weights_id}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def resolve_device(preference: str = "auto") -> str:
    """Map a device preference to a torch device string.

    ``"auto"`` gives ``"cuda"`` when torch sees a GPU, else ``"cpu"``. Any other value
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) is returned unchanged, so a user can force one.
    """
    if preference != "auto":
        return preference
    try:
        import torch
    except ImportError:  # torch-free encoders (e.g. USE via numpy) still work
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
