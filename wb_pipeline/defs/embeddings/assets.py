"""Group `embeddings`: text and image vectors per clean product, computed incrementally."""

from collections.abc import Mapping
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core.data import images, schema
from wb_pipeline.core.data.storage import shard_keys
from wb_pipeline.core.embeddings.runs import embed_texts, embed_zip_images
from wb_pipeline.core.embeddings.vectors import EmbeddingCache, EmbeddingTable, EmbedStats
from wb_pipeline.core.text.product_text import encoder_text
from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource
from wb_pipeline.defs.progress import progress_logger
from wb_pipeline.defs.resources import WBRawData, WBStorage
from wb_pipeline.defs.sharding import (
    COLUMNS_INPUT,
    RAN_NOW,
    SHARD_INPUT,
    SHARD_TAG,
    columns_input,
    latest_shard_metadata,
    shard_asset_name,
    shard_description,
    shard_input,
    shard_names,
    summed,
)

# Chosen by measurement (benchmarks/text_fast_path.py, 2 cores, int8 engine, title + ~200-word
# description): 64 / 96 / 128 / 192 tokens -> ~116 / 76 / 58 / 37 texts/s (whole: ~12, fp32 torch
# reference ~8); macro-F1 on the bundled sample within +-0.01 of the reference for each. 96 is the
# largest budget that reaches the ~60-80 texts/s the 128k-product target needs.
DEFAULT_DESCRIPTION_TOKEN_BUDGET = 96


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


def _text_embeddings_shard(index: int, n_shards: int, op_tags: Mapping[str, object] | None) -> dg.AssetsDefinition:
    key = shard_keys(n_shards)[index]

    @dg.asset(
        name=shard_asset_name("text_embeddings", key),
        group_name="embeddings",
        kinds={"pytorch", "parquet"},
        code_version="2",
        pool="embedding",
        description=shard_description("text_embeddings", key, n_shards),
        ins={"product_text": dg.AssetIn(shard_asset_name("product_text", key))},
        tags={SHARD_TAG: key},
        op_tags=op_tags,
    )
    def text_embeddings_shard(
        context: dg.AssetExecutionContext,
        product_text: pd.DataFrame,
        text_encoder: TextEncoderResource,
        pipeline_storage: WBStorage,
        text_embedding_settings: TextEmbeddingSettings,
    ) -> dg.MaterializeResult:
        config = text_embedding_settings
        encoder = text_encoder.build()
        budget = config.description_token_budget if config.fields == "title_description" else None
        tokenizer = getattr(encoder, "budget_tokenizer", None) if budget is not None else None
        if budget is not None and tokenizer is None:
            context.log.warning(
                f"text_embeddings: {encoder!r} has no token counter; description_token_budget={budget} is not applied"
            )
            budget = None
        texts = encoder_text(product_text, config.fields, config.form, budget, tokenizer)
        cache = EmbeddingCache(
            shard_cache(pipeline_storage, "text_embeddings", key, n_shards), encoder.fingerprint, encoder.dim
        )
        vectors, stats = embed_texts(
            texts.tolist(), encoder, cache, config.chunk_size, progress_logger(context, f"text_embeddings[{key}]")
        )
        table = EmbeddingTable(nm=product_text["nm"].to_numpy(), vectors=vectors)
        metadata = embedding_metadata(table, encoder, stats)
        metadata["input_text"] = f"{config.fields} ({config.form})"
        metadata["text_engine"] = (
            text_encoder.engine if text_encoder.backend == "sentence_transformers" else text_encoder.backend
        )
        metadata["description_token_budget"] = "whole description" if budget is None else f"{budget} tokens"
        return dg.MaterializeResult(value=table, metadata=metadata)

    return text_embeddings_shard


def shard_cache(pipeline_storage: WBStorage, stage: str, key: str, n_shards: int):
    """One embedding cache per shard: a shard step loads only its own products' cached vectors."""
    return pipeline_storage.layout.shard_cache(stage, n_shards, key)


def _gathered(shards: list[EmbeddingTable], nm: pd.Series) -> EmbeddingTable:
    table = EmbeddingTable(
        nm=np.concatenate([shard.nm for shard in shards]), vectors=np.concatenate([shard.vectors for shard in shards])
    )
    if len(table) != len(nm):
        raise ValueError(
            f"the shards hold {len(table)} vectors but the catalogue lists {len(nm)} products: re-run the shard steps"
        )
    return table.subset(nm.tolist())


def _gather_metadata(context: dg.AssetExecutionContext, table: EmbeddingTable, names: list[str]) -> dict:
    """The shards' figures summed (what the vectors cost when each shard was last embedded)."""
    shard_meta = latest_shard_metadata(context, names)
    first = shard_meta[0] if shard_meta else {}
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
    seconds = sum(float(meta.get("seconds") or 0.0) for meta in shard_meta if meta[RAN_NOW])
    return {
        "dagster/row_count": len(table),
        "dim": table.dim,
        **copied,
        "seconds": round(seconds, 3),
        "rows_per_second": round(len(table) / seconds, 1) if seconds else None,
        # what this run embedded; a shard not re-run in this run counts as served from the cache
        "embedded_now": summed(shard_meta, "embedded_now", ran_now_only=True),
        "from_cache": len(table) - summed(shard_meta, "embedded_now", ran_now_only=True),
        "shards": len(names),
        "shards_run_now": sum(bool(meta[RAN_NOW]) for meta in shard_meta),
        "shard_encoders_agree": len({meta.get("encoder_fingerprint") for meta in shard_meta}) <= 1,
    }


def build_embedding_assets(n_shards: int, op_tags: Mapping[str, object] | None = None) -> list[dg.AssetsDefinition]:
    """Per shard `text_embeddings_shard_<k>` and `image_embeddings_shard_<k>` (with `op_tags`, e.g. a pod
    spec); `text_embeddings` and `image_embeddings` gather them in catalogue order."""
    text_names = shard_names("text_embeddings", n_shards)
    image_names = shard_names("image_embeddings", n_shards)

    @dg.asset(
        group_name="embeddings",
        kinds={"pytorch", "parquet"},
        code_version="3",
        ins={"clean_products": columns_input("nm"), **{name: dg.AssetIn() for name in text_names}},
    )
    def text_embeddings(
        context: dg.AssetExecutionContext, clean_products: pd.DataFrame, **shards: EmbeddingTable
    ) -> dg.MaterializeResult:
        """One L2-normalised float32 text vector per clean product (row-aligned with `nm`), gathered
        from the `text_embeddings_shard_<k>` assets in catalogue order.

        Cached by (encoder fingerprint, hash of the exact input text): only new or changed texts are
        encoded; a different encoder config re-embeds everything."""
        table = _gathered([shards[name] for name in text_names], clean_products["nm"])
        return dg.MaterializeResult(value=table, metadata=_gather_metadata(context, table, text_names))

    @dg.asset(
        group_name="embeddings",
        kinds={"pytorch", "parquet"},
        code_version="2",
        ins={"clean_products": columns_input("nm"), **{name: dg.AssetIn() for name in image_names}},
    )
    def image_embeddings(
        context: dg.AssetExecutionContext, clean_products: pd.DataFrame, **shards: EmbeddingTable
    ) -> dg.MaterializeResult:
        """One L2-normalised float32 image vector per clean product (row-aligned with `nm`), gathered
        from the `image_embeddings_shard_<k>` assets in catalogue order.

        Images are streamed from the zip chunk by chunk (never all in memory), decoded in worker
        threads one chunk ahead of inference, and cached by (encoder fingerprint, hash of the image
        bytes, channel order)."""
        table = _gathered([shards[name] for name in image_names], clean_products["nm"])
        return dg.MaterializeResult(value=table, metadata=_gather_metadata(context, table, image_names))

    shards = []
    for index in range(n_shards):
        shards += [_text_embeddings_shard(index, n_shards, op_tags), _image_embeddings_shard(index, n_shards, op_tags)]
    return [*shards, text_embeddings, image_embeddings]


class ImageEmbeddingSettings(dg.ConfigurableResource):
    """How photos are decoded for the encoder (a resource: the same for every shard of a run)."""

    chunk_size: int = 256
    decode_workers: int = 2
    channel_order: Literal["RGB", "BGR"] = "RGB"
    # Decode JPEGs at a reduced DCT scale that still covers the encoder's input (Image.draft):
    # several times less decoding for large photos; features stay within cosine 0.99 of a full
    # decode (measured in benchmarks/embeddings.py). Encoders without `min_decode_side` decode in full.
    draft_decode: bool = True


def _image_embeddings_shard(index: int, n_shards: int, op_tags: Mapping[str, object] | None) -> dg.AssetsDefinition:
    key = shard_keys(n_shards)[index]
    shard_rows = dg.AssetIn(metadata={SHARD_INPUT: [index, n_shards], COLUMNS_INPUT: ["nm"]})

    @dg.asset(
        name=shard_asset_name("image_embeddings", key),
        group_name="embeddings",
        kinds={"pytorch", "parquet"},
        code_version="1",
        pool="embedding",
        description=shard_description("image_embeddings", key, n_shards),
        ins={
            "clean_products": shard_rows,
            "image_index": shard_input(index, n_shards),
            "image_members": shard_input(index, n_shards),
        },
        tags={SHARD_TAG: key},
        op_tags=op_tags,
    )
    def image_embeddings_shard(
        context: dg.AssetExecutionContext,
        clean_products: pd.DataFrame,
        image_index: pd.DataFrame,
        image_members: pd.DataFrame,
        raw_data: WBRawData,
        image_encoder: ImageEncoderResource,
        pipeline_storage: WBStorage,
        image_embedding_settings: ImageEmbeddingSettings,
    ) -> dg.MaterializeResult:
        config = image_embedding_settings
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
        cache = EmbeddingCache(
            shard_cache(pipeline_storage, "image_embeddings", key, n_shards), fingerprint, encoder.dim
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
                progress=progress_logger(context, f"image_embeddings[{key}/{batch}]"),
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
        return dg.MaterializeResult(value=table, metadata=metadata)

    return image_embeddings_shard
