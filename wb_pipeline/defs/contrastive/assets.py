"""Group `contrastive`: projection heads trained on the catalogue's own (text, image) pairs.

`contrastive_model`'s value is the held-out retrieval table (chance / before / after training),
with the artifact folder (safetensors weights + JSON config, encoder fingerprints, report) in
its `artifact` column; `joint_embeddings` reloads that artifact and projects every product.
"""

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core.data import storage
from wb_pipeline.core.data.storage import StorageLayout, as_upath
from wb_pipeline.core.embeddings.vectors import EmbeddingTable, read_embedding_rows, stored_ids
from wb_pipeline.core.evaluation.figures import loss_curve_png, png_markdown
from wb_pipeline.core.models import clustering, contrastive, product_space
from wb_pipeline.core.models.contrastive import ContrastiveConfig
from wb_pipeline.core.models.prediction import joint_embedding_rows
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.resources import WBStorage
from wb_pipeline.defs.sharding import ShardOutputs, ShardRun, shard_in_catalogue_order, sharded_stage

ContrastiveSettings = config_class(ContrastiveConfig, "ContrastiveSettings")
# What the model is fitted on; read from storage row group by row group, only the sampled products' rows.
TRAINING_INPUTS = ["text_embeddings", "image_embeddings", "clean_products", "image_index", "product_labels"]


def upstream_fingerprint(context: dg.AssetExecutionContext, asset_name: str) -> str:
    """The `encoder_fingerprint` recorded by the latest materialization of `asset_name` ('unknown' if none)."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset_name))
    materialization = event.asset_materialization if event is not None else None
    value = materialization.metadata.get("encoder_fingerprint") if materialization is not None else None
    return str(value.value) if value is not None else "unknown"


def aligned_images(text_embeddings: EmbeddingTable, image_embeddings: EmbeddingTable) -> EmbeddingTable:
    """Image vectors in the row order of the text table (a clear error naming a product without one)."""
    try:
        return image_embeddings.subset(text_embeddings.nm)
    except KeyError as error:
        raise ValueError(f"contrastive: text and image embeddings cover different products: {error}") from error


def _image_rows(layout: StorageLayout, text: EmbeddingTable, rows: np.ndarray) -> EmbeddingTable:
    """The stored image vectors of the products of `text` (its rows `rows` of the text table), in its
    order: the same rows when both tables list the catalogue in the same order (they do, both follow
    `clean_products`), else found by id."""
    path = layout.asset_file("image_embeddings")
    if storage.parquet_rows(path) == storage.parquet_rows(layout.asset_file("text_embeddings")):
        images = read_embedding_rows(path, rows)
        if np.array_equal(images.nm, text.nm):
            return images
    position = stored_ids(path).get_indexer(list(text.nm))
    if (position < 0).any():
        missing = text.nm[int(np.argmax(position < 0))]
        raise ValueError(
            f"contrastive: text and image embeddings cover different products: no image vector for nm {missing!r}"
        )
    order = np.argsort(position)
    images = read_embedding_rows(path, position[order])
    return EmbeddingTable(nm=text.nm, vectors=images.vectors[np.argsort(order)])


def training_sample(layout: StorageLayout, config: ContrastiveConfig):
    """(text vectors, image vectors, duplicate keys, known classes, catalogue size) of the products the
    joint model is fitted on: all, or `max_training_pairs` of them (seeded); only their rows are read."""
    text_path = layout.asset_file("text_embeddings")
    n_products = storage.parquet_rows(text_path)
    rows = contrastive.training_rows(n_products, config.max_training_pairs, config.seed)
    text = read_embedding_rows(text_path, rows)
    images = _image_rows(layout, text, rows)
    nm = [str(value) for value in text.nm]
    products = storage.read_rows_where(layout.asset_file("clean_products"), "nm", nm, ["title", "description"])
    image_index = storage.read_rows_where(layout.asset_file("image_index"), "nm", nm, ["content_hash"])
    labels = storage.read_rows_where(layout.asset_file("product_labels"), "nm", nm, list(clustering.KNOWN_TARGETS))
    keys = contrastive.product_keys(text.nm, products, image_index)
    return text, images, keys, clustering.known_targets(labels, text.nm), n_products


@dg.asset(group_name="contrastive", kinds={"pytorch", "safetensors"}, code_version="5", deps=TRAINING_INPUTS)
def contrastive_model(
    context: dg.AssetExecutionContext,
    pipeline_storage: WBStorage,
    config: ContrastiveSettings,
) -> dg.MaterializeResult:
    """Projection heads over the frozen text and image embeddings, trained with open_clip's ClipLoss
    and a learnable temperature plus a term that keeps both sides' in-batch neighbourhoods near the
    raw text encoder's (`neighbourhood_weight`); no duplicate title or image in a batch; group-aware validation split;
    early stopping on validation loss; beside them a closed-form regularised CCA of the two inputs,
    concatenated with the heads' vectors. Value: held-out Recall@1/5/10 and median rank per direction at
    chance, before (random heads), for the CCA part and the heads alone, and after (the joint vectors
    of the early-stopping model); the saved model is then refit on ALL pairs for the same number of
    epochs (`refit_on_all_pairs`). The model also fixes the PRODUCT vector (`combined_joint`): both encoders'
    standardised vectors, the text given the share the catalogue's known classes support best at equal k
    (cross-fitted; the R² rule without known classes; `product_text_share` pins it) — metadata
    `product_text_share`, `product_share_rule`, `product_share_held_out_ami`. `artifact` = the saved model folder.
    On a catalogue above `max_training_pairs` products all of it is fitted on a seeded sample of that size
    (metadata `training_products` of `catalogue_products`); `joint_embeddings` then projects every product."""
    core_config = to_core(ContrastiveConfig, config)
    text_embeddings, images, keys, targets, n_products = training_sample(pipeline_storage.layout, core_config)
    fingerprints = {
        "text": upstream_fingerprint(context, "text_embeddings"),
        "image": upstream_fingerprint(context, "image_embeddings"),
    }
    model, report = contrastive.train_joint_space(
        text_embeddings.vectors,
        images.vectors,
        keys["title_key"].tolist(),
        keys["image_key"].tolist(),
        core_config,
        progress=context.log.debug,
    )
    if core_config.product_text_share is not None:
        share = product_space.ShareChoice(float(core_config.product_text_share), product_space.RULE_PINNED)
    else:
        share = product_space.choose_text_share(
            text_embeddings.vectors,
            images.vectors,
            targets,
            step=core_config.product_share_step,
            halves=core_config.product_share_halves,
            min_labelled=core_config.product_share_min_labelled,
            seed=core_config.seed,
        )
    model.set_product_space(text_embeddings.vectors, images.vectors, share.share)
    fingerprint = contrastive.model_fingerprint(
        core_config, fingerprints, text_embeddings.vectors, images.vectors, np.array([share.share], np.float64)
    )
    folder = pipeline_storage.layout.contrastive_models / fingerprint
    contrastive.save_joint_model(model, folder, fingerprints, report)
    table = report.metrics_frame()
    table["n_pairs"] = report.n_validation_pairs
    table["artifact"] = str(folder)
    after = report.metrics["after"]
    return dg.MaterializeResult(
        value=table,
        metadata={
            "recall_validation": metadata.table(table.drop(columns=["artifact"]).round(4)),
            "loss_curve": dg.MetadataValue.md(
                png_markdown(
                    loss_curve_png(report.train_curve, report.validation_curve, report.best_step), "CLIP loss per step"
                )
            ),
            "catalogue_products": n_products,
            "training_products": len(text_embeddings),
            "training_seconds": round(report.seconds, 2),
            "pairs_used": report.n_pairs,
            "train_pairs": report.n_train_pairs,
            "validation_pairs": report.n_validation_pairs,
            "steps": report.steps,
            "epochs": report.epochs,
            "best_step": report.best_step,
            "refit_steps_on_all_pairs": report.refit_steps,
            "stopped_early": report.stopped_early,
            "best_validation_loss": round(report.best_validation_loss, 4),
            "temperature": round(report.final_temperature, 4),
            "image_to_text_recall_at_10": after["image_to_text"].get("recall_at_10"),
            "text_to_image_recall_at_10": after["text_to_image"].get("recall_at_10"),
            "image_to_text_recall_at_1": after["image_to_text"].get("recall_at_1"),
            "text_to_image_recall_at_1": after["text_to_image"].get("recall_at_1"),
            "closed_form_dim": model.closed_form_dim,
            **share.metadata(),
            "encoder_fingerprints": dg.MetadataValue.json(fingerprints),
            "artifact": dg.MetadataValue.path(str(folder)),
        },
    )


def _joint_shard(context: dg.OpExecutionContext, shard: ShardRun) -> tuple[pd.DataFrame, dict]:
    """One shard's products projected by the saved joint model (its own vectors, its own rows)."""
    model_table = storage.read_parquet(shard.layout.asset_file("contrastive_model"))
    model, _ = contrastive.load_joint_model(as_upath(contrastive.model_folder(model_table)))
    text = shard.output_of("text_embeddings")
    images = aligned_images(text, shard.output_of("image_embeddings"))
    frame, own_pair_cosine = joint_embedding_rows(model, text.nm, text.vectors, images.vectors)
    return frame, {"own_pair_cosine_sum": float(own_pair_cosine.sum()), "model": contrastive.model_folder(model_table)}


def _joint_gather(context, shards: ShardOutputs, layout: StorageLayout) -> tuple[pd.DataFrame, dict]:
    frame = shard_in_catalogue_order(
        pd.concat(shards.values, ignore_index=True), stored_ids(layout.asset_file("text_embeddings")).to_series()
    )
    folder = contrastive.model_folder(storage.read_parquet(layout.asset_file("contrastive_model")))
    stale = sorted({meta["shard"] for meta in shards.metadata if meta.get("model") != folder})
    if stale:
        raise ValueError(
            f"joint_embeddings: shards {stale} were projected by another joint model than {folder}: re-run the "
            "stage without the `wb_pipeline/shards` run tag"
        )
    model, info = contrastive.load_joint_model(as_upath(folder))
    cosine_sum = sum(float(meta.get("own_pair_cosine_sum") or 0.0) for meta in shards.metadata)
    return frame, {
        "dagster/row_count": len(frame),
        "dim": int(model.output_dim) if len(frame) else 0,
        "product_dim": int(model.product_dim) if len(frame) else 0,
        "product_text_share": float(model.product_text_share),
        "mean_own_pair_cosine": cosine_sum / len(frame) if len(frame) else None,
        "model": dg.MetadataValue.path(folder),
        "encoder_fingerprints": dg.MetadataValue.json(info.get("encoder_fingerprints", {})),
    }


joint_embeddings = sharded_stage(
    "joint_embeddings",
    upstream=["contrastive_model", "text_embeddings", "image_embeddings"],
    shard_work=_joint_shard,
    gather_work=_joint_gather,
    group_name="contrastive",
    kinds={"pytorch", "parquet"},
    description="Every product in the joint space: `nm` and four float32 list columns, unit-norm, row-aligned "
    "with `text_embeddings`: the heads' `text_joint` and `image_joint` (cross-modal search), `heads_joint` "
    "(their concatenation: zero-shot) and `combined_joint`, the product vector the model fixed. One step per "
    "product shard projects that shard's vectors (fixed blocks: the same rows as projecting the whole "
    "catalogue). Read a column as a matrix with `wb_pipeline.core.models.contrastive.joint_matrix`.",
)
