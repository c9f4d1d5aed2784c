"""Group `drops`, partitioned by `product_drops`: what happens to a drop after it is embedded.

`drop_predictions` labels the drop's products with the SAVED classifiers (no retraining, the cached
embeddings only) through `core.models.prediction.predict_products`, as `test_predictions` does; `drop_drift`
measures how far the drop is from what the models were trained on. Both run in the `predict_new_drops`
job, which a run-status sensor starts for each drop right after `reembed_new_products` succeeds. The
logic lives in `wb_pipeline.core.models.prediction` and `wb_pipeline.core.monitoring`.
"""

from typing import Literal

import dagster as dg
import pandas as pd

from wb_pipeline.core.data.storage import as_upath
from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.models import classification as core
from wb_pipeline.core.models import contrastive, prediction
from wb_pipeline.core.monitoring import drift, retrain
from wb_pipeline.defs import metadata
from wb_pipeline.defs.automation.jobs import DROPS_GROUP, product_drops
from wb_pipeline.defs.classification.assets import classification_models_folder
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.resources import MAIN_BATCH, WBStorage

DriftSettings = config_class(drift.DriftConfig, "DriftSettings")


class DropPredictionSettings(dg.Config):
    """Which saved model predicts: the report's best per label (what `test_predictions` uses), or one
    model for every label. A product missing that model's input falls back to the next-best saved model."""

    model: Literal["best", "text", "image", "early_fusion", "joint", "mean_probability", "late_fusion"] = "best"


def _drop_products(drop: str, raw_products_train: pd.DataFrame, raw_products_test: pd.DataFrame) -> pd.DataFrame:
    parts = [
        frame.loc[frame["batch"] == drop, ["nm"]].assign(split=split)
        for split, frame in (("train", raw_products_train), ("test", raw_products_test))
    ]
    products = pd.concat(parts, ignore_index=True)
    return products[products["nm"].notna()].drop_duplicates("nm").astype({"nm": str}).reset_index(drop=True)


@dg.asset(
    group_name=DROPS_GROUP,
    kinds={"sklearn"},
    partitions_def=product_drops,
    code_version="1",
    deps=["label_classifiers", "fusion_classifier"],
)
def drop_predictions(
    context: dg.AssetExecutionContext,
    raw_products_train: pd.DataFrame,
    raw_products_test: pd.DataFrame,
    clean_products: pd.DataFrame,
    rejected_products: pd.DataFrame,
    product_characteristics: pd.DataFrame,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
    contrastive_model: pd.DataFrame,
    classification_report: pd.DataFrame,
    pipeline_storage: WBStorage,
    config: DropPredictionSettings,
) -> dg.MaterializeResult:
    """For every product of the drop and every trained label: the predicted class and its probability
    (nm, label, predicted, probability, model, status, reason) from the saved best model per label and
    the cached vectors (joint vectors projected by the saved joint model), through
    `core.models.prediction.predict_products`, the same path as `test_predictions`. `status`: `predicted`;
    `fallback` (a vector the chosen model reads is missing, the reason says which and what predicted
    instead); `not_predicted` (no saved model fits); `rejected` (cleaning rejected the product, the
    reason says why)."""
    drop = context.partition_key
    products = _drop_products(drop, raw_products_train, raw_products_test)
    if products.empty:
        raise ValueError(
            f"drop {drop!r}: no products in the ingested tables — was it ingested (run `reembed_new_products` first)?"
        )
    clean_here = set(clean_products.loc[clean_products["batch"] == drop, "nm"].astype(str))
    rejected = rejected_products[rejected_products["nm"].astype(str).isin(set(products["nm"]) - clean_here)]
    model, _ = contrastive.load_joint_model(as_upath(contrastive.model_folder(contrastive_model)))
    labels = list(classification_report["label"].unique())
    # The nightly flow does not re-run the labels group: predict_products parses the drop's own
    # characteristics (same parser) where product_characteristics lacks them.
    table = prediction.predict_products(
        products,
        text_embeddings,
        image_embeddings,
        model,
        prediction.load_saved_models(classification_models_folder(pipeline_storage), labels),
        classification_report,
        clean_products,
        product_characteristics,
        clean_nm=clean_here,
        rejected=rejected,
        chosen=config.model,
    )
    status = (
        table.groupby(["label", "status"]).size().unstack(fill_value=0).reset_index() if len(table) else pd.DataFrame()
    )
    per_label = (
        table[table["predicted"].notna()]
        .groupby(["label", "model"])
        .agg(products=("nm", "nunique"), mean_probability=("probability", "mean"))
        .reset_index()
        .round(3)
    )
    reasons = table.loc[table["reason"] != "", ["status", "reason"]].value_counts().reset_index(name="rows")
    return dg.MaterializeResult(
        value=table,
        metadata={
            "dagster/row_count": len(table),
            "drop": drop,
            "drop_products": len(products),
            "clean_products": len(clean_here & set(products["nm"])),
            "labels": len(labels),
            "status_per_label": metadata.table(status) if len(status) else "no label trained",
            "per_label": metadata.table(per_label) if len(per_label) else "nothing predicted",
            "reasons": metadata.table(reasons, max_rows=100)
            if len(reasons)
            else "none: every row predicted by the chosen model",
            "preview": metadata.preview(table, rows=10),
        },
    )


@dg.asset(group_name=DROPS_GROUP, kinds={"sklearn"}, partitions_def=product_drops, code_version="1")
def drop_drift(
    context: dg.AssetExecutionContext,
    drop_predictions: pd.DataFrame,
    clean_products: pd.DataFrame,
    image_index: pd.DataFrame,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
    pipeline_storage: WBStorage,
    config: DriftSettings,
) -> dg.MaterializeResult:
    """How far the drop is from the catalogue the models were trained on: per modality (text, image
    vectors) the held-out AUC of a domain classifier (drop vs training products, group-aware folds) and
    MMD² with a permutation p-value; per label the Jensen–Shannon distance between the drop's predicted
    class shares and the training label shares (minus what sampling alone gives). The value: one row of
    figures with the verdict; the check `drop_within_training_distribution` shows it."""
    settings = to_core(drift.DriftConfig, config)
    drop = context.partition_key
    manifest = retrain.load_training_manifest(classification_models_folder(pipeline_storage))
    trained_batches = set(manifest.batches) if manifest else {MAIN_BATCH}
    trained_batches.discard(drop)
    clean = clean_products.astype({"nm": str}).drop_duplicates("nm").reset_index(drop=True)
    in_reference = clean["batch"].isin(trained_batches).to_numpy()
    in_drop = (clean["batch"] == drop).to_numpy()
    groups = core.product_groups(clean, image_index, "duplicates")
    sides = {}
    for name, mask in (("reference", in_reference), ("drop", in_drop)):
        nm = clean.loc[mask, "nm"]
        features, available = prediction.product_features(nm, text_embeddings, image_embeddings)
        both = available["text"] & available["image"]
        sides[name] = ({block: features[block][both] for block in ("text", "image")}, groups[mask][both])
    (reference, ref_groups), (new, new_groups) = sides["reference"], sides["drop"]
    report = drift.assess_drift(
        reference,
        new,
        drop_predictions[drop_predictions["predicted"].notna()],
        manifest.label_shares if manifest else {},
        settings,
        ref_groups,
        new_groups,
    )
    if manifest is None:
        report.reasons.append(
            "the saved models have no training manifest (trained before it existed): the reference "
            "is the main dump and the label shift is not measured"
        )
    summary = {"drop": drop, **report.summary(), "verdict": report.verdict}
    context.log.info(f"drop {drop}: {report.verdict}")
    return dg.MaterializeResult(
        value=pd.DataFrame([summary]),
        metadata={
            **{k: v for k, v in summary.items() if v is not None and k != "verdict"},
            "verdict": dg.MetadataValue.md(report.verdict),
            "reference_batches": ", ".join(sorted(trained_batches)),
            "modalities": metadata.table(report.modality.round(4)),
            "labels": metadata.table(report.labels.round(4)) if len(report.labels) else "no label measured",
            "notes": "; ".join(report.reasons) or "none",
        },
    )
