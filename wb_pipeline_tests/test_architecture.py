"""The design's structural promises: a thin Dagster layer over a dagster-free core, one Definitions."""

import pkgutil
import subprocess
import sys

import wb_pipeline.core


def test_core_never_imports_dagster():
    modules = [m.name for m in pkgutil.walk_packages(wb_pipeline.core.__path__, "wb_pipeline.core.")]
    modules += ["wb_pipeline.sample_data", "wb_pipeline.settings"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print('dagster' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(modules) > 10
    assert result.stdout.strip() == "False"


def test_definitions_load_with_every_group_and_check():
    from wb_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    expected = {
        "raw_products_train": "ingestion",
        "raw_products_test": "ingestion",
        "image_members": "ingestion",
        "image_index": "ingestion",
        "clean_products": "preprocessing",
        "rejected_products": "preprocessing",
        "product_text": "preprocessing",
        "product_characteristics": "labels",
        "characteristics_parse_errors": "labels",
        "product_labels": "labels",
        "text_embeddings": "embeddings",
        "image_embeddings": "embeddings",
        "contrastive_model": "contrastive",
        "joint_embeddings": "contrastive",
        "product_clusters": "clustering",
        "clustering_report": "clustering",
        "label_classifiers": "classification",
        "fusion_classifier": "classification",
        "classification_report": "classification",
        "test_predictions": "classification",
        "product_index": "search",
        "similar_products": "search",
        "duplicate_groups": "search",
        "duplicate_report": "search",
        "drop_predictions": "drops",
        "drop_drift": "drops",
    }
    assert {k: groups.get(k) for k in expected} == expected
    check_names = {key.name for key in graph.asset_check_keys}
    assert {
        "clean_products_nm_unique",
        "input_equals_clean_plus_rejected",
        "clean_products_have_decodable_image",
        "derived_labels_within_vocabulary",
        "text_embeddings_vectors_valid",
        "image_embeddings_cover_clean_products",
        "joint_embeddings_valid",
        "training_beats_untrained_heads",
        "joint_space_not_worse_than_unimodal",
        "fusion_not_worse_than_best_unimodal",
        "test_predictions_cover_test_products",
        "product_index_size_matches_space",
        "product_index_recall",
        "duplicate_groups_partition_products",
        "drop_within_training_distribution",
    } <= check_names
    full = defs.resolve_job_def("full_pipeline")
    per_drop = {key for key in graph.get_all_asset_keys() if graph.get(key).group_name == "drops"}
    assert {key.to_user_string() for key in per_drop} == {"drop_predictions", "drop_drift"}
    # the search group too; the per-drop group runs per drop partition in its own job
    assert set(full.asset_layer.executable_asset_keys) == set(graph.get_all_asset_keys()) - per_drop
    predict = defs.resolve_job_def("predict_new_drops")
    assert set(predict.asset_layer.executable_asset_keys) == per_drop and predict.partitions_def is not None
    retrain = defs.resolve_job_def("retrain_models")
    assert {"contrastive_model", "joint_embeddings", "label_classifiers", "fusion_classifier", "product_labels"} <= {
        key.to_user_string() for key in retrain.asset_layer.executable_asset_keys
    }
    assert retrain.partitions_def is None and full.partitions_def is None
    refresh = defs.resolve_job_def("refresh_search_index")
    assert {key.to_user_string() for key in refresh.asset_layer.executable_asset_keys} == {
        "joint_embeddings",
        "product_index",
        "similar_products",
        "duplicate_groups",
        "duplicate_report",
    }
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, f"{key.to_user_string()} has no description"
