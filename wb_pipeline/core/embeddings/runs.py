"""Embedding runs over products: texts, and images streamed from the WB zip, through the cache.

Reader -> mapper -> writer per chunk (clip-retrieval style): a chunk's inputs are read and decoded
in worker threads (PIL releases the GIL while decoding) one chunk ahead of inference, the encoder
maps them to vectors, and the cache writes each finished chunk to storage. Only one chunk of images
is ever held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from upath import UPath

from wb_pipeline.core.data import images
from wb_pipeline.core.data.storage import content_hash
from wb_pipeline.core.embeddings.vectors import EmbeddingCache, EmbedStats, ProgressCallback, embed_incrementally


def embed_texts(
    texts: Sequence[str],
    encoder,
    cache: EmbeddingCache,
    chunk_size: int = 1024,
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Vectors for `texts` (row-aligned), keyed in the cache by the hash of each exact text."""
    texts = list(texts)
    hashes = [content_hash(t) for t in texts]
    return embed_incrementally(
        hashes, lambda rows: encoder.encode([texts[r] for r in rows]), cache, chunk_size, progress
    )


def embed_zip_images(
    zip_path: UPath,
    members: Sequence[str],
    hashes: Sequence[str],
    encoder,
    cache: EmbeddingCache,
    image_config: images.ImageConfig,
    chunk_size: int = 256,
    decode_workers: int = 2,
    max_member_bytes: int = 64 * 1024 * 1024,
    progress: ProgressCallback | None = None,
    min_decode_side: int | None = None,
    member_table: pd.DataFrame | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Vectors for the zip members (row-aligned), keyed by the content hash of each member's bytes.

    `hashes` come from the image index (computed when it read each member), so cached images are
    never read again. A member that fails to decode here raises `ImageDecodeError` naming it: the
    image index already rejected undecodable members, so this means the zip changed underneath.
    `min_decode_side`: decode JPEGs at a reduced DCT scale down to this side (see
    `images.decode_image`); it changes the vectors slightly, so the cache key must say so.
    `member_table`: rows of `images.zip_member_table` that include these members; the zip is then
    opened from them (`images.open_listed_zip`) instead of from its whole central directory.
    """
    members = list(members)
    with (
        zip_path.open("rb") as handle,
        images.open_zip(handle) if member_table is None else images.open_listed_zip(handle, member_table) as zf,
        ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode") as pool,
    ):

        def decode_one(member_and_bytes: tuple[str, bytes]) -> np.ndarray:
            member, data = member_and_bytes
            try:
                return encoder.preprocess(images.decode_image(data, image_config, min_decode_side))
            except images.ImageDecodeError as error:
                raise images.ImageDecodeError(error.reason, f"{member}: {error.detail}") from error

        def prepare(rows: np.ndarray) -> np.ndarray:
            raw = [(members[r], images.read_member(zf, members[r], max_member_bytes)) for r in rows]
            return np.stack(list(pool.map(decode_one, raw)))

        return embed_incrementally(
            hashes, encoder.encode_preprocessed, cache, chunk_size, progress, prepare_chunk=prepare
        )
