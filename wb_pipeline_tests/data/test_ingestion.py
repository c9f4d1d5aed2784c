import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from upath import UPath

from wb_pipeline.core.data import schema
from wb_pipeline.core.data.ingestion import SchemaError, normalize_nm, read_wb_table


def _write(tmp_path, table: pa.Table, name="wb_school_train.parquet") -> UPath:
    path = tmp_path / name
    pq.write_table(table, path)
    return UPath(path)


@pytest.mark.parametrize(
    "values, expected",
    [
        (pa.array([101, 202], pa.int64()), ["101", "202"]),
        (pa.array([101.0, None]), ["101", None]),
        (pa.array([" 101 ", "", None]), ["101", None, None]),
        (pa.array([7], pa.uint32()), ["7"]),
    ],
)
def test_normalize_nm_gives_strings(values, expected):
    assert normalize_nm(values, "f").tolist() == expected


def test_normalize_nm_rejects_fractional_ids():
    with pytest.raises(SchemaError, match="f.parquet.*non-integral"):
        normalize_nm(pa.array([1.5]), "f.parquet")


def test_missing_column_error_names_file_and_column(tmp_path):
    path = _write(tmp_path, pa.table({"nm": [1], "title": ["a"], "description": ["b"]}))
    with pytest.raises(SchemaError) as error:
        read_wb_table(path, schema.TRAIN_REQUIRED_COLUMNS)
    assert "wb_school_train.parquet" in str(error.value) and "characteristics" in str(error.value)


def test_not_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "wb_school_test.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(SchemaError, match="wb_school_test.parquet.*not a readable parquet"):
        read_wb_table(UPath(path), schema.TEST_REQUIRED_COLUMNS)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_wb_table(UPath(tmp_path / "nope.parquet"), ("nm",))


def test_int_nm_in_one_file_and_str_in_another_match(tmp_path):
    ints = read_wb_table(_write(tmp_path, pa.table({"nm": [5, 6], "size": [1, 2]}), "a.parquet"), ("nm", "size"))
    strs = read_wb_table(_write(tmp_path, pa.table({"nm": ["5", "6"], "size": [1, 2]}), "b.parquet"), ("nm", "size"))
    assert ints["nm"].tolist() == strs["nm"].tolist() == ["5", "6"]
    assert ints.merge(strs, on="nm").shape[0] == 2


def test_extra_columns_kept_and_required_first(tmp_path):
    table = pa.table({"brand": ["x"], "nm": [1], "size": [3]})
    frame = read_wb_table(_write(tmp_path, table, "image_df.parquet"), ("nm", "size"))
    assert list(frame.columns) == ["nm", "size", "brand"]


def test_reads_through_an_fsspec_url():
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/wb/test.parquet", "wb") as handle:
        pq.write_table(pa.table({"nm": [1], "title": ["t"], "description": ["d"]}), handle)
    frame = read_wb_table(UPath("memory:///wb/test.parquet"), schema.TEST_REQUIRED_COLUMNS)
    assert frame["nm"].tolist() == ["1"]
