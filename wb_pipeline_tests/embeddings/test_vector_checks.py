"""The embedding tables' checks read the stored file batch by batch / the `nm` column alone, and fail
on what they must catch."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from upath import UPath

from wb_pipeline.core.data import storage
from wb_pipeline.core.embeddings.vectors import EmbeddingTable, check_vector_file, stored_ids
from wb_pipeline.defs.embeddings.checks import text_embedding_checks
from wb_pipeline.defs.resources import WBStorage, WBStorageIOManager


def _unit(rows: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _write(path, nm, vectors) -> UPath:
    path = UPath(path)
    storage.write_parquet(EmbeddingTable(nm=np.asarray(nm, dtype=object), vectors=vectors).to_arrow(), path)
    return path


def test_check_vector_file_reads_in_batches_and_finds_bad_rows(tmp_path):
    good = _write(tmp_path / "good.parquet", [str(i) for i in range(10)], _unit(10))
    found = check_vector_file(good, 1e-3, batch_rows=3)  # 4 batches
    assert (found.rows, found.dim, found.float32, found.finite, found.rows_not_unit_norm) == (10, 8, True, True, 0)
    bad_vectors = _unit(10)
    bad_vectors[4] *= 2.0
    bad_vectors[9, 0] = np.nan
    bad = check_vector_file(_write(tmp_path / "bad.parquet", [str(i) for i in range(10)], bad_vectors), 1e-3, 3)
    assert not bad.finite and bad.rows_not_unit_norm == 1  # the NaN row is caught by `finite`, the doubled one here
    assert list(stored_ids(good)) == [str(i) for i in range(10)]


def test_the_asset_checks_fail_on_a_bad_table_and_a_missing_product(tmp_path):
    vectors = _unit(5)
    vectors[2] = 0.0  # not unit norm

    @dg.asset(name="clean_products")
    def clean_products() -> pd.DataFrame:
        return pd.DataFrame({"nm": ["1", "2", "3", "4", "5", "6"]})

    @dg.asset(name="text_embeddings", deps=["clean_products"])
    def text_embeddings() -> EmbeddingTable:
        return EmbeddingTable(nm=np.array(["1", "2", "3", "4", "5"], dtype=object), vectors=vectors)

    result = dg.materialize(
        [clean_products, text_embeddings, *text_embedding_checks],
        resources={
            "io_manager": WBStorageIOManager(base_dir=str(tmp_path)),
            "pipeline_storage": WBStorage(base_dir=str(tmp_path)),
        },
        raise_on_error=False,
    )
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert not checks["text_embeddings_vectors_valid"].passed
    assert checks["text_embeddings_vectors_valid"].metadata["rows_not_unit_norm"].value == 1
    assert not checks["text_embeddings_cover_clean_products"].passed
    assert checks["text_embeddings_cover_clean_products"].metadata["missing"].value == 1


def test_some_rows_of_a_stored_table_are_read_from_their_row_groups_only(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from wb_pipeline.core.embeddings.vectors import read_embedding_rows

    monkeypatch.setattr(storage, "ROW_GROUP_ROWS", 100)  # 1,000 rows in 10 row groups
    nm, vectors = [str(i) for i in range(1000)], _unit(1000)
    path = _write(tmp_path / "t.parquet", nm, vectors)
    assert pq.ParquetFile(path.path).num_row_groups == 10
    groups = []
    original = pq.ParquetFile.read_row_group

    def counted(self, group, **kwargs):
        groups.append(group)
        return original(self, group, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    rows = np.array([3, 5, 250, 999])
    got = read_embedding_rows(path, rows)
    assert got.nm.tolist() == ["3", "5", "250", "999"] and np.array_equal(got.vectors, vectors[rows])
    assert groups == [0, 2, 9]  # only the groups holding the rows asked for
    assert len(read_embedding_rows(path, np.array([], np.int64))) == 0
    for bad in ([5, 3], [1000]):
        with pytest.raises((ValueError, IndexError)):
            read_embedding_rows(path, np.array(bad))


def test_rows_of_a_table_are_found_by_id_a_row_group_at_a_time(tmp_path):
    frame = pd.DataFrame({"nm": [str(i) for i in range(300)], "title": [f"t{i}" for i in range(300)], "x": range(300)})
    sharded = UPath(tmp_path / "sharded.parquet")
    storage.write_sharded_parquet(frame, sharded, 4)
    plain = UPath(tmp_path / "plain.parquet")
    storage.write_parquet(frame, plain)
    for path in (sharded, plain):
        got = storage.read_rows_where(path, "nm", ["250", "7", "nope", "42"], ["title"])
        assert got.to_dict("list") == {"nm": ["7", "42", "250"], "title": ["t7", "t42", "t250"]}  # catalogue order


def test_a_list_column_is_checked_batch_by_batch_too(tmp_path):
    vectors = _unit(7)
    vectors[2] *= 2  # off-unit
    frame = pd.DataFrame({"nm": [str(i) for i in range(7)], "joint": list(vectors)})
    frame.at[5, "joint"] = np.full(3, 1 / np.sqrt(3), np.float32)  # unit, but of another length
    path = UPath(tmp_path / "joint.parquet")
    storage.write_parquet(frame, path)
    found = check_vector_file(path, 1e-3, batch_rows=2, column="joint")
    assert (found.rows, found.dim, found.float32, found.finite, found.rows_not_unit_norm) == (7, 8, True, True, 2)
