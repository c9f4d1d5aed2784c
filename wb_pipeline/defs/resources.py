"""Resources: the raw WB data source and the storage IO manager (parquet under a UPath base dir)."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
from upath import UPath

from wb_pipeline.core.data import storage
from wb_pipeline.core.embeddings.vectors import EmbeddingTable, is_embedding_table
from wb_pipeline.defs.sharding import SHARDED_LAYOUT
from wb_pipeline.settings import DEFAULT_PRODUCTS_PER_SHARD, default_sample_dir

MAIN_BATCH = "main"


class WBRawData(dg.ConfigurableResource):
    """The folder (local path or fsspec URL) holding the four WB files.

    When it points at the default bundled-sample folder and the files are missing, the
    deterministic sample is generated there first; any other folder must already hold the data.
    """

    raw_dir: str
    incoming_dir: str
    sample_products: int = 3000
    sample_seed: int = 0

    def path(self, file_name: str) -> UPath:
        return storage.as_upath(self.raw_dir) / file_name

    def folder(self, batch: str) -> UPath:
        """The folder of a batch: the main dump for 'main', else the drop's folder under incoming."""
        if batch == MAIN_BATCH:
            return storage.as_upath(self.raw_dir)
        return storage.as_upath(self.incoming_dir) / batch

    def sources(self, drops: list[str]) -> list[tuple[str, UPath]]:
        """(batch name, folder): the main dump ('main') first, then each registered drop by name."""
        return [(batch, self.folder(batch)) for batch in [MAIN_BATCH, *sorted(drops)]]

    def ensure_available(self, log=None) -> None:
        from wb_pipeline.sample_data import SampleSpec, ensure_sample

        if storage.as_upath(self.raw_dir).resolve() == UPath(default_sample_dir()).resolve():
            manifest = ensure_sample(self.raw_dir, SampleSpec(n_products=self.sample_products, seed=self.sample_seed))
            if log is not None:
                log.info(f"bundled sample ready in {self.raw_dir}: {manifest.get('counts', manifest)}")


class WBStorage(dg.ConfigurableResource):
    """The output root (local path or fsspec URL): asset files, embedding caches, converted models."""

    base_dir: str

    @property
    def layout(self) -> storage.StorageLayout:
        """Every path under the storage dir (`core.data.storage.StorageLayout`)."""
        return storage.StorageLayout(self.base_dir)

    def path(self, *parts: str) -> UPath:
        return storage.as_upath(self.base_dir).joinpath(*parts)


class _ParquetUPathIOManager(dg.UPathIOManager):
    """DataFrames and EmbeddingTables as parquet files; one file per asset (and per partition),
    written atomically. A DataFrame output with `SHARDED_LAYOUT` metadata is stored grouped by
    product shard (shard steps read their rows themselves: `defs.sharding.ShardRun`)."""

    extension = ".parquet"

    def __init__(self, base_path: UPath, n_shards: int = 0, products_per_shard: int = DEFAULT_PRODUCTS_PER_SHARD):
        super().__init__(base_path=base_path)
        self.n_shards = n_shards
        self.products_per_shard = products_per_shard

    def dump_to_path(self, context: dg.OutputContext, obj, path: UPath) -> None:
        if isinstance(obj, EmbeddingTable):
            storage.write_parquet(obj.to_arrow(), path)
        elif isinstance(obj, pd.DataFrame) and (layout := (context.definition_metadata or {}).get(SHARDED_LAYOUT)):
            # the table's own size decides its grouping: any power-of-two shard count reads it by row groups
            n_shards = self.n_shards or storage.shard_count(len(obj), self.products_per_shard)
            storage.write_sharded_parquet(obj, path, n_shards, key=layout if isinstance(layout, str) else "nm")
        elif isinstance(obj, pd.DataFrame):
            storage.write_parquet(obj, path)
        else:
            raise TypeError(
                f"{context.asset_key.to_user_string()}: the storage IO manager stores DataFrames "
                f"and EmbeddingTables, got {type(obj)}"
            )

    def load_from_path(self, context: dg.InputContext, path: UPath):
        with path.open("rb") as handle:
            table = pq.read_table(handle)
        if is_embedding_table(table):
            return EmbeddingTable.from_arrow(table)
        return storage.arrow_to_frame(table)


class WBStorageIOManager(dg.ConfigurableIOManagerFactory):
    """Asset outputs under `base_dir` (a local path or any fsspec URL): `<base_dir>/<asset key>.parquet`;
    sharded tables are grouped by `n_shards` product shards when it is set, else by the power of two that
    keeps `products_per_shard` rows in a shard (the `sharding` resource's settings)."""

    base_dir: str
    n_shards: int = 0
    products_per_shard: int = DEFAULT_PRODUCTS_PER_SHARD

    def create_io_manager(self, context) -> _ParquetUPathIOManager:
        return _ParquetUPathIOManager(
            base_path=storage.StorageLayout(self.base_dir).assets,
            n_shards=self.n_shards,
            products_per_shard=self.products_per_shard,
        )
