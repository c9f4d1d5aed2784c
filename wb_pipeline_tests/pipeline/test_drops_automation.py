"""The per-drop automation through dagster's test utilities (no pipeline run): which drops get
predictions, and when `retrain_models_sensor` asks for a retraining and why."""

import json

import dagster as dg
import pytest

from wb_pipeline.core.monitoring.retrain import RetrainPolicy
from wb_pipeline.defs.automation import jobs


def _materialize(instance, key, partition=None, **metadata):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition, metadata=metadata))


def _drift(instance, drop, text_auc, image_auc, judged=True):
    _materialize(
        instance,
        "drop_drift",
        drop,
        judged=judged,
        text_domain_auc=text_auc,
        image_domain_auc=image_auc,
        text_mmd_p_value=0.5,
        image_mmd_p_value=0.5,
    )


@pytest.fixture()
def sensor():
    return jobs.build_retrain_sensor(RetrainPolicy(drift_auc_threshold=0.8, added_share_threshold=0.25))


def _tick(sensor, instance):
    with dg.build_sensor_context(instance=instance) as context:
        return sensor(context)


def test_retrain_sensor_skips_without_trained_models(instance, sensor):
    result = _tick(sensor, instance)
    assert isinstance(result, dg.SkipReason) and "no trained classifiers" in result.skip_message


def test_retrain_sensor_fires_on_drift_once_and_says_why(instance, sensor):
    instance.add_dynamic_partitions(jobs.product_drops.name, ["calm", "odd"])
    _materialize(instance, "label_classifiers", catalogue_products=1000)
    _materialize(instance, "clean_products", **{"dagster/row_count": 1040})
    _drift(instance, "calm", 0.55, 0.62)
    result = _tick(sensor, instance)
    assert isinstance(result, dg.SkipReason) and "no retraining rule fired" in result.skip_message
    _drift(instance, "odd", 0.97, 0.91)
    request = _tick(sensor, instance)
    assert isinstance(request, dg.RunRequest)
    assert request.tags[jobs.RETRAIN_TRIGGER_TAG] == "drift"
    assert "drop odd text domain AUC 0.970 > 0.8" in request.tags[jobs.RETRAIN_REASON_TAG]
    assert "calm" not in request.tags[jobs.RETRAIN_REASON_TAG]
    assert json.loads(request.tags["wb_pipeline/retrain_figures"])["max_text_domain_auc"] == 0.97
    assert request.run_key == _tick(sensor, instance).run_key  # same training state: one retraining run
    # after the retraining, the old drift no longer counts
    _materialize(instance, "label_classifiers", catalogue_products=1040)
    assert isinstance(_tick(sensor, instance), dg.SkipReason)


def test_retrain_sensor_fires_on_accumulated_share_not_below(instance, sensor):
    instance.add_dynamic_partitions(jobs.product_drops.name, ["d1"])
    _materialize(instance, "label_classifiers", catalogue_products=1000)
    _materialize(instance, "clean_products", **{"dagster/row_count": 1249})
    _drift(instance, "d1", 0.5, 0.5)
    assert isinstance(_tick(sensor, instance), dg.SkipReason)
    _materialize(instance, "clean_products", **{"dagster/row_count": 1250})
    request = _tick(sensor, instance)
    assert isinstance(request, dg.RunRequest) and request.tags[jobs.RETRAIN_TRIGGER_TAG] == "added_share"


def test_a_too_small_drop_never_triggers(instance, sensor):
    instance.add_dynamic_partitions(jobs.product_drops.name, ["tiny"])
    _materialize(instance, "label_classifiers", catalogue_products=1000)
    _materialize(instance, "clean_products", **{"dagster/row_count": 1003})
    _drift(instance, "tiny", 0.99, 0.99, judged=False)
    assert isinstance(_tick(sensor, instance), dg.SkipReason)


def test_only_registered_ingested_unpredicted_drops_are_predicted(instance):
    instance.add_dynamic_partitions(jobs.product_drops.name, ["a", "b", "c"])
    # "c" registered after the last ingestion; "rejected" never registered (it failed validation)
    _materialize(
        instance, "raw_products_train", **{jobs.INGESTED_DROPS_METADATA_KEY: json.dumps(["a", "b", "rejected"])}
    )
    assert jobs.drops_to_predict(instance) == ["a", "b"]
    _materialize(instance, "drop_predictions", "a")
    assert jobs.drops_to_predict(instance) == ["b"]


def test_retrain_policy_from_the_environment(monkeypatch):
    from wb_pipeline import settings

    monkeypatch.setenv("WB_PIPELINE_RETRAIN_DRIFT_AUC", "0.7")
    monkeypatch.setenv("WB_PIPELINE_RETRAIN_ADDED_SHARE", "0.1")
    policy = settings.retrain_policy()
    assert policy.drift_auc_threshold == 0.7 and policy.added_share_threshold == 0.1
    monkeypatch.setenv("WB_PIPELINE_RETRAIN_ADDED_SHARE", "lots")
    with pytest.raises(ValueError, match="WB_PIPELINE_RETRAIN_ADDED_SHARE='lots' is not a number"):
        settings.retrain_policy()
    monkeypatch.setenv("WB_PIPELINE_RETRAIN_ADDED_SHARE", "0.1")
    monkeypatch.setenv("WB_PIPELINE_RETRAIN_DRIFT_AUC", "0.2")
    with pytest.raises(ValueError, match="drift_auc_threshold"):
        settings.retrain_policy()
