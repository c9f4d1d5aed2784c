"""Group `contrastive`: projection heads trained on the catalogue's own (text, image) pairs.

`contrastive_model`'s value is the held-out retrieval table (chance / before / after training),
with the artifact folder (safetensors weights + JSON config, encoder fingerprints, report) in
its `artifact` column; `joint_embeddings` reloads that artifact and projects every product.
"""

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core.data.storage import as_upath
from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.evaluation.figures import loss_curve_png, png_markdown
from wb_pipeline.core.models import clustering, contrastive, product_space
from wb_pipeline.core.models.contrastive import ContrastiveConfig
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.resources import WBStorage

ContrastiveSettings = config_class(ContrastiveConfig, "ContrastiveSettings")


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


@dg.asset(group_name="contrastive", kinds={"pytorch", "safetensors"}, code_version="4")
def contrastive_model(
    context: dg.AssetExecutionContext,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
    clean_products: pd.DataFrame,
    image_index: pd.DataFrame,
    product_labels: pd.DataFrame,
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
    `product_text_share`, `product_share_rule`, `product_share_held_out_ami`. `artifact` = the saved model folder."""
    core_config = to_core(ContrastiveConfig, config)
    images = aligned_images(text_embeddings, image_embeddings)
    keys = contrastive.product_keys(text_embeddings.nm, clean_products, image_index)
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
            clustering.known_targets(product_labels, text_embeddings.nm),
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


@dg.asset(group_name="contrastive", kinds={"pytorch", "parquet"}, code_version="2")
def joint_embeddings(
    contrastive_model: pd.DataFrame,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
) -> dg.MaterializeResult:
    """Every product in the joint space: `nm` and four float32 list columns, unit-norm, row-aligned with
    `text_embeddings`: the heads' `text_joint` and `image_joint` (cross-modal search), `heads_joint`
    (their concatenation: zero-shot) and `combined_joint`, the product vector the model fixed.
    Read a column as a matrix with `wb_pipeline.core.models.contrastive.joint_matrix`."""
    model, info = contrastive.load_joint_model(as_upath(contrastive.model_folder(contrastive_model)))
    images = aligned_images(text_embeddings, image_embeddings)
    text_joint, image_joint = model.project_text(text_embeddings.vectors), model.project_image(images.vectors)
    product = model.product_vectors(text_embeddings.vectors, images.vectors)
    frame = contrastive.joint_embedding_frame(text_embeddings.nm, text_joint, image_joint, product)
    own_pair_cosine = (text_joint * image_joint).sum(axis=1)
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": len(frame),
            "dim": int(text_joint.shape[1]) if len(frame) else 0,
            "product_dim": int(product.shape[1]) if len(frame) else 0,
            "product_text_share": float(model.product_text_share),
            "mean_own_pair_cosine": float(np.mean(own_pair_cosine)) if len(frame) else None,
            "model": dg.MetadataValue.path(contrastive.model_folder(contrastive_model)),
            "encoder_fingerprints": dg.MetadataValue.json(info.get("encoder_fingerprints", {})),
        },
    )
