"""Group `embeddings`: text and image vectors per clean product, computed incrementally."""


from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core import images, schema
from wb_pipeline.core.embedding_runs import embed_texts, embed_zip_images
from wb_pipeline.core.embeddings import EmbeddingCache, EmbeddingTable, EmbedStats
from wb_pipeline.core.product_text import encoder_text
from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource
from wb_pipeline.defs.progress import progress_logger
from wb_pipeline.defs.resources import WBRawData, WBStorage

# Chosen by measurement (benchmarks/text_fast_path.py, 2 cores, int8 engine, title + ~200-word
# description): 64 / 96 / 128 / 192 tokens -> ~116 / 76 / 58 / 37 texts/s (whole: ~12, fp32 torch
# reference ~8); macro-F1 on the bundled sample within +-0.01 of the reference for each. 96 is the
# largest budget that reaches the ~60-80 texts/s the 128k-product target needs.
DEFAULT_DESCRIPTION_TOKEN_BUDGET = 96


class TextEmbeddingSettings(dg.Config):
    """What text goes into the encoder, and how much work is persisted at a time.

    `description_token_budget`: with `fields="title_description"`, only the first that many tokens
    of the description (the encoder's own tokenizer counts them) follow the whole title; None
    feeds the whole description (cut only by the encoder's max_seq_length, the old reference).
    Encoders without a token counter (USE, open_clip) get the whole description, and the metadata
    says so."""

    fields: Literal["title", "title_description"] = "title_description"
    form: Literal["natural", "preprocessed"] = "natural"
    description_token_budget: int | None = DEFAULT_DESCRIPTION_TOKEN_BUDGET
    chunk_size: int = 512


def embedding_metadata(table: EmbeddingTable, encoder, stats: EmbedStats) -> dict:
    return {
        "dagster/row_count": len(table),
        "dim": table.dim,
        "encoder": repr(encoder),
        "encoder_fingerprint": encoder.fingerprint,
        "seconds": round(stats.seconds, 3),
        "rows_per_second": round(stats.total / stats.seconds, 1) if stats.seconds else None,
        "embedded_now": stats.embedded,
        "from_cache": stats.from_cache,
    }


@dg.asset(group_name="embeddings", kinds={"pytorch", "parquet"}, code_version="2", pool="embedding")
def text_embeddings(
    context: dg.AssetExecutionContext,
    product_text: pd.DataFrame,
    text_encoder: TextEncoderResource,
    pipeline_storage: WBStorage,
    config: TextEmbeddingSettings,
) -> dg.MaterializeResult:
    """One L2-normalised float32 text vector per clean product (row-aligned with `nm`).

    Cached by (encoder fingerprint, hash of the exact input text): only new or changed texts are
    encoded; a different encoder config re-embeds everything."""
    encoder = text_encoder.build()
    budget = config.description_token_budget if config.fields == "title_description" else None
    tokenizer = getattr(encoder, "budget_tokenizer", None) if budget is not None else None
    if budget is not None and tokenizer is None:
        context.log.warning(f"text_embeddings: {encoder!r} has no token counter; "
                            f"description_token_budget={budget} is not applied")
        budget = None
    texts = encoder_text(product_text, config.fields, config.form, budget, tokenizer)
    cache = EmbeddingCache(pipeline_storage.path("cache", "text_embeddings"), encoder.fingerprint, encoder.dim)
    vectors, stats = embed_texts(texts.tolist(), encoder, cache, config.chunk_size,
                                 progress_logger(context, "text_embeddings"))
    table = EmbeddingTable(nm=product_text["nm"].to_numpy(), vectors=vectors)
    metadata = embedding_metadata(table, encoder, stats)
    metadata["input_text"] = f"{config.fields} ({config.form})"
    metadata["text_engine"] = text_encoder.engine if text_encoder.backend == "sentence_transformers" \
        else text_encoder.backend
    metadata["description_token_budget"] = "whole description" if budget is None else f"{budget} tokens"
    return dg.MaterializeResult(value=table, metadata=metadata)


class ImageEmbeddingSettings(dg.Config):
    chunk_size: int = 256
    decode_workers: int = 2
    channel_order: Literal["RGB", "BGR"] = "RGB"
    # Decode JPEGs at a reduced DCT scale that still covers the encoder's input (Image.draft):
    # several times less decoding for large photos; features stay within cosine 0.99 of a full
    # decode (measured in benchmarks/embeddings.py). Encoders without `min_decode_side` decode in full.
    draft_decode: bool = True


@dg.asset(group_name="embeddings", kinds={"pytorch", "parquet"}, code_version="1", pool="embedding")
def image_embeddings(
    context: dg.AssetExecutionContext,
    clean_products: pd.DataFrame,
    image_index: pd.DataFrame,
    raw_data: WBRawData,
    image_encoder: ImageEncoderResource,
    pipeline_storage: WBStorage,
    config: ImageEmbeddingSettings,
) -> dg.MaterializeResult:
    """One L2-normalised float32 image vector per clean product (row-aligned with `nm`).

    Images are streamed from the zip chunk by chunk (never all in memory), decoded in worker
    threads one chunk ahead of inference, and cached by (encoder fingerprint, hash of the image
    bytes, channel order)."""
    encoder = image_encoder.build()
    rows = clean_products[["nm"]].merge(
        image_index[["nm", "batch", "member", "content_hash"]].drop_duplicates("nm"), on="nm", how="left"
    )
    if rows["member"].isna().any():
        missing = rows.loc[rows["member"].isna(), "nm"].head(5).tolist()
        raise ValueError(f"image_embeddings: clean products without an image member, e.g. {missing}")
    min_decode_side = getattr(encoder, "min_decode_side", None) if config.draft_decode else None
    fingerprint = f"{encoder.fingerprint}-{config.channel_order.lower()}"
    if min_decode_side is not None:
        fingerprint += f"-draft{min_decode_side}"
    cache = EmbeddingCache(pipeline_storage.path("cache", "image_embeddings"), fingerprint, encoder.dim)
    vectors = np.zeros((len(rows), encoder.dim), dtype=np.float32)
    stats = EmbedStats()
    for batch, part in rows.groupby("batch", sort=True):
        part_vectors, part_stats = embed_zip_images(
            raw_data.folder(batch) / schema.IMAGES_ZIP,
            part["member"].tolist(),
            part["content_hash"].tolist(),
            encoder,
            cache,
            images.ImageConfig(channel_order=config.channel_order),
            chunk_size=config.chunk_size,
            decode_workers=config.decode_workers,
            progress=progress_logger(context, f"image_embeddings[{batch}]"),
            min_decode_side=min_decode_side,
        )
        vectors[part.index.to_numpy()] = part_vectors
        stats = stats.plus(part_stats)
    table = EmbeddingTable(nm=rows["nm"].to_numpy(), vectors=vectors)
    metadata = embedding_metadata(table, encoder, stats)
    metadata["encoder_fingerprint"] = fingerprint
    metadata["channel_order"] = config.channel_order
    metadata["decode"] = f"JPEG DCT-scaled to >= {min_decode_side} px" if min_decode_side else "full resolution"
    return dg.MaterializeResult(value=table, metadata=metadata)
