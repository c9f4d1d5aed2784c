"""Text and image queries against a saved index build.

`Searcher` turns a text (through the text encoder with its QUERY prompt, then the joint model's
text head) or a photo (image encoder, then the image head) into a vector of the index's space and
returns the top products. Every bad input is a `QueryError` with a message a person can act on:
an empty text, a file that is missing or not an image, a modality the space cannot take.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wb_pipeline.core.data import images, storage
from wb_pipeline.core.search.spaces import QueryError, query_vector, uses_joint_model
from wb_pipeline.core.search.store import IndexBuild

# A query longer than this is not a search (the encoder reads at most a few hundred tokens anyway).
MAX_QUERY_CHARS = 10_000
# Control (Cc) and format (Cf: zero-width space, BOM, soft hyphen, ...) characters carry no words:
# they separate words like whitespace does.
_SEPARATOR_CATEGORIES = frozenset({"Cc", "Cf"})
# What makes a query searchable: a letter, a digit, or another symbol (an emoji).
_TEXT_CATEGORIES = ("L", "N", "So")


def clean_query_text(text: str | None) -> str:
    """The query with control characters and surrounding whitespace removed, runs of whitespace as one
    space; QueryError when it is not text (lone surrogates, e.g. undecodable bytes in argv), longer than
    `MAX_QUERY_CHARS`, or has no letter, digit or symbol left."""
    text = "" if text is None else str(text)
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"text query of {len(text)} characters, above the {MAX_QUERY_CHARS}-character limit")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # lone surrogates: argv bytes that are not UTF-8 arrive like this
        raise QueryError(
            f"the text query is not valid text (character {error.start + 1} is not Unicode: "
            "undecodable bytes?); give the query in UTF-8"
        ) from None
    cleaned = " ".join("".join(" " if unicodedata.category(c) in _SEPARATOR_CATEGORIES else c for c in text).split())
    if not cleaned:
        what = " (only control characters)" if text.strip() else ""
        raise QueryError(f"empty text query{what}: give some words to search for (or --image PATH for a photo)")
    if not any(unicodedata.category(c).startswith(_TEXT_CATEGORIES) for c in cleaned):
        raise QueryError(f"text query {cleaned[:40]!r} has no letter, digit or symbol: give some words to search for")
    return cleaned


def check_image_file(path: str | os.PathLike, config: images.ImageConfig = images.ImageConfig()) -> None:
    """QueryError unless `path` is a regular file of at most `config.max_member_bytes` bytes; nothing is
    read (a FIFO is not even waited on), so a CLI can refuse a bad path before it loads any model."""
    try:
        with storage.open_regular_file(path, config.max_member_bytes):
            pass
    except OSError as error:
        raise _unreadable(path, error) from None


def read_image_file(
    path: str | os.PathLike, config: images.ImageConfig = images.ImageConfig(), min_side: int | None = None
):
    """The photo at `path` decoded to RGB; QueryError naming the file and the reason otherwise. The file
    is checked before anything is read: a regular file (not a folder, FIFO or device) of at most
    `config.max_member_bytes` bytes."""
    path = Path(path)
    try:
        data = storage.read_regular_file(path, config.max_member_bytes)
    except OSError as error:
        raise _unreadable(path, error) from None
    try:
        return images.decode_image(data, config, min_side)
    except images.ImageDecodeError as error:
        raise QueryError(
            f"image {path} cannot be decoded ({error.reason}{': ' + error.detail if error.detail else ''}); "
            f"give a JPEG, PNG or WEBP photo"
        ) from None


def _unreadable(path: str | os.PathLike, error: OSError) -> QueryError:
    if isinstance(error, FileNotFoundError):
        return QueryError(f"cannot read image {path}: no such file")
    if isinstance(error, storage.UnreadableFile):
        return QueryError(f"cannot read image {error}")
    return QueryError(f"cannot read image {path}: {error.strerror or error}")


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
        if vector.ndim != 2 or vector.shape[1] != self.build.index.dim:
            raise QueryError(
                f"the query vector has {vector.shape[-1]} dimensions but the index's vectors "
                f"{self.build.index.dim}: the index was built from other encoders; re-materialize it"
            )
        sims, positions = self.build.index.search(vector, min(k, self.build.index.size), self.threads)
        keep = positions[0] >= 0
        rows = self.build.products.iloc[positions[0][keep]]
        return pd.DataFrame(
            {
                "nm": rows["nm"].to_numpy(),
                "score": sims[0][keep],
                "title": rows["title"].to_numpy() if "title" in rows else None,
            }
        )

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
