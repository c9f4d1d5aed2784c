"""Group `classification`: per-label classifiers, late fusion, the comparison table, test predictions.

Lineage mirrors the no-leak rule: `fusion_classifier` never sees an embedding, only the
out-of-fold probabilities written by `label_classifiers`.
"""

import time
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core.data.storage import as_upath
from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.evaluation.figures import grouped_bars_png, png_markdown
from wb_pipeline.core.model_selection.metrics import MetricsConfig, confusion_matrix_png
from wb_pipeline.core.models import classification as core
from wb_pipeline.core.models import contrastive, prediction
from wb_pipeline.core.models.fusion import tabular_features
from wb_pipeline.core.monitoring.retrain import TrainingManifest, save_training_manifest
from wb_pipeline.core.runtime import worker_pool
from wb_pipeline.defs import metadata
from wb_pipeline.defs.automation.jobs import CATALOGUE_METADATA_KEY, RETRAIN_REASON_TAG
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.embeddings.resources import TextEncoderResource
from wb_pipeline.defs.progress import progress_logger
from wb_pipeline.defs.resources import WBStorage

ClassificationSettings = config_class(core.ClassificationConfig, "ClassificationSettings")
ReportSettings = config_class(MetricsConfig, "ReportSettings")
ZeroShotSettings = config_class(core.ZeroShotConfig, "ZeroShotSettings")


class ClassificationReportSettings(ReportSettings, ZeroShotSettings):
    """Bootstrap settings of the metrics and how the zero-shot baseline scores class names."""


REPORT_COLUMNS = [
    "label",
    "model",
    "n",
    "n_classes",
    "macro_f1",
    "macro_f1_low",
    "macro_f1_high",
    "weighted_f1",
    "weighted_f1_low",
    "weighted_f1_high",
    "f1",
    "positive_class",
    "gain_vs_best_unimodal",
    "gain_low",
    "gain_high",
    "best_model",
]


def classification_models_folder(pipeline_storage: WBStorage):
    """The saved final models, one folder per label (what `core.models.prediction.load_saved_models` reads),
    and the training manifest."""
    return pipeline_storage.layout.classification_models


def models_folder(pipeline_storage: WBStorage, label: str):
    return classification_models_folder(pipeline_storage) / label


def _features(
    labels: pd.DataFrame,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
    joint_embeddings: pd.DataFrame,
) -> dict:
    """Row-aligned text, image and joint (combined) vectors of the products in `labels`."""
    nm = labels["nm"].tolist()
    joint = joint_embeddings.drop_duplicates("nm").set_index("nm")
    missing = pd.Index(nm).difference(joint.index)
    if len(missing):
        raise ValueError(f"classification: {len(missing)} products have no joint vector (e.g. {list(missing[:3])})")
    return {
        "text": text_embeddings.subset(nm).vectors,
        "image": image_embeddings.subset(nm).vectors,
        "joint": contrastive.joint_matrix(joint.loc[nm].reset_index(), "combined_joint"),
    }


@dg.asset(group_name="classification", kinds={"sklearn"}, code_version="2", pool="classification")
def label_classifiers(
    context: dg.AssetExecutionContext,
    product_labels: pd.DataFrame,
    clean_products: pd.DataFrame,
    image_index: pd.DataFrame,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
    joint_embeddings: pd.DataFrame,
    pipeline_storage: WBStorage,
    config: ClassificationSettings,
) -> dg.MaterializeResult:
    """Text-only, image-only, early-fusion (the two blocks scaled to equal variance, the image block
    weighed) and joint-space logistic regressions per label, evaluated by nested group-aware K-fold
    (class weight, C and the block weight chosen by inner folds), then refit on all labelled rows and
    saved (safetensors + JSON). The value: their out-of-fold class probabilities (stage 'outer' =
    held-out predictions, stage 'inner' = the late-fusion meta-model's training rows)."""
    settings = to_core(core.ClassificationConfig, config)
    labels = product_labels.reset_index(drop=True)
    clean = labels[["nm"]].merge(clean_products.drop_duplicates("nm"), on="nm", how="left")
    groups = core.product_groups(clean, image_index, settings.group_by, settings.max_title_products)
    features = _features(labels, text_embeddings, image_embeddings, joint_embeddings)
    frames, choices, skipped, trained, shares = [], [], [], [], {}
    # Progress in labelled rows (the nested CV's cost grows with them), rate and ETA over the labels.
    total_rows = int(sum(labels[label].notna().sum() for label in settings.labels if label in labels.columns))
    report_progress = progress_logger(context, "label_classifiers", "labelled rows fitted")
    done_rows, step_started = 0, time.perf_counter()
    for label in settings.labels:
        if label in labels.columns:
            done_rows += int(labels[label].notna().sum())
        data = core.prepare_label(labels, label, features, groups, settings)
        if isinstance(data, core.LabelSkip):
            context.log.warning(f"label {label} skipped: {data.reason} ({data.detail})")
            skipped.append({"label": label, "reason": data.reason, "detail": data.detail})
            continue
        started = time.perf_counter()
        cv = core.cross_validate_label(data, settings)
        models = core.fit_final_base_models(data, cv.final_settings, settings)
        core.save_label_models(models, models_folder(pipeline_storage, label))
        shares[label] = {str(c): float(v) for c, v in pd.Series(data.y).value_counts(normalize=True).items()}
        seconds = time.perf_counter() - started
        context.log.info(f"label {label}: {len(data.y)} rows, {len(data.classes)} classes, {seconds:.1f}s")
        report_progress(done_rows, total_rows, time.perf_counter() - step_started)
        frames.append(cv.probabilities)
        choices.append(cv.choices[cv.choices["chosen"]].drop(columns="chosen"))
        trained.append(
            {
                "label": label,
                "rows": len(data.y),
                "classes": len(data.classes),
                "groups": len(np.unique(data.groups)),
                "dropped_rare_classes": len(data.dropped_classes),
                "dropped_rare_rows": int(sum(data.dropped_classes.values())),
                **{
                    f"final_{m}": f"C={c:g}, {w}" + (f", image×{iw:g}" if m == "early_fusion" else "")
                    for m, (c, w, iw) in cv.final_settings.items()
                },
                "seconds": round(seconds, 1),
            }
        )
    worker_pool.end_worker_pool()  # the fold pool ends with the step under any executor, not 300 s idle later
    probabilities = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(core.PROBABILITY_COLUMNS))
    )
    # What drift and the retraining rule compare new drops with (the batches and size trained on).
    batches = tuple(sorted(clean_products["batch"].astype(str).unique())) if "batch" in clean_products else ("main",)
    save_training_manifest(
        TrainingManifest(batches, len(clean_products), shares), classification_models_folder(pipeline_storage)
    )
    return dg.MaterializeResult(
        value=probabilities,
        metadata={
            "dagster/row_count": len(probabilities),
            CATALOGUE_METADATA_KEY: len(clean_products),
            "trained_on_batches": ", ".join(batches),
            "trained_because": context.run.tags.get(RETRAIN_REASON_TAG, "not started by the retraining sensor"),
            "trained_labels": metadata.table(pd.DataFrame(trained)) if trained else "none",
            "skipped_labels": metadata.table(pd.DataFrame(skipped, columns=["label", "reason", "detail"])),
            "chosen_settings_per_fold": metadata.table(pd.concat(choices), max_rows=500) if choices else "none",
            "group_by": settings.group_by,
            "models_folder": str(classification_models_folder(pipeline_storage)),
        },
    )


@dg.asset(group_name="classification", kinds={"lightgbm"}, code_version="2", pool="classification")
def fusion_classifier(
    context: dg.AssetExecutionContext,
    label_classifiers: pd.DataFrame,
    clean_products: pd.DataFrame,
    product_characteristics: pd.DataFrame,
    pipeline_storage: WBStorage,
    config: ClassificationSettings,
) -> dg.MaterializeResult:
    """LightGBM decision-level fusion over the out-of-fold class probabilities of the base models (text,
    image, early fusion, joint) plus tabular product features (price, brand frequency, out-of-fold
    brand target encoding, number of characteristics), trained for each outer fold ONLY on the inner
    out-of-fold rows of that fold's training part. It boosts from its best input and keeps only the trees
    that early stopping on inner folds finds useful (possibly none). Mean-probability fusion (text +
    image) is the baseline. The final meta-model is refit on the outer out-of-fold probabilities and saved
    in LightGBM's text format. The value: their held-out predictions (stage 'outer')."""
    settings = to_core(core.ClassificationConfig, config)
    tabular = tabular_features(clean_products["nm"], clean_products, product_characteristics)
    frames, timings, diagnostics = [], [], []
    for label in label_classifiers["label"].unique():
        classes = core.label_classes(label_classifiers, label)
        started = time.perf_counter()
        predictions, per_fold = core.cross_validate_fusion(label_classifiers, label, classes, settings, tabular)
        frames.append(predictions)
        diagnostics.append(per_fold)
        final, inputs, encoding = core.fit_final_late_fusion(label_classifiers, label, classes, settings, tabular)
        core.save_fusion_model(models_folder(pipeline_storage, label), label, final, inputs, encoding)
        timings.append(
            {
                "label": label,
                "classes": len(classes),
                "final_start": core.fusion_start_name(final.start_, inputs, final.start_weights_),
                "final_trees": int(final.n_trees_),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        context.log.info(f"fusion {label}: {timings[-1]['seconds']}s")
    worker_pool.end_worker_pool()
    predictions = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(core.PROBABILITY_COLUMNS))
    )
    return dg.MaterializeResult(
        value=predictions,
        metadata={
            "dagster/row_count": len(predictions),
            "labels": metadata.table(pd.DataFrame(timings)) if timings else "none",
            "per_fold": metadata.table(pd.concat(diagnostics, ignore_index=True)) if diagnostics else "none",
            "meta_model": repr(settings.late_fusion(["a", "b"]).set_params(classes=None)),
        },
    )


@dg.asset(group_name="classification", kinds={"pandas"}, code_version="2")
def classification_report(
    context: dg.AssetExecutionContext,
    label_classifiers: pd.DataFrame,
    fusion_classifier: pd.DataFrame,
    contrastive_model: pd.DataFrame,
    joint_embeddings: pd.DataFrame,
    text_encoder: TextEncoderResource,
    config: ClassificationReportSettings,
) -> dg.MaterializeResult:
    """One row per label × model (text, image, early_fusion, mean_probability, late_fusion, and the
    zero_shot baseline: class names scored against each product's joint text-image vector, argmax,
    nothing trained): macro-F1, weighted-F1, binary F1 of the rarer class, per-class F1, bootstrap
    confidence intervals, and the gain over the best unimodal model — all on the same held-out
    (outer-fold) rows. `best_model` is chosen among the trained models only."""
    metrics_config = to_core(MetricsConfig, config)
    zero_shot_config = to_core(core.ZeroShotConfig, config)
    outer = label_classifiers[label_classifiers["stage"] == core.OUTER]
    labels = list(outer["label"].unique())
    classes = {label: core.label_classes(label_classifiers, label) for label in labels}
    zero_shot, zero_shot_table, temperature = _zero_shot(
        label_classifiers, classes, contrastive_model, joint_embeddings, text_encoder, zero_shot_config
    )
    for row in zero_shot_table:
        if row["status"] != "scored":
            context.log.warning(f"zero-shot {row['label']} not scored: {row['status']} ({row['detail']})")
    predictions = pd.concat([outer, fusion_classifier, *zero_shot], ignore_index=True)
    report = core.build_report(predictions, classes, metrics_config) if labels else pd.DataFrame(columns=REPORT_COLUMNS)
    result_metadata = {
        "dagster/row_count": len(report),
        "summary": dg.MetadataValue.md(_lead_markdown(report)) if len(report) else "no label trained",
        "model_comparison": dg.MetadataValue.md(_comparison_markdown(report)) if len(report) else "no label trained",
        "table": dg.MetadataValue.md(_report_markdown(report)) if len(report) else "no label trained",
        "zero_shot": metadata.table(pd.DataFrame(zero_shot_table, columns=["label", "status", "detail", "phrases"]))
        if zero_shot_table
        else "no label trained",
        "zero_shot_setup": dg.MetadataValue.json(
            {
                "joint_column": zero_shot_config.joint_column,
                "template": zero_shot_config.template,
                "temperature": temperature,
                "joint_model": contrastive.model_folder(contrastive_model),
            }
        ),
    }
    for label in labels:
        result_metadata[f"confusion_{label}"] = dg.MetadataValue.md(
            _confusion_markdown(report, predictions, label, classes[label])
        )
    return dg.MaterializeResult(value=report, metadata=result_metadata)


def _zero_shot(
    label_classifiers: pd.DataFrame,
    classes: dict[str, list[str]],
    contrastive_model: pd.DataFrame,
    joint_embeddings: pd.DataFrame,
    text_encoder: TextEncoderResource,
    config: core.ZeroShotConfig,
) -> tuple[list[pd.DataFrame], list[dict], float]:
    """Zero-shot outer rows per label, a status row per label, and the softmax temperature (the joint
    model's learned one; it only shapes the probabilities, never the argmax)."""
    model, _ = contrastive.load_joint_model(as_upath(contrastive.model_folder(contrastive_model)))
    temperature = float(1.0 / model.logit_scale().item())
    if not classes:
        return [], [], temperature
    encoder = text_encoder.build()
    joint_vectors = contrastive.joint_matrix(joint_embeddings, config.joint_column)

    def score(phrases: list[str], vectors: np.ndarray) -> np.ndarray:
        return contrastive.zero_shot_scores(phrases, vectors, encoder.encode, model, config.template)

    frames, table = [], []
    for label, label_classes in classes.items():
        phrases = core.class_phrases(label, label_classes, config.class_phrases)
        result = core.zero_shot_predictions(
            label_classifiers,
            label,
            label_classes,
            joint_embeddings["nm"].to_numpy(),
            joint_vectors,
            score,
            config.class_phrases,
            temperature,
        )
        shown = ", ".join(f"{c} → {p!r}" for c, p in zip(label_classes, phrases))
        if isinstance(result, core.LabelSkip):
            table.append({"label": label, "status": result.reason, "detail": result.detail, "phrases": shown})
            continue
        frames.append(result)
        table.append({"label": label, "status": "scored", "detail": f"{len(result)} rows", "phrases": shown})
    return frames, table, temperature


def _gain_text(row: pd.Series) -> str:
    """'+0.012 [-0.030, +0.054]': the gain over the best unimodal model and its paired interval."""
    return f"{row['gain_vs_best_unimodal']:+.3f} [{row['gain_low']:+.3f}, {row['gain_high']:+.3f}]"


def _lead_markdown(report: pd.DataFrame) -> str:
    """The narrow table that decides: per label, the best trained model, its macro-F1 and late fusion's gain."""
    rows = []
    for label, part in report.groupby("label", sort=False):
        by_model = part.set_index("model")
        best = str(by_model["best_model"].iloc[0])
        rows.append(
            {
                "label": label,
                "best model": best,
                "macro-F1": f"{by_model.loc[best, 'macro_f1']:.3f}",
                "late fusion − best unimodal [95% paired]": (
                    _gain_text(by_model.loc["late_fusion"]) if "late_fusion" in by_model.index else ""
                ),
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False)


def _comparison_markdown(report: pd.DataFrame) -> str:
    values = report.pivot(index="label", columns="model", values="macro_f1")
    order = [m for m in (*core.ALL_MODELS, core.ZERO_SHOT_MODEL) if m in values.columns]
    labels = list(dict.fromkeys(report["label"]))
    pivot = lambda column: report.pivot(index="label", columns="model", values=column).loc[labels, order]  # noqa: E731
    best = report.drop_duplicates("label").set_index("label")["best_model"].to_dict()
    png = grouped_bars_png(
        values.loc[labels, order],
        pivot("macro_f1_low"),
        pivot("macro_f1_high"),
        ylabel="held-out macro-F1",
        highlight=best,
    )
    return png_markdown(
        png,
        "macro-F1 per label and model",
        "Macro-F1 per label and model with 95% bootstrap "
        "intervals; the outlined bar is the model `test_predictions` uses. Look for late fusion "
        "(and early fusion) at or above the better of text and image, and for labels where the "
        "intervals overlap: there the ranking is not settled by this many rows.",
    )


def _report_markdown(report: pd.DataFrame) -> str:
    shown = report.copy()
    shown["macro_f1 [95% CI]"] = [
        f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
        for m, lo, hi in zip(shown["macro_f1"], shown["macro_f1_low"], shown["macro_f1_high"])
    ]
    shown["weighted_f1"] = shown["weighted_f1"].map("{:.3f}".format)
    shown["f1 (rarer class)"] = shown.get("f1", pd.Series(np.nan, index=shown.index)).map(
        lambda v: "" if pd.isna(v) else f"{v:.3f}"
    )
    shown["gain vs best unimodal [95% paired]"] = [_gain_text(row) for _, row in shown.iterrows()]
    columns = [
        "label",
        "model",
        "n",
        "n_classes",
        "macro_f1 [95% CI]",
        "weighted_f1",
        "f1 (rarer class)",
        "gain vs best unimodal [95% paired]",
        "best_model",
    ]
    return shown[columns].to_markdown(index=False)


def _confusion_markdown(report: pd.DataFrame, predictions: pd.DataFrame, label: str, classes: list[str]) -> str:
    own = report[report["label"] == label]
    shown = ["late_fusion", own["best_model"].iloc[0]]
    parts = []
    for model in dict.fromkeys(shown):
        part = predictions[(predictions["label"] == label) & (predictions["model"] == model)]
        png = confusion_matrix_png(part["y"], core.predicted_classes(part, classes), classes, f"{label}: {model}")
        parts.append(f"**{model}**\n\n{png_markdown(png, f'{label} {model}')}")
    return "\n\n".join(parts)


class TestPredictionSettings(dg.Config):
    """Which model predicts the test products: the best one per label in the report (by held-out
    macro-F1), or one model for every label. A product missing that model's input falls back to the
    next-best saved model (the row's `status` and `reason` say so)."""

    model: Literal["best", "text", "image", "early_fusion", "joint", "mean_probability", "late_fusion"] = "best"


@dg.asset(
    group_name="classification", kinds={"pandas"}, code_version="3", deps=["label_classifiers", "fusion_classifier"]
)
def test_predictions(
    clean_products: pd.DataFrame,
    product_characteristics: pd.DataFrame,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
    contrastive_model: pd.DataFrame,
    classification_report: pd.DataFrame,
    pipeline_storage: WBStorage,
    config: TestPredictionSettings,
) -> dg.MaterializeResult:
    """For every clean TEST product and every trained label: the predicted class and its probability
    (long table nm, label, predicted, probability, model, status, reason), from the saved final models
    (loaded without unpickling) and the saved joint model, through `core.models.prediction.predict_products` —
    the same path as `drop_predictions`. For labels the test file carries, the final model was trained
    on these rows, so the honest quality is the report's, not an agreement with the file."""
    test = clean_products.loc[clean_products["split"] == "test", ["nm"]].reset_index(drop=True)
    joint_model, _ = contrastive.load_joint_model(as_upath(contrastive.model_folder(contrastive_model)))
    labels = list(classification_report["label"].unique())
    predictions = prediction.predict_products(
        test,
        text_embeddings,
        image_embeddings,
        joint_model,
        prediction.load_saved_models(classification_models_folder(pipeline_storage), labels),
        classification_report,
        clean_products,
        product_characteristics,
        chosen=config.model,
    )
    predicted = predictions[predictions["predicted"].notna()]
    summary = (
        predicted.groupby(["label", "model"])
        .agg(products=("nm", "nunique"), mean_probability=("probability", "mean"))
        .reset_index()
        if len(predicted)
        else pd.DataFrame()
    )
    status = (
        predictions.groupby(["label", "status"]).size().unstack(fill_value=0).reset_index()
        if len(predictions)
        else pd.DataFrame()
    )
    return dg.MaterializeResult(
        value=predictions,
        metadata={
            "dagster/row_count": len(predictions),
            "test_products": len(test),
            "per_label": metadata.table(summary.round(3)) if len(summary) else "no label trained",
            "status_per_label": metadata.table(status) if len(status) else "no label trained",
            "preview": metadata.preview(predictions, rows=10),
        },
    )
