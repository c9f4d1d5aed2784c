"""Text and image queries against a saved index build.

`Searcher` turns a text (through the text encoder with its QUERY prompt, then the joint model's
text head) or a photo (image encoder, then the image head) into a vector of the index's space and
returns the top products. Every bad input is a `QueryError` with a message a person can act on:
an empty text, a file that is missing or not an image, a modality the space cannot take.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wb_pipeline.core import images
from wb_pipeline.core.search.spaces import QueryError, query_vector, uses_joint_model
from wb_pipeline.core.search.store import IndexBuild


def clean_query_text(text: str | None) -> str:
    """The query with surrounding whitespace removed; QueryError when nothing is left."""
    cleaned = " ".join(str(text or "").split())
    if not cleaned:
        raise QueryError("empty text query: give some words to search for (or --image PATH for a photo)")
    return cleaned


def read_image_file(path: str | os.PathLike, config: images.ImageConfig = images.ImageConfig(),
                    min_side: int | None = None):
    """The photo at `path` decoded to RGB; QueryError naming the file and the reason otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise QueryError(f"cannot read image {path}: no such file") from None
    except IsADirectoryError:
        raise QueryError(f"cannot read image {path}: it is a folder") from None
    except OSError as error:
        raise QueryError(f"cannot read image {path}: {error.strerror or error}") from None
    if len(data) > config.max_member_bytes:
        raise QueryError(f"image {path} is {len(data)} bytes, above the {config.max_member_bytes}-byte limit")
    try:
        return images.decode_image(data, config, min_side)
    except images.ImageDecodeError as error:
        raise QueryError(f"image {path} cannot be decoded ({error.reason}{': ' + error.detail if error.detail else ''}); "
                         f"give a JPEG, PNG or WEBP photo") from None


@dataclass
class Searcher:
    """Queries against `build`. Encoders and the joint model are only needed for the queries that
    use them (a text encoder for text, an image encoder for photos, the model for joint spaces)."""

    build: IndexBuild
    text_encoder: object | None = None
    image_encoder: object | None = None
    joint_model: object | None = None
    image_config: images.ImageConfig = images.ImageConfig()
    threads: int = 1

    def __post_init__(self) -> None:
        if uses_joint_model(self.space) and self.joint_model is None:
            raise ValueError(f"Searcher: the index is over the {self.space!r} space, which needs the joint model")

    @property
    def space(self) -> str:
        return str(self.build.manifest["space"])

    def _dims(self) -> dict[str, int | None]:
        dims = self.build.manifest.get("encoder_dims") or {}
        return {"text_dim": dims.get("text"), "image_dim": dims.get("image")}

    def _check_modality(self, modality: str) -> None:
        if self.space in ("text", "image") and modality != self.space:
            query_vector(self.space, **{f"{modality}_vector": np.zeros((1, 1), np.float32)})  # raises QueryError

    def text_vector(self, text: str) -> np.ndarray:
        text = clean_query_text(text)
        self._check_modality("text")
        if self.text_encoder is None:
            raise QueryError("no text encoder configured for text queries")
        encoded = self.text_encoder.encode([text])
        return query_vector(self.space, text_vector=encoded, joint_model=self.joint_model, **self._dims())

    def image_vector(self, path: str | os.PathLike) -> np.ndarray:
        if self.image_encoder is None:
            raise QueryError("no image encoder configured for image queries")
        self._check_modality("image")  # before decoding anything
        photo = read_image_file(path, self.image_config, getattr(self.image_encoder, "min_decode_side", None))
        encoded = self.image_encoder.encode([photo])
        return query_vector(self.space, image_vector=encoded, joint_model=self.joint_model, **self._dims())

    def top(self, vector: np.ndarray, k: int) -> pd.DataFrame:
        """`nm`, `score` (cosine), `title` of the k best products, best first."""
        if k < 1:
            raise QueryError(f"--top must be >= 1, got {k}")
        sims, positions = self.build.index.search(vector, min(k, self.build.index.size), self.threads)
        keep = positions[0] >= 0
        rows = self.build.products.iloc[positions[0][keep]]
        return pd.DataFrame({"nm": rows["nm"].to_numpy(), "score": sims[0][keep],
                             "title": rows["title"].to_numpy() if "title" in rows else None})

    def search_text(self, text: str, k: int = 10) -> pd.DataFrame:
        return self.top(self.text_vector(text), k)

    def search_image(self, path: str | os.PathLike, k: int = 10) -> pd.DataFrame:
        return self.top(self.image_vector(path), k)


def format_results(results: pd.DataFrame) -> str:
    """`nm<TAB>score<TAB>title` lines (tabs and newlines inside a title become spaces)."""
    lines = []
    for nm, score, title in zip(results["nm"], results["score"], results["title"]):
        shown = " ".join(str(title).split()) if title is not None and not pd.isna(title) else ""
        lines.append(f"{nm}\t{score:.4f}\t{shown}")
    return "\n".join(lines)
