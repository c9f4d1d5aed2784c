"""Jobs, the new-product sensor and the nightly re-embedding schedule."""

import json
import os

import dagster as dg

from wb_pipeline.core.drops import scan_incoming
from wb_pipeline.defs.progress import log_finished_step

# The registry of new-product drops: one dynamic partition key per drop folder (product batches,
# never one partition per product). Ingestion reads the main dump plus every registered drop.
product_drops = dg.DynamicPartitionsDefinition(name="product_drops")

REEMBED_CRON_ENV = "WB_PIPELINE_REEMBED_CRON"
DEFAULT_REEMBED_CRON = "0 2 * * *"  # nightly at 02:00

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all(),
    description="Materialize the whole asset graph (with its asset checks) from the raw WB files.",
    hooks={log_finished_step},
)

reembed_new_products = dg.define_asset_job(
    "reembed_new_products",
    selection=dg.AssetSelection.groups("ingestion", "preprocessing", "embeddings"),
    description="Ingest the main dump plus every registered drop, preprocess, and embed. The embedding "
    "cache makes this embed only the products that are new or changed; downstream groups can then be "
    "refreshed with `full_pipeline`.",
    hooks={log_finished_step},
)

refresh_search_index = dg.define_asset_job(
    "refresh_search_index",
    selection=dg.AssetSelection.assets("joint_embeddings") | dg.AssetSelection.groups("search"),
    description="After `reembed_new_products`: project every product with the CURRENT joint model (no "
    "retraining, so indexed products keep their vectors), add the new ones to the product index instead "
    "of rebuilding it, and refresh similar products, duplicate groups and their report.",
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


def build_reembed_schedule() -> dg.ScheduleDefinition:
    cron = os.environ.get(REEMBED_CRON_ENV) or DEFAULT_REEMBED_CRON

    @dg.schedule(
        name="reembed_new_products_schedule",
        job=reembed_new_products,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"On cron '{cron}' (set {REEMBED_CRON_ENV} to change): when registered drops were not "
        "ingested yet, runs `reembed_new_products`, which embeds only their products.",
    )
    def reembed_new_products_schedule(context: dg.ScheduleEvaluationContext):
        pending = sorted(set(context.instance.get_dynamic_partitions(product_drops.name)) - ingested_drops(context.instance))
        if not pending:
            return dg.SkipReason("no registered drop waits to be embedded")
        return dg.RunRequest(
            run_key=f"reembed:{','.join(pending)}",
            tags={"wb_pipeline/new_drops": ",".join(pending)},
        )

    return reembed_new_products_schedule
