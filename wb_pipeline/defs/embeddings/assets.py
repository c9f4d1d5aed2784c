"""Group `embeddings`: text and image vectors per clean product, computed incrementally."""

from collections.abc import Mapping
from typing import Literal

import dagster as dg
import numpy as np

from wb_pipeline.core.data import images, schema
from wb_pipeline.core.data.storage import StorageLayout, read_sharded_parquet
from wb_pipeline.core.embeddings.runs import embed_texts, embed_zip_images
from wb_pipeline.core.embeddings.vectors import EmbeddingCache, EmbeddingTable, EmbedStats
from wb_pipeline.core.text.product_text import DEFAULT_DESCRIPTION_TOKEN_BUDGET, TextInputs, encoder_input
from wb_pipeline.defs.progress import progress_logger
from wb_pipeline.defs.sharding import SHARDS_TAG, ShardOutputs, ShardRun, sharded_stage


class TextEmbeddingSettings(dg.ConfigurableResource):
    """What text goes into the encoder, and how much work is persisted at a time (a resource, not
    per-step config: every shard of a run must feed the encoder the same way).

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


def _text_embeddings_shard(context: dg.OpExecutionContext, shard: ShardRun) -> tuple[EmbeddingTable, dict]:
    config = context.resources.text_embedding_settings
    text_encoder = context.resources.text_encoder
    encoder = text_encoder.build()
    product_text = shard.output_of("product_text")
    inputs = TextInputs(config.fields, config.form, config.description_token_budget)
    texts, budget = encoder_input(product_text, encoder, inputs)
    if budget is None and config.fields == "title_description" and config.description_token_budget is not None:
        context.log.warning(
            f"text_embeddings: {encoder!r} has no token counter; "
            f"description_token_budget={config.description_token_budget} is not applied"
        )
    cache = EmbeddingCache(
        shard.cache("text_embeddings"),
        encoder.fingerprint,
        encoder.dim,
        seeds=shard.seed_caches("text_embeddings"),
    )
    vectors, stats = embed_texts(
        texts.tolist(), encoder, cache, config.chunk_size, progress_logger(context, f"text_embeddings[{shard.key}]")
    )
    table = EmbeddingTable(nm=product_text["nm"].to_numpy(), vectors=vectors)
    metadata = embedding_metadata(table, encoder, stats)
    metadata["input_text"] = f"{config.fields} ({config.form})"
    metadata["text_engine"] = (
        text_encoder.engine if text_encoder.backend == "sentence_transformers" else text_encoder.backend
    )
    metadata["description_token_budget"] = "whole description" if budget is None else f"{budget} tokens"
    return table, metadata


def _gathered(shards: ShardOutputs, layout: StorageLayout) -> EmbeddingTable:
    nm = read_sharded_parquet(layout.asset_file("clean_products"), columns=["nm"])["nm"]
    table = EmbeddingTable(
        nm=np.concatenate([shard.nm for shard in shards.values]),
        vectors=np.concatenate([shard.vectors for shard in shards.values]),
    )
    if len(table) != len(nm):
        raise ValueError(
            f"the shards hold {len(table)} vectors but the catalogue lists {len(nm)} products: re-run the "
            f"stage without the `{SHARDS_TAG}` run tag"
        )
    return table.subset(nm.tolist())


def _gather_embeddings(context, shards: ShardOutputs, layout: StorageLayout) -> tuple[EmbeddingTable, dict]:
    """The shards' vectors in catalogue order; their figures summed (what the vectors cost when each
    shard was last embedded)."""
    table = _gathered(shards, layout)
    first = shards.metadata[0] if shards.metadata else {}
    copied = {
        key: first[key]
        for key in (
            "encoder",
            "encoder_fingerprint",
            "input_text",
            "text_engine",
            "description_token_budget",
            "channel_order",
            "decode",
        )
        if key in first
    }
    seconds = sum(float(meta.get("seconds") or 0.0) for meta in shards.metadata if meta["shard"] in shards.ran)
    embedded_now = shards.summed("embedded_now", ran_only=True)
    return table, {
        "dagster/row_count": len(table),
        "dim": table.dim,
        **copied,
        "seconds": round(seconds, 3),
        "rows_per_second": round(len(table) / seconds, 1) if seconds else None,
        # what this run embedded; a shard not re-run in this run counts as served from the cache
        "embedded_now": embedded_now,
        "from_cache": len(table) - embedded_now,
        "shard_encoders_agree": len({meta.get("encoder_fingerprint") for meta in shards.metadata}) <= 1,
    }


def build_embedding_assets(op_tags: Mapping[str, object] | None = None) -> list[dg.AssetsDefinition]:
    """`text_embeddings` and `image_embeddings`, one encoder step per product shard (with `op_tags`,
    e.g. a pod spec), gathered in catalogue order."""
    text_embeddings = sharded_stage(
        "text_embeddings",
        upstream=["product_text"],
        shard_work=_text_embeddings_shard,
        gather_work=_gather_embeddings,
        resources={"text_encoder", "text_embedding_settings"},
        shard_tags=op_tags,
        pool="embedding",
        group_name="embeddings",
        kinds={"pytorch", "parquet"},
        description="One L2-normalised float32 text vector per clean product (row-aligned with `nm`); one "
        "encoder step per product shard (`text_embeddings_shard[<key>]`), gathered in catalogue order. "
        "Cached by (encoder fingerprint, hash of the exact input text): only new or changed texts are "
        "encoded; a different encoder config re-embeds everything.",
    )
    image_embeddings = sharded_stage(
        "image_embeddings",
        upstream=["clean_products", "image_index", "image_members"],
        shard_work=_image_embeddings_shard,
        gather_work=_gather_embeddings,
        resources={"raw_data", "image_encoder", "image_embedding_settings"},
        shard_tags=op_tags,
        pool="embedding",
        group_name="embeddings",
        kinds={"pytorch", "parquet"},
        description="One L2-normalised float32 image vector per clean product (row-aligned with `nm`); one "
        "encoder step per product shard (`image_embeddings_shard[<key>]`), gathered in catalogue order. "
        "Images are streamed from the zip chunk by chunk (never all in memory), decoded in worker threads "
        "one chunk ahead of inference, and cached by (encoder fingerprint, hash of the image bytes, "
        "channel order).",
    )
    return [text_embeddings, image_embeddings]


class ImageEmbeddingSettings(dg.ConfigurableResource):
    """How photos are decoded for the encoder (a resource: the same for every shard of a run)."""

    chunk_size: int = 256
    decode_workers: int = 2
    channel_order: Literal["RGB", "BGR"] = "RGB"
    # Decode JPEGs at a reduced DCT scale that still covers the encoder's input (Image.draft):
    # several times less decoding for large photos; features stay within cosine 0.99 of a full
    # decode (measured in benchmarks/embeddings.py). Encoders without `min_decode_side` decode in full.
    draft_decode: bool = True


def _image_embeddings_shard(context: dg.OpExecutionContext, shard: ShardRun) -> tuple[EmbeddingTable, dict]:
    config = context.resources.image_embedding_settings
    raw_data = context.resources.raw_data
    encoder = context.resources.image_encoder.build()
    clean_products = shard.rows_of("clean_products", ["nm"])
    image_index = shard.rows_of("image_index", ["nm", "batch", "member", "content_hash"])
    image_members = shard.rows_of("image_members")
    rows = clean_products[["nm"]].merge(image_index.drop_duplicates("nm"), on="nm", how="left")
    if rows["member"].isna().any():
        missing = rows.loc[rows["member"].isna(), "nm"].head(5).tolist()
        raise ValueError(f"image_embeddings: clean products without an image member, e.g. {missing}")
    min_decode_side = getattr(encoder, "min_decode_side", None) if config.draft_decode else None
    fingerprint = f"{encoder.fingerprint}-{config.channel_order.lower()}"
    if min_decode_side is not None:
        fingerprint += f"-draft{min_decode_side}"
    cache = EmbeddingCache(
        shard.cache("image_embeddings"),
        fingerprint,
        encoder.dim,
        seeds=shard.seed_caches("image_embeddings"),
    )
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
            progress=progress_logger(context, f"image_embeddings[{shard.key}/{batch}]"),
            min_decode_side=min_decode_side,
            member_table=image_members[image_members["batch"] == batch],
        )
        vectors[part.index.to_numpy()] = part_vectors
        stats = stats.plus(part_stats)
    table = EmbeddingTable(nm=rows["nm"].to_numpy(), vectors=vectors)
    metadata = embedding_metadata(table, encoder, stats)
    metadata["encoder_fingerprint"] = fingerprint
    metadata["channel_order"] = config.channel_order
    metadata["decode"] = f"JPEG DCT-scaled to >= {min_decode_side} px" if min_decode_side else "full resolution"
    return table, metadata
