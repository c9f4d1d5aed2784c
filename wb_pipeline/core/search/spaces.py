"""The vector spaces a product index can live in, and how a text or image query enters each.

| space | product vector | text query | image query |
|---|---|---|---|
| `joint` (default) | `combined_joint`: the product vector [√s·text, √(1−s)·image] of the standardised encoder vectors | [√s·q, 0] | [0, √(1−s)·q] |
| `joint_text` | `text_joint` | text head | image head (cross-modal) |
| `joint_image` | `image_joint` | text head (cross-modal) | image head |
| `text` | the text encoder's vector | encoder vector | — (no shared space) |
| `image` | the image encoder's vector | — | encoder vector |
| `early_concat` | [text, image] / √2 | [text, 0] | [0, image] |

An early-concatenation query with one modality ranks like that modality alone (the other half
contributes 0 to every inner product); it is allowed, and says so in the CLI.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from wb_pipeline.core.data import storage
from wb_pipeline.core.embeddings.encoders.base import l2_normalize
from wb_pipeline.core.embeddings.vectors import EmbeddingTable, read_embedding_table, stored_ids
from wb_pipeline.core.models.contrastive import joint_matrix

Space = Literal["joint", "joint_text", "joint_image", "text", "image", "early_concat"]
IndexSpace = Literal["joint", "joint_text", "joint_image", "text", "image", "early_concat", "auto"]
SPACES: tuple[str, ...] = ("joint", "joint_text", "joint_image", "text", "image", "early_concat")
JOINT_SPACES = {"joint": "combined_joint", "joint_text": "text_joint", "joint_image": "image_joint"}
# Spaces whose products are reachable by a text query AND by a photo query, i.e. the ones an automatic
# choice may give the search index: "text" or "image" alone would refuse the other kind of query.
QUERYABLE_SPACES = ("joint", "early_concat")
AUTO_SPACE = "auto"


def choose_index_space(equal_k_ami: dict[str, float], margin: float) -> tuple[str, str]:
    """(space, why) of an "auto" index: the queryable space that recovers the catalogue's known classes best
    at equal k (the clustering report's mean AMI; the joint space unless the concatenation beats it by
    more than `margin`), the joint space without that evidence."""
    from wb_pipeline.core.models.clustering import choose_space_by_scores

    return choose_space_by_scores(equal_k_ami, margin, QUERYABLE_SPACES)


class QueryError(ValueError):
    """A query that cannot be answered (empty text, unreadable image, wrong modality for the space)."""


def uses_joint_model(space: str) -> bool:
    return space in JOINT_SPACES


def space_vectors(
    space: str, text: EmbeddingTable, image: EmbeddingTable, joint: pd.DataFrame | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(nm, float32 unit vectors) of every product in `space`, in the order of `text.nm`."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    nm = np.asarray(text.nm, dtype=object)
    if space in JOINT_SPACES:
        return nm, joint_in_order(space, nm, joint)
    if space == "text":
        return nm, text.vectors
    images = image.subset(nm)
    if space == "image":
        return nm, images.vectors
    return nm, l2_normalize(np.hstack([text.vectors, images.vectors]))


def joint_in_order(space: str, nm: np.ndarray, joint: pd.DataFrame | None) -> np.ndarray:
    """The joint-space vectors of `space` (a joint space) for the products `nm`, in that order."""
    if joint is None:
        raise ValueError(f"space {space!r} needs the joint_embeddings table")
    nm = np.asarray(nm, dtype=object)
    order = pd.Index(joint["nm"].astype(str)).get_indexer(nm.astype(str))
    if (order < 0).any():
        raise ValueError(
            f"joint_embeddings lack {int((order < 0).sum())} products of text_embeddings, "
            f"e.g. {nm[order < 0][:3].tolist()}"
        )
    return np.ascontiguousarray(joint_matrix(joint, JOINT_SPACES[space])[order])


def stored_space_vectors(space: str, text_path, image_path, joint_path) -> tuple[np.ndarray, np.ndarray]:
    """`space_vectors` from the stored tables, reading only what `space` needs: a joint space reads the
    text table's ids and the joint table's one column, never the encoders' vectors."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if space in JOINT_SPACES:
        nm = np.asarray(stored_ids(text_path), dtype=object)
        return nm, joint_in_order(space, nm, storage.read_parquet(joint_path, columns=["nm", JOINT_SPACES[space]]))
    text = read_embedding_table(text_path)
    return space_vectors(space, text, read_embedding_table(image_path) if space != "text" else text)


def query_vector(
    space: str,
    *,
    text_vector: np.ndarray | None = None,
    image_vector: np.ndarray | None = None,
    joint_model=None,
    text_dim: int | None = None,
    image_dim: int | None = None,
) -> np.ndarray:
    """The unit query vector [1, dim] for one encoder vector (text or image) in `space`.

    `joint_model` (a `core.models.contrastive.JointSpaceModel`) is needed for the joint spaces;
    `text_dim` / `image_dim` (the encoder dimensions) for `early_concat`."""
    if (text_vector is None) == (image_vector is None):
        raise QueryError("give exactly one of a text query or an image query")
    modality = "text" if text_vector is not None else "image"
    vector = np.atleast_2d(np.asarray(text_vector if text_vector is not None else image_vector, np.float32))
    if space in JOINT_SPACES:
        if joint_model is None:
            raise ValueError(f"space {space!r} needs the joint model to project the query")
        if space == "joint":
            return joint_model.product_query(vector, modality)
        return l2_normalize(
            joint_model.project_text(vector) if modality == "text" else joint_model.project_image(vector)
        )
    if space in ("text", "image"):
        if modality != space:
            raise QueryError(
                f"the index is over the {space!r} space: it can only take a {space} query, "
                f"not a {modality} query (build it over 'joint' for cross-modal search)"
            )
        return l2_normalize(vector)
    if space == "early_concat":
        if text_dim is None or image_dim is None:
            raise ValueError("space 'early_concat' needs text_dim and image_dim")
        zeros = np.zeros((1, image_dim if modality == "text" else text_dim), np.float32)
        parts = [vector, zeros] if modality == "text" else [zeros, vector]
        return l2_normalize(np.hstack(parts))
    raise ValueError(f"space must be one of {SPACES}, got {space!r}")


def product_vector(
    space: str, text_vector: np.ndarray, image_vector: np.ndarray, joint_model=None, product_vectors=None
) -> np.ndarray:
    """The unit vector [1, dim] in `space` of a product with BOTH encoder vectors — what `space_vectors`
    holds for a catalogue product (a product with one modality enters as that modality's query,
    `query_vector`). `product_vectors(text, image)` computes the joint model's product vector (default:
    `joint_model.product_vectors`; the prediction path passes its fixed-block version)."""
    text_vector = np.atleast_2d(np.asarray(text_vector, np.float32))
    image_vector = np.atleast_2d(np.asarray(image_vector, np.float32))
    if space in JOINT_SPACES:
        if joint_model is None:
            raise ValueError(f"space {space!r} needs the joint model to project the product")
        if space == "joint":
            compute = product_vectors or joint_model.product_vectors
            return np.asarray(compute(text_vector, image_vector), np.float32)
        if space == "joint_text":
            return l2_normalize(joint_model.project_text(text_vector))
        return l2_normalize(joint_model.project_image(image_vector))
    if space == "text":
        return l2_normalize(text_vector)
    if space == "image":
        return l2_normalize(image_vector)
    if space == "early_concat":
        return l2_normalize(np.hstack([text_vector, image_vector]))
    raise ValueError(f"space must be one of {SPACES}, got {space!r}")
