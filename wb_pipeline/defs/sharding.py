"""Product shards in the asset graph: each heavy per-product stage is ONE asset whose run fans out
into one step per shard.

A product's shard is `core.data.storage.product_shards` (CRC-32 of `nm` mod N). N is decided when a
stage's shard list runs, from the catalogue's size (`catalogue_size`: the raw tables' row counts) and
the `sharding` resource (`WB_PIPELINE_PRODUCTS_PER_SHARD`, or a fixed `WB_PIPELINE_SHARDS`), and
travels with each shard's index, so the asset graph is the same at any shard count and a re-executed
shard keeps its run's N. A sharded stage (`sharded_stage`) is a graph-backed asset of three ops:

    <stage>_list_shards   -> one dynamic output per shard (all N, or the run's `wb_pipeline/shards` tag)
    <stage>_shard[<key>]  -> the shard's work on its own rows; its table is written to
                             `assets/<stage>.shards/<N>/<key>.parquet` (+ `<key>.json`: its figures)
    <stage>_gather        -> the stage's table in catalogue order, from every shard's latest file

A failed shard is re-run alone ("re-execute from failure": the shard list is reused); the Dask
executor (`wb_pipeline.engines`) and the k8s executor give each shard step its own worker or pod.
A shard step reads only its rows of the whole-catalogue tables stored grouped by shard
(`core.data.storage.write_sharded_parquet`; the IO manager does it for outputs with `SHARDED_LAYOUT`),
so its memory follows the shard, not the catalogue. docs/DESIGN-NOTES.md ("Product shards") says why
dynamic shard steps rather than one asset per shard or Dagster partitions.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
from upath import UPath

from wb_pipeline.core.data import storage
from wb_pipeline.core.data.storage import shard_keys
from wb_pipeline.core.embeddings.vectors import EmbeddingTable, is_embedding_table
from wb_pipeline.settings import DEFAULT_PRODUCTS_PER_SHARD

# Output metadata: store this DataFrame grouped by product shard (the IO manager's `n_shards`); True
# shards by the `nm` column, a column name by that column.
SHARDED_LAYOUT = "wb_pipeline/sharded_layout"
# Run tag: run only these shards' steps (comma-separated keys, e.g. "01,03"); the others keep their
# latest output. The re-embed schedule sets it to the shards a drop touches, and SHARD_COUNT_TAG to the
# count those keys are of: a run whose own count differs (the catalogue crossed a size) runs every shard.
SHARDS_TAG = "wb_pipeline/shards"
SHARD_COUNT_TAG = "wb_pipeline/shard_count"
SHARD_RESULTS_IO_MANAGER = "shard_results_io_manager"
# The tables whose row counts are the catalogue's size (every product ingested, drops included).
CATALOGUE_TABLES = ("raw_products_train", "raw_products_test")


class ShardingSettings(dg.ConfigurableResource):
    """How many product shards the heavy stages run as (one step each): `n_shards` when it is set
    (`WB_PIPELINE_SHARDS`), else the power of two that keeps `products_per_shard`
    (`WB_PIPELINE_PRODUCTS_PER_SHARD`) or fewer products in a shard (`core.data.storage.shard_count`).
    Decided per run from the catalogue's size; a new count starts from the caches of the count before
    (`core.data.storage.related_shards`)."""

    n_shards: int = 0
    products_per_shard: int = DEFAULT_PRODUCTS_PER_SHARD

    def count_for(self, n_products: int) -> int:
        return self.n_shards or storage.shard_count(n_products, self.products_per_shard)


def catalogue_size(layout: storage.StorageLayout) -> int:
    """Products in the catalogue's raw tables, from their parquet footers (0 before the first ingestion)."""
    paths = [layout.asset_file(name) for name in CATALOGUE_TABLES]
    return sum(storage.parquet_rows(path) for path in paths if path.exists())


def after(*assets: str) -> dict[str, dg.AssetIn]:
    """Inputs that order a sharded stage after `assets` without loading them (its steps read the
    rows they need from storage themselves)."""
    return {name: dg.AssetIn(dagster_type=dg.Nothing) for name in assets}


@dataclass(frozen=True)
class ShardRun:
    """What a shard step knows: its index and key, the run's shard count, and the storage to read from."""

    index: int
    n_shards: int
    layout: storage.StorageLayout

    @property
    def key(self) -> str:
        return shard_keys(self.n_shards)[self.index]

    @property
    def shard(self) -> tuple[int, int]:
        return (self.index, self.n_shards)

    def rows_of(self, asset: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """This shard's rows of a whole-catalogue table stored grouped by shard (`SHARDED_LAYOUT`)."""
        return storage.read_sharded_parquet(
            self.layout.asset_file(asset), self.shard, None if columns is None else list(columns)
        )

    def output_of(self, stage: str):
        """This shard's latest output of another sharded stage (a DataFrame or an EmbeddingTable)."""
        return read_shard_output(self.layout.shard_output(stage, self.n_shards, self.key))

    def cache(self, stage: str, name: str | None = None) -> UPath:
        return self.layout.shard_cache(stage, self.n_shards, name or self.key)

    def seed_caches(self, stage: str, name: Callable[[ShardRun], str] | None = None) -> list[UPath]:
        """Where this shard's cache of `stage` (file or folder `name(shard)`, default its key) can start
        from after the shard count changed (`storage.related_shards`): the nearest existing cache of a
        shard that contains this one, else the existing caches of its two halves."""
        containing, halves = storage.related_shards(*self.shard)

        def path(index: int, count: int) -> UPath:
            related = ShardRun(index, count, self.layout)
            return related.cache(stage, name(related) if name else None)

        for index, count in containing:
            if path(index, count).exists():
                return [path(index, count)]
        return [path(index, count) for index, count in halves if path(index, count).exists()]


@dataclass
class ShardOutputs:
    """Every shard's latest output of a stage (in shard order) and the figures each reported; `ran`:
    the keys whose step belongs to this run (a run may skip untouched shards)."""

    values: list
    metadata: list[dict]
    ran: set[str] = field(default_factory=set)

    def summed(self, key: str, ran_only: bool = False) -> int:
        """`key` summed over the shards (only over those run in this run with `ran_only`)."""
        return int(sum(int(meta.get(key) or 0) for meta in self.metadata if not ran_only or meta["shard"] in self.ran))


def read_shard_output(path: UPath):
    try:
        with storage.open_regular_file(path) as handle:
            table = pq.read_table(handle)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: that shard has not run at this shard count yet; run the stage without "
            f"the `{SHARDS_TAG}` tag"
        ) from None
    return EmbeddingTable.from_arrow(table) if is_embedding_table(table) else storage.arrow_to_frame(table)


def _write_shard_output(path: UPath, value, metadata: Mapping) -> None:
    if isinstance(value, EmbeddingTable):
        storage.write_parquet(value.to_arrow(), path)
    else:
        storage.write_parquet(value, path)
    storage.atomic_write_bytes(path.with_suffix(".json"), json.dumps(dict(metadata), default=str).encode())


def _selected_shards(tags: Mapping[str, str], n_shards: int) -> list[int]:
    keys = shard_keys(n_shards)
    wanted = tags.get(SHARDS_TAG)
    if not wanted or tags.get(SHARD_COUNT_TAG, str(n_shards)) != str(n_shards):
        return list(range(n_shards))
    asked = [key.strip() for key in wanted.split(",") if key.strip()]
    unknown = [key for key in asked if key not in keys]
    if unknown:
        raise ValueError(f"run tag {SHARDS_TAG}={wanted!r}: no shard {unknown} among {n_shards} shards")
    return [keys.index(key) for key in asked]


def shard_in_catalogue_order(frame: pd.DataFrame, nm: pd.Series) -> pd.DataFrame:
    """The rows of `frame` (one per product, e.g. concatenated shards) in the order of `nm`."""
    position = pd.Index(frame["nm"]).get_indexer(nm.tolist())
    if (position < 0).any() or len(position) != len(frame):
        raise ValueError(
            f"the shards hold {len(frame)} rows but the catalogue lists {len(nm)} products "
            f"({int((position < 0).sum())} missing): re-run the stage without the `{SHARDS_TAG}` tag"
        )
    return frame.iloc[position].reset_index(drop=True)


def shard_step_keys(stage: str, n_shards: int) -> list[str]:
    """The step keys of a sharded stage's shard steps in a run that ran them all."""
    return [f"{stage}.{stage}_shard[{key}]" for key in shard_keys(n_shards)]


def stage_step_keys(stage: str, n_shards: int) -> list[str]:
    """Every step of a sharded stage: its shard list, its shard steps, its gather."""
    return [f"{stage}.{stage}_list_shards", *shard_step_keys(stage, n_shards), f"{stage}.{stage}_gather"]


ShardWork = Callable[[dg.OpExecutionContext, ShardRun], tuple[object, dict]]
GatherWork = Callable[[dg.OpExecutionContext, ShardOutputs, storage.StorageLayout], tuple[object, dict]]


def sharded_stage(
    stage: str,
    *,
    upstream: Sequence[str],
    shard_work: ShardWork,
    gather_work: GatherWork,
    group_name: str,
    description: str,
    kinds: set[str],
    resources: set[str] = frozenset(),
    shard_tags: Mapping[str, object] | None = None,
    pool: str | None = None,
    output_metadata: Mapping[str, object] | None = None,
) -> dg.AssetsDefinition:
    """The asset `stage`: after `upstream`, one `<stage>_shard[<key>]` step per shard runs
    `shard_work(context, ShardRun)` -> (the shard's table, its figures), then `<stage>_gather` runs
    `gather_work(context, ShardOutputs, layout)` -> (the stage's table, its metadata). `resources`:
    the resource keys both need (besides `pipeline_storage` and `sharding`); `shard_tags` go on the
    shard steps (e.g. a k8s pod spec)."""
    needs = {"pipeline_storage", "sharding", *resources}

    @dg.op(
        name=f"{stage}_list_shards",
        ins={name: dg.In(dg.Nothing) for name in upstream},  # runs after them, loads nothing
        out=dg.DynamicOut(dict, io_manager_key=SHARD_RESULTS_IO_MANAGER),
        required_resource_keys={"sharding", "pipeline_storage"},
        description=f"The shards of `{stage}` this run computes: all, or those of the `{SHARDS_TAG}` run tag.",
    )
    def list_shards(context):
        layout = context.resources.pipeline_storage.layout
        products = catalogue_size(layout)
        n_shards = context.resources.sharding.count_for(products)
        selected = _selected_shards(context.run.tags, n_shards)
        # a shard with no output at this count yet (the count changed) runs whatever the tag says: the
        # gather needs every shard; its caches start from related shards' (`ShardRun.seed_caches`)
        never_ran = [
            index
            for index, key in enumerate(shard_keys(n_shards))
            if index not in selected and not layout.shard_output(stage, n_shards, key).exists()
        ]
        selected += never_ran
        context.log.info(
            f"{stage}: {products:,} products in {n_shards} shards; {len(selected)} run now"
            + (f" ({len(never_ran)} never ran at this count)" if never_ran else "")
        )
        for index in selected:
            yield dg.DynamicOutput({"index": index, "n_shards": n_shards}, mapping_key=shard_keys(n_shards)[index])

    @dg.op(
        name=f"{stage}_shard",
        out=dg.Out(dict, io_manager_key=SHARD_RESULTS_IO_MANAGER),
        required_resource_keys=needs,
        tags=dict(shard_tags or {}),
        pool=pool,
        description=f"One shard of `{stage}`: its products only.",
    )
    def run_shard(context, shard: dict) -> dict:
        run = ShardRun(shard["index"], shard["n_shards"], context.resources.pipeline_storage.layout)
        value, figures = shard_work(context, run)
        result = {
            "shard": run.key,
            "n_shards": run.n_shards,
            "rows": len(value),
            "run_id": context.run_id,
            # the plain figures travel on (the gather sums them); tables stay in this step's metadata
            **{name: val for name, val in figures.items() if val is None or isinstance(val, int | float | str)},
        }
        _write_shard_output(run.layout.shard_output(stage, run.n_shards, run.key), value, result)
        context.add_output_metadata({**result, **figures, "dagster/row_count": len(value)})
        return result

    @dg.op(
        name=f"{stage}_gather",
        ins={"results": dg.In(list)},
        out=dg.Out(metadata=dict(output_metadata or {})),
        required_resource_keys=needs,
        description=f"`{stage}` in catalogue order, from every shard's latest output.",
    )
    def gather(context, results: list):
        layout = context.resources.pipeline_storage.layout
        counts = {result["n_shards"] for result in results}
        if len(counts) > 1:
            raise ValueError(f"{stage}: this run's shards were listed at different shard counts {sorted(counts)}")
        n_shards = counts.pop() if counts else context.resources.sharding.count_for(catalogue_size(layout))
        paths = [layout.shard_output(stage, n_shards, key) for key in shard_keys(n_shards)]
        values = [read_shard_output(path) for path in paths]
        metadata = [json.loads(storage.read_regular_file(path.with_suffix(".json"), 1 << 20)) for path in paths]
        outputs = ShardOutputs(values, metadata, {result["shard"] for result in results})
        value, meta = gather_work(context, outputs, layout)
        context.add_output_metadata({**meta, "shards": n_shards, "shards_run_now": len(outputs.ran)})
        return value

    def stage_asset(**upstream_done):
        results = list_shards(**upstream_done).map(run_shard)
        return gather(results.collect())

    stage_asset.__signature__ = inspect.Signature(  # the graph's inputs: the upstream assets, by name
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in upstream]
    )
    return dg.graph_asset(
        name=stage,
        group_name=group_name,
        kinds=kinds,
        description=description,
        ins=after(*upstream),
        metadata=dict(output_metadata or {}),
    )(stage_asset)


class ShardResultsIOManager(dg.ConfigurableIOManager):
    """The small results a sharded stage's steps pass on (a shard index, a shard's figures) as JSON
    under `<base_dir>/runs/<run id>/`: readable by every worker that sees the storage dir, and never
    pickled."""

    base_dir: str

    def _path(self, context: dg.OutputContext) -> UPath:
        _run_id, *parts = context.get_identifier()  # step key, output name (, mapping key)
        name = ".".join(parts).replace("[", "-").replace("]", "")
        return storage.StorageLayout(self.base_dir).run_step_results(context.run_id) / f"{name}.json"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if not isinstance(obj, int | dict):
            raise TypeError(f"{context.step_key}: shard results are ints or dicts, got {type(obj)}")
        storage.atomic_write_bytes(self._path(context), json.dumps(obj).encode())

    def load_input(self, context: dg.InputContext):
        return json.loads(storage.read_regular_file(self._path(context.upstream_output), 1 << 20))
