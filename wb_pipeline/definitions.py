"""The single `dg.Definitions` of the wb_pipeline code location."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from wb_pipeline import settings
from wb_pipeline.core.monitoring.retrain import RetrainPolicy
from wb_pipeline.defs.automation import jobs
from wb_pipeline.defs.classification import assets as classification_assets
from wb_pipeline.defs.classification import checks as classification_checks
from wb_pipeline.defs.clustering import assets as clustering_assets
from wb_pipeline.defs.clustering import checks as clustering_checks
from wb_pipeline.defs.contrastive import assets as contrastive_assets
from wb_pipeline.defs.contrastive import checks as contrastive_checks
from wb_pipeline.defs.drops import assets as drops_assets
from wb_pipeline.defs.drops import checks as drops_checks
from wb_pipeline.defs.embeddings import assets as embeddings_assets
from wb_pipeline.defs.embeddings import checks as embeddings_checks
from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource
from wb_pipeline.defs.ingestion import assets as ingestion_assets
from wb_pipeline.defs.labels import assets as labels_assets
from wb_pipeline.defs.labels import checks as labels_checks
from wb_pipeline.defs.preprocessing import assets as preprocessing_assets
from wb_pipeline.defs.preprocessing import checks as preprocessing_checks
from wb_pipeline.defs.resources import WBRawData, WBStorage, WBStorageIOManager
from wb_pipeline.defs.search import assets as search_assets
from wb_pipeline.defs.search import checks as search_checks
from wb_pipeline.defs.sharding import SHARD_RESULTS_IO_MANAGER, ShardingSettings, ShardResultsIOManager

ASSET_MODULES = [
    ingestion_assets,
    preprocessing_assets,
    labels_assets,
    embeddings_assets,
    contrastive_assets,
    clustering_assets,
    classification_assets,
    search_assets,
    drops_assets,
]
CHECK_MODULES = [
    preprocessing_checks,
    labels_checks,
    embeddings_checks,
    contrastive_checks,
    clustering_checks,
    classification_checks,
    search_checks,
    drops_checks,
]


def build_definitions(
    raw_dir: str | None = None,
    storage_dir: str | None = None,
    incoming_dir: str | None = None,
    models_dir: str | None = None,
    text_encoder: TextEncoderResource | None = None,
    image_encoder: ImageEncoderResource | None = None,
    retrain_policy: RetrainPolicy | None = None,
    n_shards: int | None = None,
    products_per_shard: int | None = None,
    encoder_op_tags: Mapping[str, object] | None = None,
) -> dg.Definitions:
    """Definitions reading WB files from `raw_dir` (+ drops registered from `incoming_dir`) and writing
    outputs under `storage_dir` (defaults: `WB_PIPELINE_RAW_DIR` / `WB_PIPELINE_STORAGE_DIR` /
    `WB_PIPELINE_INCOMING_DIR`, else the bundled sample, `storage/` and `data/incoming/`).
    Converted/exported models go to `models_dir` (default `WB_PIPELINE_MODELS_DIR`, else
    `<storage_dir>/models`: `settings.layout`, which places every path); the encoders
    default to the offline e5 text and EfficientNet-Lite0 image encoders; the retraining rule to
    `settings.retrain_policy()` (`WB_PIPELINE_RETRAIN_*`), the schedule's cron to `settings.reembed_cron()`
    (`WB_PIPELINE_REEMBED_CRON`); the number of product shards to `n_shards` (default `WB_PIPELINE_SHARDS`),
    else to the power of two that keeps `products_per_shard` (default `WB_PIPELINE_PRODUCTS_PER_SHARD`)
    products in a shard, decided per run (the `sharding` resource, editable per run); `encoder_op_tags` go on
    every encoder shard step (e.g. a
    `dagster-k8s/config` pod spec, see `wb_pipeline.engines.k8s_definitions`)."""
    layout = settings.layout(storage_dir, models_dir)
    incoming_dir = incoming_dir or settings.incoming_dir()
    sharding = ShardingSettings(
        n_shards=n_shards or settings.n_shards(), products_per_shard=products_per_shard or settings.products_per_shard()
    )
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules(ASSET_MODULES),
            *embeddings_assets.build_embedding_assets(encoder_op_tags),
        ],
        asset_checks=dg.load_asset_checks_from_modules(CHECK_MODULES),
        jobs=[
            jobs.full_pipeline,
            jobs.reembed_new_products,
            jobs.refresh_search_index,
            jobs.predict_new_drops,
            jobs.retrain_models,
        ],
        schedules=[jobs.build_reembed_schedule(incoming_dir, sharding, layout, settings.reembed_cron())],
        sensors=[
            jobs.build_incoming_sensor(incoming_dir),
            jobs.predict_new_drops_sensor,
            jobs.build_retrain_sensor(retrain_policy or settings.retrain_policy()),
        ],
        resources={
            "raw_data": WBRawData(raw_dir=raw_dir or settings.raw_dir(), incoming_dir=incoming_dir),
            "io_manager": WBStorageIOManager(
                base_dir=layout.base_dir, n_shards=sharding.n_shards, products_per_shard=sharding.products_per_shard
            ),
            "pipeline_storage": WBStorage(base_dir=layout.base_dir),
            "sharding": sharding,
            SHARD_RESULTS_IO_MANAGER: ShardResultsIOManager(base_dir=layout.base_dir),
            "text_encoder": text_encoder or TextEncoderResource(cache_dir=layout.encoder_models),
            "image_encoder": image_encoder or ImageEncoderResource(cache_dir=layout.encoder_models),
            # settings every shard step of a run shares (editable in the launchpad's resources section)
            "image_index_settings": ingestion_assets.ImageIndexSettings(),
            "text_preprocessing_settings": preprocessing_assets.TextPreprocessingSettings(),
            "text_embedding_settings": embeddings_assets.TextEmbeddingSettings(),
            "image_embedding_settings": embeddings_assets.ImageEmbeddingSettings(),
        },
    )


defs = build_definitions()
