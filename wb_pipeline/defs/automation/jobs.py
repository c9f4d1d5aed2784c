"""Jobs, the new-product sensor, the nightly re-embedding schedule, the sensor that predicts each
embedded drop, and the sensor that retrains when the rules say so."""

import json

import dagster as dg

from wb_pipeline.core.data import storage
from wb_pipeline.core.data.drops import drop_ids, scan_incoming
from wb_pipeline.core.data.storage import shard_keys
from wb_pipeline.core.monitoring.retrain import DropDrift, RetrainPolicy, decide_retrain
from wb_pipeline.defs.progress import log_finished_step, release_memory_after_step
from wb_pipeline.defs.sharding import SHARD_COUNT_TAG, SHARDS_TAG, ShardingSettings, catalogue_size
from wb_pipeline.settings import DEFAULT_REEMBED_CRON, REEMBED_CRON_ENV

# The registry of new-product drops: one dynamic partition key per drop folder (product batches,
# never one partition per product). Ingestion reads the main dump plus every registered drop.
product_drops = dg.DynamicPartitionsDefinition(name="product_drops")

# The per-drop group (predictions and drift of one drop): partitioned by `product_drops`, so it runs
# in its own job, one run per drop; every other job works on the unpartitioned catalogue.
DROPS_GROUP = "drops"
CATALOGUE = dg.AssetSelection.all() - dg.AssetSelection.groups(DROPS_GROUP)

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=CATALOGUE,
    description="Materialize the whole catalogue asset graph (with its asset checks) from the raw WB files "
    "(the per-drop group `drops` runs in `predict_new_drops`).",
    hooks={log_finished_step, release_memory_after_step},
)

reembed_new_products = dg.define_asset_job(
    "reembed_new_products",
    selection=dg.AssetSelection.groups("ingestion", "preprocessing", "embeddings"),
    description="Ingest the main dump plus every registered drop, preprocess, and embed. The embedding "
    "cache makes this embed only the products that are new or changed. On success the sensor "
    "`predict_new_drops_sensor` starts `predict_new_drops` for each drop it embedded.",
    hooks={log_finished_step, release_memory_after_step},
)

refresh_search_index = dg.define_asset_job(
    "refresh_search_index",
    selection=dg.AssetSelection.assets("joint_embeddings") | dg.AssetSelection.groups("search"),
    description="After `reembed_new_products`: project every product with the CURRENT joint model (no "
    "retraining, so indexed products keep their vectors), add the new ones to the product index instead "
    "of rebuilding it, and refresh similar products, duplicate groups and their report.",
    hooks={release_memory_after_step},
)


def build_incoming_sensor(incoming_dir: str) -> dg.SensorDefinition:
    @dg.sensor(
        name="incoming_products_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Registers valid new-product drops found in {incoming_dir} as `product_drops` partitions; "
        "a bad drop is logged with its reason and retried only when its files change.",
    )
    def incoming_products_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        registered = set(context.instance.get_dynamic_partitions(product_drops.name))
        rejected: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        new, problems = [], {}
        for drop in scan_incoming(incoming_dir):
            if drop.name in registered:
                continue
            if drop.problem is None:
                new.append(drop.name)
                rejected.pop(drop.name, None)
            elif rejected.get(drop.name) != drop.signature:
                rejected[drop.name] = drop.signature
                problems[drop.name] = drop.problem
        for name, problem in problems.items():
            context.log.warning(f"rejected drop {name}: {problem}")
        if not new and not problems:
            return dg.SkipReason(f"no new drops in {incoming_dir}")
        return dg.SensorResult(
            dynamic_partitions_requests=[product_drops.build_add_request(new)] if new else [],
            cursor=json.dumps(rejected, sort_keys=True),
        )

    return incoming_products_sensor


INGESTED_DROPS_METADATA_KEY = "drops"


def ingested_drops(instance: dg.DagsterInstance) -> set[str]:
    """Drops the latest `raw_products_train` materialization read (from its metadata)."""
    event = instance.get_latest_materialization_event(dg.AssetKey("raw_products_train"))
    if event is None or event.asset_materialization is None:
        return set()
    value = event.asset_materialization.metadata.get(INGESTED_DROPS_METADATA_KEY)
    return set(json.loads(value.value)) if value is not None else set()


def touched_shards(incoming_dir: str, drops: list[str], sharding: ShardingSettings, layout) -> tuple[int, list[str]]:
    """The shard count of a run that ingests `drops` (the catalogue's size with their products) and the
    keys of the shards they touch (an untouched shard's output would come out the same, so its steps need
    not run); all shards when a drop cannot be read."""
    size = catalogue_size(layout)
    try:
        found = [drop_ids(storage.as_upath(incoming_dir) / drop) for drop in drops]
    except Exception:  # noqa: BLE001 - unreadable here means the run itself will report it: run everything
        n_shards = sharding.count_for(size)
        return n_shards, shard_keys(n_shards)
    n_shards = sharding.count_for(size + sum(len(products) for products, _ in found))
    touched = set().union(*(storage.product_shards(products + photos, n_shards).tolist() for products, photos in found))
    keys = shard_keys(n_shards)
    return n_shards, [keys[shard] for shard in sorted(touched)]


def build_reembed_schedule(
    incoming_dir: str | None = None,
    sharding: ShardingSettings | None = None,
    layout: storage.StorageLayout | None = None,
    cron: str = DEFAULT_REEMBED_CRON,
) -> dg.ScheduleDefinition:
    """The re-embedding schedule on `cron` (`build_definitions` passes `settings.reembed_cron()`)."""

    @dg.schedule(
        name="reembed_new_products_schedule",
        job=reembed_new_products,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"On cron '{cron}' (set {REEMBED_CRON_ENV} to change): when registered drops were not "
        "ingested yet, runs `reembed_new_products`, which embeds only their products.",
    )
    def reembed_new_products_schedule(context: dg.ScheduleEvaluationContext):
        pending = sorted(
            set(context.instance.get_dynamic_partitions(product_drops.name)) - ingested_drops(context.instance)
        )
        if not pending:
            return dg.SkipReason("no registered drop waits to be embedded")
        tags = {"wb_pipeline/new_drops": ",".join(pending)}
        if incoming_dir is not None and sharding is not None and layout is not None:
            # only the shards the drops touch run their shard steps (all of them when the count changes)
            n_shards, keys = touched_shards(incoming_dir, pending, sharding, layout)
            tags[SHARDS_TAG], tags[SHARD_COUNT_TAG] = ",".join(keys), str(n_shards)
        return dg.RunRequest(run_key=f"reembed:{','.join(pending)}", tags=tags)

    return reembed_new_products_schedule


predict_new_drops = dg.define_asset_job(
    "predict_new_drops",
    selection=dg.AssetSelection.groups(DROPS_GROUP),
    description="One drop (partition): predictions from the saved models and the drift verdict (a WARN check). "
    "Started by `predict_new_drops_sensor` after `reembed_new_products`; no model is retrained.",
    hooks={log_finished_step, release_memory_after_step},
)

RETRAIN_SELECTION = dg.AssetSelection.groups("labels", "contrastive", "classification")
retrain_models = dg.define_asset_job(
    "retrain_models",
    selection=RETRAIN_SELECTION,
    description="Re-derive labels, retrain the joint-space heads (+ joint vectors) and the classifiers on the "
    "current catalogue (main dump + every ingested drop). Started by `retrain_models_sensor` when drift or "
    "the share of products added since the last training passes its threshold; the run's tags say why.",
    hooks={log_finished_step, release_memory_after_step},
)

PREDICTED_ASSET = dg.AssetKey("drop_predictions")


def drops_to_predict(instance: dg.DagsterInstance) -> list[str]:
    """Registered drops that were ingested and have no `drop_predictions` yet."""
    registered = set(instance.get_dynamic_partitions(product_drops.name))
    done = instance.get_materialized_partitions(PREDICTED_ASSET)
    return sorted((registered & ingested_drops(instance)) - done)


@dg.run_status_sensor(
    name="predict_new_drops_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[reembed_new_products],
    request_job=predict_new_drops,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="When `reembed_new_products` succeeds: one `predict_new_drops` run per ingested drop that has "
    "no predictions yet (so the nightly flow ends with predictions and a drift verdict per drop).",
)
def predict_new_drops_sensor(context: dg.RunStatusSensorContext):
    pending = drops_to_predict(context.instance)
    if not pending:
        return dg.SkipReason("every ingested drop already has predictions")
    return [
        dg.RunRequest(
            run_key=f"predict:{drop}:{context.dagster_run.run_id}",
            partition_key=drop,
            tags={"wb_pipeline/drop": drop, "wb_pipeline/after_run": context.dagster_run.run_id},
        )
        for drop in pending
    ]


TRAINED_ASSET = dg.AssetKey("label_classifiers")
DRIFT_ASSET = dg.AssetKey("drop_drift")
CATALOGUE_ASSET = dg.AssetKey("clean_products")
CATALOGUE_METADATA_KEY = "catalogue_products"  # clean products the models were trained on
RETRAIN_TRIGGER_TAG = "wb_pipeline/retrain_trigger"
RETRAIN_REASON_TAG = "wb_pipeline/retrain_reason"


def _number(metadata: dict, key: str) -> float | None:
    value = metadata.get(key)
    return None if value is None else value.value


def retrain_decision(instance: dg.DagsterInstance, policy: RetrainPolicy):
    """(decision, storage id of the last training) from the instance's event log, or (None, reason)."""
    latest = instance.fetch_materializations(TRAINED_ASSET, limit=1).records
    if not latest:
        return None, "no trained classifiers yet (run `full_pipeline` first)"
    trained = latest[0]
    at_training = _number(trained.asset_materialization.metadata, CATALOGUE_METADATA_KEY)
    if not at_training:
        return None, f"the last `label_classifiers` materialization has no `{CATALOGUE_METADATA_KEY}` metadata"
    catalogue = instance.get_latest_materialization_event(CATALOGUE_ASSET)
    now = _number(catalogue.asset_materialization.metadata, "dagster/row_count") if catalogue else None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DRIFT_ASSET, after_storage_id=trained.storage_id), limit=10_000
    ).records
    latest: dict[str, DropDrift] = {}
    for record in sorted(records, key=lambda r: r.storage_id):  # the latest judgement of each drop wins
        meta = record.asset_materialization.metadata
        drop = record.asset_materialization.partition or "?"
        latest[drop] = DropDrift(
            drop=drop,
            judged=bool(_number(meta, "judged")),
            **{
                k: _number(meta, k)
                for k in ("text_domain_auc", "image_domain_auc", "text_mmd_p_value", "image_mmd_p_value")
            },
        )
    decision = decide_retrain(list(latest.values()), int(at_training), int(now or at_training), policy)
    return decision, trained.storage_id


def build_retrain_sensor(policy: RetrainPolicy) -> dg.SensorDefinition:
    @dg.sensor(
        name="retrain_models_sensor",
        job=retrain_models,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Starts `retrain_models` once per training when a drop judged since the last training drifted "
        f"({policy.drift_by}: AUC > {policy.drift_auc_threshold:g} / MMD p < {policy.drift_mmd_p_threshold:g}) or the "
        f"products added since then reach {policy.added_share_threshold:.0%} of the catalogue trained on "
        "(set WB_PIPELINE_RETRAIN_* to change); the run's tags say which rule fired.",
    )
    def retrain_models_sensor(context: dg.SensorEvaluationContext):
        decision, trained_at = retrain_decision(context.instance, policy)
        if decision is None:
            return dg.SkipReason(trained_at)
        if not decision.retrain:
            return dg.SkipReason(f"no retraining rule fired: {json.dumps(decision.figures)}")
        reason = "; ".join(decision.reasons)
        context.log.info(f"retraining: {reason}")
        return dg.RunRequest(
            run_key=f"retrain-after:{trained_at}",
            tags={
                RETRAIN_TRIGGER_TAG: decision.trigger,
                RETRAIN_REASON_TAG: reason[:1000],
                "wb_pipeline/retrain_figures": json.dumps(decision.figures)[:1000],
            },
        )

    return retrain_models_sensor
