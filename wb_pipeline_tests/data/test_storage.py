import os
from dataclasses import dataclass
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from upath import UPath

from wb_pipeline.core.data import storage
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.resources import WBStorageIOManager


def test_write_parquet_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = UPath(tmp_path / "t.parquet")
    storage.write_parquet(pd.DataFrame({"a": [1]}), path)

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(storage.pq, "write_table", crash)
    with pytest.raises(RuntimeError):
        storage.write_parquet(pd.DataFrame({"a": [2]}), path)
    monkeypatch.undo()
    assert storage.read_parquet(path)["a"].tolist() == [1]  # last good version survives
    assert os.listdir(tmp_path) == ["t.parquet"]


def test_memory_url_roundtrip():
    path = UPath("memory:///roundtrip/x.parquet")
    storage.write_parquet(pd.DataFrame({"nm": ["1", "2"]}), path)
    assert storage.read_parquet(path)["nm"].tolist() == ["1", "2"]


def test_io_manager_writes_one_parquet_per_asset_under_base_dir(tmp_path):
    @dg.asset
    def upstream() -> pd.DataFrame:
        return pd.DataFrame({"nm": ["1"], "x": [1.5]})

    @dg.asset
    def downstream(upstream: pd.DataFrame) -> pd.DataFrame:
        return upstream.assign(y=upstream["x"] * 2)

    result = dg.materialize(
        [upstream, downstream], resources={"io_manager": WBStorageIOManager(base_dir=str(tmp_path))}
    )
    assert result.success
    written = pd.read_parquet(tmp_path / "assets" / "downstream.parquet")
    assert written["y"].tolist() == [3.0]


def test_io_manager_keeps_partitions_apart(tmp_path):
    parts = dg.StaticPartitionsDefinition(["a", "b"])

    @dg.asset(partitions_def=parts)
    def batch(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame({"key": [context.partition_key]})

    io = WBStorageIOManager(base_dir=str(tmp_path))
    for key in ("a", "b"):
        assert dg.materialize([batch], partition_key=key, resources={"io_manager": io}).success
    assert pd.read_parquet(tmp_path / "assets" / "batch" / "a.parquet")["key"].tolist() == ["a"]
    assert pd.read_parquet(tmp_path / "assets" / "batch" / "b.parquet")["key"].tolist() == ["b"]


def test_io_manager_refuses_non_dataframes(tmp_path):
    @dg.asset
    def not_a_frame() -> dict:
        return {"a": 1}

    with pytest.raises(TypeError, match="not_a_frame.*DataFrames and EmbeddingTables"):
        dg.materialize([not_a_frame], resources={"io_manager": WBStorageIOManager(base_dir=str(tmp_path))})


@dataclass(frozen=True)
class _Core:
    threshold: int = 3
    words: tuple[str, ...] = ("не", "для")
    order: Literal["RGB", "BGR"] = "RGB"


def test_config_class_mirrors_core_dataclass_and_round_trips():
    settings_cls = config_class(_Core)
    assert to_core(_Core, settings_cls()) == _Core()
    custom = settings_cls(threshold=9, words=["x"], order="BGR")
    assert to_core(_Core, custom) == _Core(threshold=9, words=("x",), order="BGR")
    with pytest.raises(ValueError, match="order"):  # pydantic's ValidationError
        settings_cls(order="RGBA")


def test_io_manager_round_trips_embedding_tables(tmp_path):
    import numpy as np

    from wb_pipeline.core.embeddings.vectors import EmbeddingTable

    @dg.asset
    def vectors() -> EmbeddingTable:
        return EmbeddingTable(nm=["1", "2"], vectors=np.eye(2, 3, dtype=np.float32))

    @dg.asset
    def consumer(vectors: EmbeddingTable) -> pd.DataFrame:
        assert isinstance(vectors, EmbeddingTable)
        return pd.DataFrame({"nm": vectors.nm, "first": vectors.vectors[:, 0]})

    io = WBStorageIOManager(base_dir=str(tmp_path))
    assert dg.materialize([vectors, consumer], resources={"io_manager": io}).success
    assert pd.read_parquet(tmp_path / "assets" / "consumer.parquet")["first"].tolist() == [1.0, 0.0]


def test_blank_values_and_columns_are_counted_from_the_file_batch_by_batch(tmp_path):
    titles = ["a", None, "  ", "\t\n", "b"]
    frame = pd.DataFrame({"nm": ["1", "2", "3", "4", "5"], "title": titles, "n": [1, 2, 3, 4, 5]})
    path = UPath(tmp_path / "t.parquet")
    storage.write_sharded_parquet(frame, path, 2)
    assert storage.parquet_columns(path) == ["nm", "title", "n"]  # the shard layout's own column left out
    assert storage.blank_counts(path, ["title", "nm"], batch_rows=2) == {"title": 3, "nm": 0}


@pytest.mark.parametrize("n_shards", [1, 4, 300])  # 300 > MAX_SPILL_BUCKETS: two shards share a spill file
def test_a_table_written_in_pieces_is_the_table_written_whole(tmp_path, n_shards):
    rng = np.random.default_rng(n_shards)
    frame = pd.DataFrame({"nm": [str(v) for v in rng.permutation(50_000)[:2000]], "x": rng.normal(size=2000)})
    whole, pieces = UPath(tmp_path / "whole.parquet"), UPath(tmp_path / "pieces.parquet")
    storage.write_sharded_parquet(frame, whole, n_shards)
    counts = storage.write_sharded_parquet_stream(
        (frame.iloc[i : i + 300] for i in range(0, 2000, 300)), pieces, n_shards
    )
    assert (
        counts.tolist()
        == np.bincount(storage.product_shards(frame["nm"].tolist(), n_shards), minlength=n_shards).tolist()
    )
    assert pq.read_table(pieces.path).equals(pq.read_table(whole.path))  # same rows, order and layout
    pd.testing.assert_frame_equal(storage.read_parquet(pieces), frame)
    for shard in {0, n_shards // 2, n_shards - 1}:
        pd.testing.assert_frame_equal(
            storage.read_sharded_parquet(pieces, (shard, n_shards)),
            storage.read_sharded_parquet(whole, (shard, n_shards)),
        )
    empty = UPath(tmp_path / "empty.parquet")
    assert storage.write_sharded_parquet_stream([frame.iloc[:0]], empty, n_shards).sum() == 0
    assert storage.read_parquet(empty).columns.tolist() == ["nm", "x"] and len(storage.read_parquet(empty)) == 0


def test_parquet_written_piece_by_piece_is_one_file_equal_to_the_whole(tmp_path):
    pieces = [
        pd.DataFrame({"nm": [f"p{i}" for i in range(start, start + 5)], "rank": np.arange(5, dtype=np.int64)})
        for start in (0, 5, 10)
    ]
    path = UPath(tmp_path / "out.parquet")
    assert storage.write_parquet_stream(iter(pieces), path) == 15
    pd.testing.assert_frame_equal(pd.read_parquet(path), pd.concat(pieces, ignore_index=True))
    assert pq.ParquetFile(path).metadata.num_row_groups == 3  # one per piece: nothing held whole
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]  # no temp file left

    def failing():
        yield pieces[0]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        storage.write_parquet_stream(failing(), UPath(tmp_path / "failed.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]  # neither a half file nor a temp one
    with pytest.raises(ValueError, match="no pieces"):
        storage.write_parquet_stream(iter([]), UPath(tmp_path / "empty.parquet"))
