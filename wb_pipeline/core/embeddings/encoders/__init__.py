"""Encoders: text and image models that turn products into L2-normalised float32 vectors.

Pure core (no dagster). ``base`` holds the shared contract; ``text`` and ``image`` the backends.
Backends import heavy libraries lazily, so importing this package stays cheap.
"""

from wb_pipeline.core.embeddings.encoders.base import (
    Encoder,
    TextEncoder,
    canonical_json,
    config_fingerprint,
    l2_normalize,
    resolve_device,
)

__all__ = [
    "Encoder",
    "TextEncoder",
    "canonical_json",
    "config_fingerprint",
    "l2_normalize",
    "resolve_device",
]
