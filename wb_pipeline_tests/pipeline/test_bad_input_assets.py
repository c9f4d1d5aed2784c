"""Hostile WB files through the real assets: every bad row ends as a recorded rejection with a reason,
every bad file as a clear error naming it; the run never crashes half-way on one bad product."""

import io
import json
import zipfile

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image

from wb_pipeline.core.data import schema
from wb_pipeline.definitions import build_definitions

UPSTREAM_OF_EMBEDDINGS = dg.AssetSelection.groups("ingestion", "preprocessing", "labels")


def _jpeg(color=(200, 30, 30), size=(256, 256), mode="RGB", noise=True) -> bytes:
    rng = np.random.default_rng(sum(color))
    pixels = np.clip(np.array(color)[None, None, :] + (rng.normal(0, 60, (*size, 3)) if noise else 0), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if mode != "I;16" else "PNG", quality=95)
    return buffer.getvalue()


def _png(mode: str) -> bytes:
    buffer = io.BytesIO()
    if mode == "I;16":
        noise = np.random.default_rng(0).integers(0, 65535, (256, 256), dtype=np.uint16)
        Image.fromarray(noise).save(buffer, format="PNG")
    else:
        noise = np.random.default_rng(1).integers(0, 255, (256, 256, 4), dtype=np.uint8)
        Image.fromarray(noise, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _chars(items) -> bytes:
    return json.dumps(items, ensure_ascii=False).encode()


def _write_hostile_dump(folder):
    folder.mkdir()
    good = _chars([{"charcName": "Пол", "charcValues": ["Женский"]}])
    form1 = str(str(json.dumps([{"charcName": "Сезон", "charcValues": ["зима", "лето"]}]).encode()).encode()).encode()
    train = pd.DataFrame(
        {
            "nm": [1, 2, 3, 4, 5, 6, 7, 8, 9, 3],
            "title": [
                "Платье женское",
                "Свитер тёплый",
                "Кружка",
                "Ваза",
                "Кроссовки",
                "Шапка",
                b"\xff\xfe\x00bad",
                "Куртка",
                "Набор",
                "Дубль кружки",
            ],
            "description": ["лёгкое", "x" * 1_000_000, "", "стекло", "беговые", "", "d", "d", "d", "d"],
            "characteristics": [
                good,
                form1,
                b"__import__('os').system('touch /tmp/pwned')",
                b"\xff\xfe",
                b'b\'b\\\'[{"charcName": "broken',
                None,
                good,
                good,
                good,
                good,
            ],
            "brand": ["A"] * 10,
            "price": [1.0] * 10,
        }
    )
    train.to_parquet(folder / schema.TRAIN_FILE, index=False)
    test = pd.DataFrame(
        {
            "nm": ["10", "11"],
            "title": ["Сумка", "Чехол"],
            "description": ["кожа", ""],
            "category": ["Несуществующая категория", "Аксессуары"],
            "sub_category": ["Сумки", "Чехлы"],
            "isadult": [False, False],
        }
    )
    test.to_parquet(folder / schema.TEST_FILE, index=False)
    members = {
        "1.jpg": _jpeg(),
        "2.jpg": _jpeg(mode="CMYK"),
        "3.jpg": _jpeg(mode="L"),
        "4.jpg": _png("RGBA"),
        "5.jpg": _png("I;16"),
        "6.jpg": _jpeg()[:300],
        "7.jpg": _jpeg(),
        "8.jpg": b"",
        "10.jpg": _jpeg(),
        "11.jpg": b"not an image at all",
        "../evil.jpg": _jpeg(),
        "nested/9.jpg": _jpeg(),
    }
    with zipfile.ZipFile(folder / schema.IMAGES_ZIP, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _materialize(raw_dir, tmp_path, instance):
    defs = build_definitions(
        raw_dir=str(raw_dir), storage_dir=str(tmp_path / "storage"), incoming_dir=str(tmp_path / "incoming")
    )
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=UPSTREAM_OF_EMBEDDINGS.resolve(defs.resolve_asset_graph())
    )
    return defs, job.execute_in_process(instance=instance, raise_on_error=False)


def test_hostile_dump_ends_in_recorded_rejections(tmp_path, instance):
    _write_hostile_dump(tmp_path / "raw")
    defs, result = _materialize(tmp_path / "raw", tmp_path, instance)
    assert result.success
    load = lambda key: defs.load_asset_value(key, instance=instance)  # noqa: E731
    clean, rejected = load("clean_products"), load("rejected_products")
    reasons = dict(zip(rejected["nm"], rejected["reason"]))
    assert reasons == {
        "3": "duplicate_nm",  # the second nm 3; the first is kept
        "6": "undecodable_image",  # truncated JPEG
        "7": "text_not_utf8",
        "8": "undecodable_image",  # zero bytes
        "9": "missing_image",  # only nested/9.jpg exists, which is refused
        "11": "undecodable_image",
    }
    assert sorted(clean["nm"]) == ["1", "10", "2", "3", "4", "5"]  # CMYK, grayscale, RGBA, 16-bit all decode
    assert len(clean.loc[clean["nm"] == "2", "description"].iloc[0]) == 1_000_000
    index_meta = {
        k: v.value
        for k, v in instance.get_latest_materialization_event(
            dg.AssetKey("image_index")
        ).asset_materialization.metadata.items()
    }
    assert index_meta["rejected_members"] == 2  # ../evil.jpg and nested/9.jpg, listed with reasons
    errors = load("characteristics_parse_errors").set_index("nm")["reason"].to_dict()
    assert set(errors) == {"3", "4", "5"} and errors["4"] == "not_utf8"
    labels = load("product_labels").set_index("nm")
    assert labels.loc["1", "sex"] == "для женщин" and labels.loc["2", "season"] == "лето"
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["file_labels_within_vocabulary"] is False  # 'Несуществующая категория' warns
    assert all(passed for name, passed in checks.items() if name != "file_labels_within_vocabulary")


def test_missing_column_fails_with_file_and_column_named(tmp_path, instance):
    _write_hostile_dump(tmp_path / "raw")
    pd.read_parquet(tmp_path / "raw" / schema.TEST_FILE).drop(columns=["description"]).to_parquet(
        tmp_path / "raw" / schema.TEST_FILE
    )
    _, result = _materialize(tmp_path / "raw", tmp_path, instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = (
        failure.step_failure_data.error.cause.message
        if failure.step_failure_data.error.cause
        else failure.step_failure_data.error.message
    )
    assert "wb_school_test.parquet" in message and "description" in message


def test_missing_raw_folder_is_a_clear_error(tmp_path, instance):
    _, result = _materialize(tmp_path / "nowhere", tmp_path, instance)
    assert not result.success
    messages = " ".join(
        str(e.step_failure_data.error.to_string()) for e in result.all_events if e.event_type_value == "STEP_FAILURE"
    )
    assert "WB input file not found" in messages and "nowhere" in messages


def test_image_index_rerun_reads_only_new_members(tmp_path, instance):
    _write_hostile_dump(tmp_path / "raw")
    defs = build_definitions(
        raw_dir=str(tmp_path / "raw"), storage_dir=str(tmp_path / "storage"), incoming_dir=str(tmp_path / "incoming")
    )

    def index_run():
        with_shards = dg.AssetSelection.assets("image_index").upstream(depth=2)  # + its shard steps + image_members
        job = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection=with_shards.resolve(defs.resolve_asset_graph())
        )
        result = job.execute_in_process(instance=instance)
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("image_index"))
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        return defs.load_asset_value("image_index", instance=instance), meta

    first, first_meta = index_run()
    assert first_meta["checked_now"] == len(first) and first_meta["reused_from_previous_index"] == 0
    second, second_meta = index_run()
    assert second_meta["checked_now"] == 0 and second_meta["reused_from_previous_index"] == len(first)
    pd.testing.assert_frame_equal(second, first)
    with zipfile.ZipFile(tmp_path / "raw" / schema.IMAGES_ZIP, "a") as zf:
        zf.writestr("12.jpg", _jpeg(color=(1, 2, 3)))
    third, third_meta = index_run()
    assert third_meta["checked_now"] == 1 and len(third) == len(first) + 1
    assert bool(third.set_index("nm").loc["12", "decodable"])
