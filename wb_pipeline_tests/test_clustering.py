"""Clustering: metric functions against hand-computed cases and sklearn, k selection, the report,
and the Dagster multi-asset + check on a small synthetic catalogue."""

import dataclasses

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from wb_pipeline.core.clustering import (
    ClusteringConfig,
    choose_k,
    cluster_spaces,
    clustering_accuracy,
    clustering_report,
    duplicate_cohesion,
    label_agreement,
    silhouette,
)
from wb_pipeline.core.contrastive import joint_embedding_frame
from wb_pipeline_tests.test_contrastive import storage_resources, stub_assets, synthetic_catalogue

# PCA only and a PCA picture: UMAP's numba compilation alone takes ~20 s (the UMAP path has its own slow test).
FAST = ClusteringConfig(pca_components=8, reduction="pca", scatter_method="pca", kmeans_k_candidates=(2, 4, 8),
                        hdbscan_min_cluster_size=5)


def blobs(n_per: int = 30, centres: int = 4, dim: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(centres), n_per)
    points = rng.normal(size=(centres, dim))[labels] * 10 + rng.normal(size=(len(labels), dim))
    return points.astype(np.float32), labels


# --- metric functions --------------------------------------------------------------------------


def test_clustering_accuracy_hand_computed():
    true = np.array(["a", "a", "b", "b", "c"])
    # best matching: cluster 1 -> a (2 rows), cluster 0 -> b (2 rows); c has no cluster left -> 4/5
    assert clustering_accuracy(true, np.array([1, 1, 0, 0, 0])) == pytest.approx(0.8)
    assert clustering_accuracy(true, np.array([7, 7, 3, 3, 5])) == 1.0  # any relabelling of a perfect split
    # more clusters than classes: every row alone -> one row per class matched -> 3/5
    assert clustering_accuracy(true, np.arange(5)) == pytest.approx(0.6)


def test_label_agreement_perfect_and_against_sklearn():
    true = np.array(["x", "x", "y", "y", "z", "z"])
    perfect = label_agreement(true, np.array([2, 2, 0, 0, 1, 1]))
    assert all(value == pytest.approx(1.0) for value in perfect.values())
    pred = np.array([0, 0, 0, 1, 1, 1])
    scores = label_agreement(true, pred)
    assert scores["ami"] == pytest.approx(skm.adjusted_mutual_info_score(true, pred))
    assert scores["ari"] == pytest.approx(skm.adjusted_rand_score(true, pred))
    # one cluster per... 3 classes into 2 pure-ish clusters: homogeneity < 1, completeness < 1
    assert 0 < scores["homogeneity"] < 1 and 0 < scores["completeness"] < 1
    harmonic = 2 * scores["homogeneity"] * scores["completeness"] / (scores["homogeneity"] + scores["completeness"])
    assert scores["v_measure"] == pytest.approx(harmonic)
    assert scores["accuracy"] == pytest.approx(4 / 6)


def test_duplicate_cohesion_hand_computed():
    keys = np.array(["x", "x", "x", "y", "y", None], dtype=object)
    clusters = np.array([0, 0, 1, 2, 2, 3])
    # x: 3 pairs, 1 together; y: 1 pair, together; the missing key makes no pair -> 2 / 4
    assert duplicate_cohesion(keys, clusters) == (0.5, 4)
    # HDBSCAN noise never counts as a shared cluster
    assert duplicate_cohesion(np.array(["k", "k"], dtype=object), np.array([-1, -1])) == (0.0, 1)
    rate, pairs = duplicate_cohesion(np.array(["a", "b"], dtype=object), np.array([0, 0]))
    assert np.isnan(rate) and pairs == 0


def test_silhouette_ignores_noise_and_needs_two_clusters():
    points, labels = blobs(n_per=10, centres=2)
    clean = silhouette(points, labels, 5000, 0)
    assert clean == pytest.approx(skm.silhouette_score(points, labels))
    noisy = labels.copy()
    noisy[:3] = -1
    assert silhouette(points, noisy, 5000, 0) == pytest.approx(skm.silhouette_score(points[3:], labels[3:]))
    assert np.isnan(silhouette(points, np.zeros(len(points), int), 5000, 0))


def test_choose_k_finds_the_number_of_blobs():
    points, _ = blobs(centres=4)
    k, scores = choose_k(points, FAST)
    assert k == 4
    assert set(scores) == {2, 4, 8}
    assert choose_k(points, dataclasses.replace(FAST, kmeans_k=3)) == (3, {})


def test_cluster_spaces_and_report_on_blobs():
    points, labels = blobs(centres=4)
    rng = np.random.default_rng(1)
    spaces = {"signal": points, "noise": rng.normal(size=points.shape).astype(np.float32)}
    result = cluster_spaces(spaces, FAST)
    categories = np.array([f"c{label}" for label in labels], dtype=object)
    categories[::7] = None  # unknown for some rows: metrics use only the known ones
    keys = np.array([f"dup{i // 2}" for i in range(len(labels))], dtype=object)
    report = clustering_report(result, {"category": categories}, {"text": keys}, FAST).set_index(["space", "algorithm"])
    assert report.loc[("signal", "kmeans"), "category_ami"] > 0.95
    assert report.loc[("signal", "kmeans"), "n_clusters"] == 4
    assert report.loc[("noise", "kmeans"), "category_ami"] < 0.2
    assert report.loc[("signal", "kmeans"), "category_rows"] == int(pd.notna(categories).sum())
    assert report.loc[("signal", "kmeans"), "same_text_pairs"] == len(labels) // 2
    assert set(report.index.get_level_values("algorithm")) == {"kmeans", "hdbscan"}
    with pytest.raises(ValueError, match="different row counts"):
        cluster_spaces({"a": points, "b": points[:5]}, FAST)
    with pytest.raises(ValueError, match="NaN"):
        cluster_spaces({"a": np.full((10, 3), np.nan)}, FAST)


@pytest.mark.slow
def test_umap_reduction_is_deterministic():
    points, labels = blobs(n_per=25, centres=3)
    config = ClusteringConfig(pca_components=8, umap_components=3, kmeans_k=3, hdbscan_min_cluster_size=5)
    first = cluster_spaces({"s": points}, config)["s"]
    second = cluster_spaces({"s": points}, config)["s"]
    np.testing.assert_array_equal(first.points, second.points)
    assert first.points.shape == (75, 3)
    assert label_agreement(labels, first.labels["kmeans"])["ami"] > 0.9


# --- assets --------------------------------------------------------------------------------------


def test_clustering_assets_and_check(tmp_path, instance):
    from wb_pipeline.defs.clustering import assets, checks

    values = synthetic_catalogue(n=120, n_categories=4)
    text = values["text_embeddings"]
    image = values["image_embeddings"].subset(text.nm)
    # a stand-in joint space that carries both modalities' signal
    values["joint_embeddings"] = joint_embedding_frame(text.nm, text.vectors[:, :8] / np.linalg.norm(
        text.vectors[:, :8], axis=1, keepdims=True), image.vectors[:, :8] / np.linalg.norm(
        image.vectors[:, :8], axis=1, keepdims=True))
    run_config = {k: v for k, v in dataclasses.asdict(FAST).items()}
    run_config["kmeans_k_candidates"] = list(run_config["kmeans_k_candidates"])
    result = dg.materialize(
        [*stub_assets(values), assets.product_clusters_and_report, checks.joint_space_not_worse_than_unimodal],
        resources=storage_resources(str(tmp_path)),
        instance=instance,
        run_config={"ops": {"product_clusters_and_report": {"config": run_config}}},
    )
    assert result.success
    clusters = result.asset_value("product_clusters")
    assert clusters["nm"].tolist() == text.nm.tolist()
    expected_columns = {f"{s}_{a}" for s in ("text", "image", "early_concat", "joint") for a in ("kmeans", "hdbscan")}
    assert set(clusters.columns) == {"nm", *expected_columns}
    report = result.asset_value("clustering_report")
    assert len(report) == 8
    assert report["category_rows"].eq(120).all()
    assert report["same_text_pairs"].gt(0).all()  # the catalogue repeats titles
    metadata = result.asset_materializations_for_node("product_clusters_and_report")
    report_metadata = next(m for m in metadata if m.asset_key == dg.AssetKey("clustering_report")).metadata
    assert report_metadata["scatter"].value.startswith("![2-D map per space")
    evaluation = result.get_asset_check_evaluations()[0]
    assert evaluation.check_name == "joint_space_not_worse_than_unimodal"
    best = report.groupby("space")["category_ami"].max()
    assert evaluation.passed == bool(best["joint"] >= max(best["text"], best["image"]))
