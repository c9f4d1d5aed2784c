"""Product shards: the stable shard of a product, the shard-grouped table layout, the per-shard image
check, and which shard steps a new drop needs."""

from __future__ import annotations

import io
import zipfile
import zlib

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from upath import UPath

from wb_pipeline.core.data import images, schema, storage
from wb_pipeline.core.data.drops import drop_shards
from wb_pipeline.core.embeddings.vectors import EmbeddingCache
from wb_pipeline.defs.automation.jobs import touched_shards
from wb_pipeline.defs.resources import WBStorageIOManager
from wb_pipeline.defs.sharding import (
    SHARD_COUNT_TAG,
    SHARDED_LAYOUT,
    SHARDS_TAG,
    ShardingSettings,
    ShardRun,
    shard_in_catalogue_order,
)


def _frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    return pd.DataFrame(
        {
            "nm": [str(v) for v in rng.permutation(10 * n)[:n]],
            "x": rng.normal(size=n),
            "text": [f"t{i}" for i in range(n)],
        }
    )


def test_a_products_shard_depends_on_its_id_only():
    ids = ["1", "12345", "987654321"]
    assert storage.product_shards(ids, 8).tolist() == [zlib.crc32(v.encode()) % 8 for v in ids]
    # the same id, in any company and any order, lands in the same shard
    assert storage.product_shards(["987654321", "5"], 8)[0] == storage.product_shards(ids, 8)[2]
    assert storage.shard_keys(4) == ["00", "01", "02", "03"] and storage.shard_keys(200)[-1] == "199"
    with pytest.raises(ValueError, match="n_shards"):
        storage.product_shards(ids, 0)


def test_sharded_layout_reads_back_whole_in_order_and_one_shard_from_its_row_groups(tmp_path):
    frame = _frame(3000)
    path = UPath(tmp_path / "t.parquet")
    storage.write_sharded_parquet(frame, path, 4)
    pd.testing.assert_frame_equal(storage.read_parquet(path), frame)  # original order restored
    shard_of = storage.product_shards(frame["nm"].tolist(), 4)
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups >= 4  # no row group holds two shards' rows
    for shard in range(4):
        got = storage.read_sharded_parquet(path, (shard, 4))
        pd.testing.assert_frame_equal(got, frame[shard_of == shard].reset_index(drop=True))
    only_x = storage.read_sharded_parquet(path, (2, 4), columns=["x"])
    assert only_x.columns.tolist() == ["x"] and len(only_x) == int((shard_of == 2).sum())
    # another shard count than the file's: still right (read whole, filtered)
    pd.testing.assert_frame_equal(
        storage.read_sharded_parquet(path, (1, 3)),
        frame[storage.product_shards(frame["nm"].tolist(), 3) == 1].reset_index(drop=True),
    )


def test_the_shard_count_is_the_power_of_two_that_keeps_the_products_per_shard():
    assert [storage.shard_count(n, 100) for n in (0, 1, 100, 101, 200, 201, 399, 400, 401)] == [
        1,
        1,
        1,
        2,
        2,
        4,
        4,
        4,
        8,
    ]
    assert storage.shard_count(10_000_000, 8000) == 2048  # 1,250 needed -> the next power of two
    with pytest.raises(ValueError, match="products_per_shard"):
        storage.shard_count(10, 0)
    assert ShardingSettings(products_per_shard=100).count_for(401) == 8
    assert ShardingSettings(n_shards=3, products_per_shard=100).count_for(401) == 3  # a fixed count wins


def test_shards_nest_across_power_of_two_counts():
    nm = [str(v) for v in range(5000)]
    at = {n: storage.product_shards(nm, n) for n in (1, 2, 4, 8)}
    for n in (2, 4, 8):
        assert (at[n] % (n // 2) == at[n // 2]).all()  # shard i of N lies inside shard i mod N/2 of N/2
    assert storage.related_shards(5, 8) == ([(1, 4), (1, 2), (0, 1)], [(5, 16), (13, 16)])
    assert storage.related_shards(0, 1) == ([], [(0, 2), (1, 2)])
    assert storage.related_shards(1, 3) == ([], [])  # a fixed count that is no power of two nests with nothing
    containing, halves = storage.related_shards(5, 8)
    for index, count in containing:  # each contains shard 5 of 8 ...
        assert set(np.flatnonzero(at[8] == 5)) <= set(np.flatnonzero(storage.product_shards(nm, count) == index))
    at_16 = storage.product_shards(nm, 16)  # ... which is the union of its halves
    assert set(np.flatnonzero(at[8] == 5)) == set(np.flatnonzero(np.isin(at_16, [i for i, _ in halves])))


def test_a_shard_starts_from_the_nearest_existing_cache_that_holds_its_products(tmp_path):
    layout = storage.StorageLayout(str(tmp_path))
    shard = ShardRun(5, 8, layout)
    assert shard.seed_caches("text_embeddings") == []
    for index, count in ((0, 1), (1, 4), (5, 16), (13, 16)):
        ShardRun(index, count, layout).cache("text_embeddings").mkdir(parents=True)
    assert shard.seed_caches("text_embeddings") == [ShardRun(1, 4, layout).cache("text_embeddings")]  # nearest
    ShardRun(1, 4, layout).cache("text_embeddings").rmdir()
    assert shard.seed_caches("text_embeddings") == [ShardRun(0, 1, layout).cache("text_embeddings")]
    ShardRun(0, 1, layout).cache("text_embeddings").rmdir()
    assert shard.seed_caches("text_embeddings") == [
        ShardRun(5, 16, layout).cache("text_embeddings"),
        ShardRun(13, 16, layout).cache("text_embeddings"),
    ]


@pytest.mark.parametrize("wanted", [1, 2, 8, 16])
def test_a_shard_of_a_nesting_count_is_read_from_the_row_groups_that_hold_it(tmp_path, monkeypatch, wanted):
    frame = _frame(3000)
    path = UPath(tmp_path / "t.parquet")
    storage.write_sharded_parquet(frame, path, 4)  # stored at 4 shards, read at another power of two
    read_groups, whole_reads = [], []
    original_groups, original_read = pq.ParquetFile.read_row_groups, pq.ParquetFile.read
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_groups",
        lambda self, g, **kw: (read_groups.append(list(g)), original_groups(self, g, **kw))[1],
    )
    monkeypatch.setattr(
        pq.ParquetFile, "read", lambda self, **kw: (whole_reads.append(1), original_read(self, **kw))[1]
    )
    shard_of = storage.product_shards(frame["nm"].tolist(), wanted)
    for index in range(wanted):
        got = storage.read_sharded_parquet(path, (index, wanted), columns=["nm", "x"])
        pd.testing.assert_frame_equal(got, frame.loc[shard_of == index, ["nm", "x"]].reset_index(drop=True))
    assert not whole_reads
    # one row group per stored shard here: a read touches the 4 / wanted stored shards its shard is made
    # of, or the one stored shard it is a part of
    assert [len(groups) for groups in read_groups] == [max(1, 4 // wanted)] * wanted


def test_sharded_layout_of_an_empty_table(tmp_path):
    path = UPath(tmp_path / "e.parquet")
    storage.write_sharded_parquet(_frame(5).iloc[:0], path, 4)
    assert storage.read_parquet(path).columns.tolist() == ["nm", "x", "text"]
    assert len(storage.read_sharded_parquet(path, (0, 4))) == 0


def test_io_manager_stores_grouped_by_shard_and_a_shard_step_reads_only_its_rows(tmp_path):
    frame = _frame(400)

    @dg.asset(metadata={SHARDED_LAYOUT: True})
    def catalogue() -> pd.DataFrame:
        return frame

    @dg.asset
    def whole(catalogue: pd.DataFrame) -> pd.DataFrame:
        return catalogue

    io_manager = WBStorageIOManager(base_dir=str(tmp_path), n_shards=4)
    assert dg.materialize([catalogue, whole], resources={"io_manager": io_manager}).success
    shard_of = storage.product_shards(frame["nm"].tolist(), 4)
    layout = storage.StorageLayout(str(tmp_path))
    pd.testing.assert_frame_equal(
        ShardRun(1, 4, layout).rows_of("catalogue"), frame[shard_of == 1].reset_index(drop=True)
    )
    assert ShardRun(2, 4, layout).rows_of("catalogue", ["nm"])["nm"].tolist() == frame["nm"][shard_of == 2].tolist()
    pd.testing.assert_frame_equal(storage.read_parquet(UPath(tmp_path / "assets" / "whole.parquet")), frame)
    stored = pq.read_table(tmp_path / "assets" / "catalogue.parquet")
    assert storage.product_shards(stored.column("nm").to_pylist(), 4).tolist() == sorted(shard_of.tolist())


def test_gathering_shards_restores_the_catalogue_order_and_refuses_stale_shards():
    frame = _frame(50)
    shard_of = storage.product_shards(frame["nm"].tolist(), 3)
    shards = pd.concat([frame[shard_of == s] for s in range(3)], ignore_index=True)
    pd.testing.assert_frame_equal(shard_in_catalogue_order(shards, frame["nm"]), frame)
    with pytest.raises(ValueError, match=f"re-run the stage without the `{SHARDS_TAG}` tag"):
        shard_in_catalogue_order(shards.iloc[1:], frame["nm"])  # a shard step that did not see a product


def _jpeg(value: int, size=(64, 64)) -> bytes:
    rng = np.random.default_rng(value)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8), "RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def _placeholder() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (240, 240, 240)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_image_index_of_the_shards_equals_the_unsharded_index(tmp_path):
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for nm in range(40):
            zf.writestr(f"{nm}.jpg", _placeholder() if nm % 9 == 0 else _jpeg(nm))  # repeats span the shards
        zf.writestr("../evil.jpg", _jpeg(99))
        zf.writestr("7.jpg", _jpeg(7))  # a second copy: both copies must land in one shard to be refused
    config = images.ImageConfig()
    with zipfile.ZipFile(path) as zf:
        whole, whole_rejected = images.build_image_index(zf, None, config)
        parts = [images.build_image_index(zf, None, config, shard=(s, 4)) for s in range(4)]
        members = images.zip_member_table(zf, path.stat().st_size)
    assert sum(len(rejected) for _, rejected in parts) == len(whole_rejected) == 3  # each reported once
    merged = images.merge_shard_indexes([index.assign(batch="main") for index, _ in parts], ["main"], config)
    pd.testing.assert_frame_equal(merged.drop(columns=["batch"]), whole)
    assert whole["is_empty"].sum() == 5  # the five copies of the placeholder, counted across shards

    # As the shard steps do it: the member table stored grouped by shard, each shard's zip opened from
    # its own rows only (not the central directory) gives the same index and rejections.
    table_path = UPath(tmp_path / "image_members.parquet")
    storage.write_sharded_parquet(members, table_path, 4, key="shard_key")
    for shard, (index, rejected) in enumerate(parts):
        rows = storage.read_sharded_parquet(table_path, (shard, 4))
        assert set(storage.product_shards(rows["shard_key"].tolist(), 4)) <= {shard}
        with path.open("rb") as handle, images.open_listed_zip(handle, rows) as listed:
            assert len(listed.infolist()) == len(rows) < len(members)
            listed_index, listed_rejected = images.build_image_index(listed, None, config, shard=(shard, 4))
        pd.testing.assert_frame_equal(listed_index, index)
        pd.testing.assert_frame_equal(listed_rejected, rejected)


def _drop(folder, ids: list[int], photos: list[int]):
    folder.mkdir(parents=True)
    pd.DataFrame(
        {"nm": ids, "title": ["t"] * len(ids), "description": ["d"] * len(ids), "characteristics": [None] * len(ids)}
    ).to_parquet(folder / schema.TRAIN_FILE, index=False)
    with zipfile.ZipFile(folder / schema.IMAGES_ZIP, "w") as zf:
        for nm in photos:
            zf.writestr(f"{nm}.jpg", _jpeg(nm))


def test_a_drop_touches_only_the_shards_of_its_products_and_photos(tmp_path):
    n = 4
    ids = [int(v) for v in range(100, 140)]
    shard_of = dict(zip(ids, storage.product_shards([str(v) for v in ids], n).tolist()))
    one = next(v for v in ids if shard_of[v] == 1)
    photo_only = next(v for v in ids if shard_of[v] == 3)  # a new photo of a product already listed
    _drop(tmp_path / "drop-a", [one], [one, photo_only])
    assert drop_shards(UPath(tmp_path / "drop-a"), n) == {1, 3}

    layout = storage.StorageLayout(str(tmp_path / "storage"))
    assert touched_shards(str(tmp_path), ["drop-a"], ShardingSettings(n_shards=n), layout) == (4, ["01", "03"])
    # a drop that cannot be read: every shard (the run reports the problem)
    (tmp_path / "drop-b").mkdir()
    (tmp_path / "drop-b" / schema.TRAIN_FILE).write_bytes(b"not parquet")
    assert touched_shards(str(tmp_path), ["drop-b"], ShardingSettings(n_shards=n), layout) == (
        4,
        storage.shard_keys(n),
    )


def test_a_drop_that_grows_the_catalogue_past_a_size_is_embedded_at_the_new_shard_count(tmp_path):
    layout = storage.StorageLayout(str(tmp_path / "storage"))
    for name, rows in (("raw_products_train", 20), ("raw_products_test", 10)):
        storage.write_parquet(pd.DataFrame({"nm": [f"{name}-{i}" for i in range(rows)]}), layout.asset_file(name))
    sharding = ShardingSettings(products_per_shard=16)
    ids = list(range(100, 103))
    _drop(tmp_path / "small", ids[:1], [])
    _drop(tmp_path / "big", ids, ids)
    # 30 products + 1 -> 2 shards; 30 + 3 -> 4 shards, and the tag names the count its keys are of
    n_small, keys_small = touched_shards(str(tmp_path), ["small"], sharding, layout)
    assert n_small == 2 and keys_small == [storage.shard_keys(2)[storage.product_shards(["100"], 2)[0]]]
    n_big, keys_big = touched_shards(str(tmp_path), ["big"], sharding, layout)
    assert n_big == 4 and keys_big == sorted(
        {storage.shard_keys(4)[s] for s in storage.product_shards(list(map(str, ids)), 4)}
    )


def test_a_run_whose_shard_count_differs_from_the_tags_runs_every_shard():
    from wb_pipeline.defs.sharding import _selected_shards

    assert _selected_shards({SHARDS_TAG: "01", SHARD_COUNT_TAG: "4"}, 4) == [1]
    assert _selected_shards({SHARDS_TAG: "01", SHARD_COUNT_TAG: "4"}, 8) == list(range(8))


def test_an_empty_embedding_cache_starts_from_the_related_shards_cache(tmp_path):
    vectors = np.eye(4, dtype=np.float32)
    old = EmbeddingCache(UPath(tmp_path / "4-shards" / "01"), "enc", 4)
    old.add(["a", "b", "c"], vectors[:3])
    new = EmbeddingCache(UPath(tmp_path / "8-shards" / "05"), "enc", 4, seeds=[UPath(tmp_path / "4-shards" / "01")])
    found, got = new.lookup(["a", "zz", "c"])
    assert found.tolist() == [True, False, True] and np.array_equal(got, vectors[[0, 2]])
    # only what was asked for moved over, and it is this cache's own now
    reopened = EmbeddingCache(UPath(tmp_path / "8-shards" / "05"), "enc", 4)
    assert len(reopened) == 2 and reopened.lookup(["b"])[0].tolist() == [False]
    # a cache that holds vectors does not consult its seeds
    seeded_again = EmbeddingCache(
        UPath(tmp_path / "8-shards" / "05"), "enc", 4, seeds=[UPath(tmp_path / "4-shards" / "01")]
    )
    assert seeded_again.lookup(["b"])[0].tolist() == [False]


def test_image_members_streams_the_zip_directory(tmp_path, instance, small_sample_dir, monkeypatch):
    # A step that parsed the whole central directory with zipfile would carry the whole catalogue's
    # members (~630 B each): image_members streams the records (images.iter_member_tables), the
    # image-check and image-embedding shard steps open the zip from their rows of image_members.
    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.embeddings.resources import ImageEncoderResource

    parsed = []
    original = zipfile.ZipFile._RealGetContents
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: (parsed.append(1), original(self))[1])
    defs = build_definitions(
        raw_dir=str(small_sample_dir),
        storage_dir=str(tmp_path / "storage"),
        incoming_dir=str(tmp_path / "incoming"),
        n_shards=4,
        image_encoder=ImageEncoderResource(engine="torch", cache_dir=str(tmp_path / "models")),
    )
    # image_members, the raw tables, cleaning, 4 image-check and 4 image-embedding shards and their gathers
    selection = dg.AssetSelection.assets("image_embeddings").upstream().required_multi_asset_neighbors()
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=selection.resolve(defs.resolve_asset_graph())
    )
    assert job.execute_in_process(instance=instance).success
    assert parsed == []  # no step parses the whole directory: image_members streams it, shards open theirs
    members = defs.load_asset_value("image_members", instance=instance)
    index = defs.load_asset_value("image_index", instance=instance)
    vectors = defs.load_asset_value("image_embeddings", instance=instance)
    assert set(index["member"]) <= set(members["member"]) and len(members) >= len(index)
    assert len(vectors.nm) > 0 and np.isfinite(vectors.vectors).all()


def test_the_shards_tag_selects_shards_and_an_unknown_shard_is_refused():
    from wb_pipeline.defs.sharding import _selected_shards

    assert _selected_shards({}, 4) == [0, 1, 2, 3]
    assert _selected_shards({SHARDS_TAG: "03, 01"}, 4) == [3, 1]
    with pytest.raises(ValueError, match=r"no shard \['07'\] among 4 shards"):
        _selected_shards({SHARDS_TAG: "01,07"}, 4)


def test_a_shard_output_that_never_ran_names_the_fix(tmp_path):
    from wb_pipeline.defs.sharding import read_shard_output

    missing = storage.StorageLayout(str(tmp_path)).shard_output("text_embeddings", 4, "02")
    with pytest.raises(FileNotFoundError, match=f"has not run at this shard count yet.*`{SHARDS_TAG}`"):
        read_shard_output(missing)


def test_the_asset_graph_is_the_same_at_any_shard_count(tmp_path):
    from wb_pipeline.definitions import build_definitions

    graphs = {}
    for n_shards in (1, 4, 512):
        defs = build_definitions(
            raw_dir=str(tmp_path / "raw"), storage_dir=str(tmp_path / "storage"), n_shards=n_shards
        )
        graph = defs.resolve_asset_graph()
        graphs[n_shards] = (
            sorted(key.to_user_string() for key in graph.get_all_asset_keys()),
            sorted(key.to_user_string() for key in graph.asset_check_keys),
            sorted(op.name for op in defs.resolve_job_def("full_pipeline").graph.iterate_op_defs()),
        )
    assert graphs[1] == graphs[4] == graphs[512]
    assets = graphs[1][0]
    assert {"image_index", "product_text", "text_embeddings", "image_embeddings"} <= set(assets)
    assert not [name for name in assets if "shard" in name]  # one node per stage, no shard assets
