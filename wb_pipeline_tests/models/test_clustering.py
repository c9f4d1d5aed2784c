"""Clustering: metric functions against hand-computed cases and sklearn, k selection, the report,
and the Dagster multi-asset + check on a small synthetic catalogue."""

import dataclasses

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from wb_pipeline.core.models.clustering import (
    ClusteringConfig,
    choose_k,
    choose_space,
    cluster_spaces,
    clustering_accuracy,
    clustering_report,
    duplicate_cohesion,
    equal_k_comparison,
    equal_k_over_recipes,
    equal_k_over_seeds,
    fit_sample_rows,
    known_class_counts,
    label_agreement,
    lead_table,
    scatter_2d,
    seed_comparison,
    silhouette,
)
from wb_pipeline.core.models.contrastive import joint_embedding_frame
from wb_pipeline_tests.models.test_contrastive import storage_resources, stub_assets, synthetic_catalogue

# PCA only and a PCA picture: UMAP's numba compilation alone takes ~20 s (the UMAP path has its own slow test).
FAST = ClusteringConfig(
    pca_components=8, reduction="pca", scatter_method="pca", kmeans_k_candidates=(2, 4, 8), hdbscan_min_cluster_size=5
)


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


def test_known_class_counts_ignore_missing_and_single_class_targets():
    targets = {
        "category": np.array(["a", "b", None, "a", "c"], dtype=object),
        "sub_category": np.array(["x", None, "x", "x", None], dtype=object),
        "empty": np.array([None] * 5, dtype=object),
    }
    assert known_class_counts(targets) == {"category": 3}


def test_cluster_spaces_and_report_on_blobs():
    points, labels = blobs(centres=4)
    rng = np.random.default_rng(1)
    spaces = {"signal": points, "noise": rng.normal(size=points.shape).astype(np.float32)}
    categories = np.array([f"c{label}" for label in labels], dtype=object)
    categories[::7] = None  # unknown for some rows: metrics use only the known ones
    # silhouette picks k=4 (the blobs); the equal-k run uses k = the 2 known classes of a coarser target
    coarse = np.array([f"half{label // 2}" for label in labels], dtype=object)
    progress = []
    result = cluster_spaces(
        spaces,
        FAST,
        equal_k=known_class_counts({"coarse": coarse}),
        progress=lambda done, total, seconds: progress.append((done, total)),
    )
    assert progress == [(1, 2), (2, 2)]
    assert result["signal"].scatter.shape == (len(points), 2)
    keys = np.array([f"dup{i // 2}" for i in range(len(labels))], dtype=object)
    report = clustering_report(result, {"category": categories, "coarse": coarse}, {"text": keys}, FAST)
    report = report.set_index(["space", "algorithm"])
    assert report.loc[("signal", "kmeans"), "category_ami"] > 0.95
    assert report.loc[("signal", "kmeans"), "n_clusters"] == 4
    assert report.loc[("signal", "kmeans"), "k_choice"] == "silhouette"
    assert report.loc[("signal", "kmeans_k_coarse"), "n_clusters"] == 2
    # 2 clusters cannot hold 4 categories: the equal-k run of the coarse target scores far lower on category
    assert report.loc[("signal", "kmeans_k_coarse"), "category_ami"] < 0.8
    assert report.loc[("noise", "kmeans"), "category_ami"] < 0.2
    assert report.loc[("signal", "kmeans"), "category_rows"] == int(pd.notna(categories).sum())
    assert report.loc[("signal", "kmeans"), "same_text_pairs"] == len(labels) // 2
    assert set(report.index.get_level_values("algorithm")) == {"kmeans", "kmeans_k_coarse", "hdbscan"}
    with pytest.raises(ValueError, match="different row counts"):
        cluster_spaces({"a": points, "b": points[:5]}, FAST)
    with pytest.raises(ValueError, match="NaN"):
        cluster_spaces({"a": np.full((10, 3), np.nan)}, FAST)


def test_above_the_fit_sample_size_clusters_are_fitted_on_a_sample_and_every_product_assigned():
    points, labels = blobs(n_per=150, centres=4)  # 600 products, fitted on 200 of them
    sampled = dataclasses.replace(FAST, fit_sample_size=200, kmeans_k=0)
    result = cluster_spaces({"s": points}, sampled, equal_k={"category": 4})["s"]
    fit_rows = fit_sample_rows(len(points), sampled)
    assert len(fit_rows) == 200 and np.array_equal(fit_rows, fit_sample_rows(len(points), sampled))  # seeded
    for algorithm in ("kmeans", "kmeans_k_category", "hdbscan"):
        assert result.labels[algorithm].shape == (600,)
        assert label_agreement(labels, result.labels[algorithm])["ami"] > 0.95, algorithm
    assert result.points.shape == (600, 8) and result.scatter.shape == (600, 2)
    # the fit saw only the sample: its labels there are what fitting the sample alone gives
    alone = cluster_spaces({"s": points[fit_rows]}, dataclasses.replace(sampled, fit_sample_size=0))["s"]
    assert label_agreement(alone.labels["kmeans"], result.labels["kmeans"][fit_rows])["ami"] == pytest.approx(1.0)
    # at or below the sample size nothing changes: every product is fitted
    assert (
        fit_sample_rows(200, sampled) is None
        and fit_sample_rows(10**6, dataclasses.replace(FAST, fit_sample_size=0)) is None
    )
    with pytest.raises(ValueError, match="fit_sample_size"):
        dataclasses.replace(FAST, fit_sample_size=50)


@pytest.mark.slow
def test_umap_fitted_on_a_sample_places_the_other_products():
    points, labels = blobs(n_per=100, centres=3)
    config = ClusteringConfig(
        pca_components=8, umap_components=3, kmeans_k=3, hdbscan_min_cluster_size=5, fit_sample_size=120
    )
    result = cluster_spaces({"s": points}, config)["s"]
    assert result.points.shape == (300, 3) and np.isfinite(result.points).all()
    assert label_agreement(labels, result.labels["kmeans"])["ami"] > 0.9


@pytest.mark.slow
def test_umap_reduction_is_deterministic():
    points, labels = blobs(n_per=25, centres=3)
    config = ClusteringConfig(pca_components=8, umap_components=3, kmeans_k=3, hdbscan_min_cluster_size=5)
    first = cluster_spaces({"s": points}, config)["s"]
    second = cluster_spaces({"s": points}, config)["s"]
    np.testing.assert_array_equal(first.points, second.points)
    assert first.points.shape == (75, 3)
    assert label_agreement(labels, first.labels["kmeans"])["ami"] > 0.9
    # the precomputed exact distance matrix is UMAP's own, so the embedding is identical to UMAP's path
    own_path = cluster_spaces({"s": points}, dataclasses.replace(config, umap_precomputed_distances=False))["s"]
    np.testing.assert_array_equal(first.points, own_path.points)


@pytest.mark.slow
def test_distance_matrix_is_bit_identical_to_umaps_small_data_matrix():
    from sklearn.metrics import pairwise_distances
    from umap.distances import euclidean

    from wb_pipeline.core.models.umap_distances import euclidean_distance_matrix

    points, _ = blobs(n_per=20, centres=3, dim=16)
    np.testing.assert_array_equal(euclidean_distance_matrix(points), pairwise_distances(points, metric=euclidean))


def test_lead_table_and_equal_k_comparison():
    report = pd.DataFrame(
        {
            "space": ["text", "image", "joint"] * 2,
            "algorithm": ["kmeans_k_category"] * 3 + ["kmeans"] * 3,
            "k_choice": ["= known category classes"] * 3 + ["silhouette"] * 3,
            "n_clusters": [5, 5, 5, 8, 16, 8],
            "category_ami": [0.4, 0.6, 0.5, 0.45, 0.3, 0.7],
            "category_v_measure": [0.5, 0.7, 0.6, 0.5, 0.4, 0.8],
        }
    )
    table = lead_table(report, ["category", "sub_category"])  # sub_category absent: no rows for it
    assert list(table.columns) == ["target", "k chosen by", "space", "k", "AMI", "V-measure"]
    assert table["k chosen by"].tolist() == ["= category classes"] * 3 + ["silhouette"] * 3
    assert table["k"].tolist() == [5, 5, 5, 8, 16, 8]
    # at its silhouette k the joint space looks best (0.7); at equal k the image space wins (0.6 > 0.5)
    comparison = equal_k_comparison(report, "category", "joint", ("text", "image"))
    assert comparison == {
        "target": "category",
        "k": 5,
        "candidate_ami": 0.5,
        "best_baseline": "image",
        "best_baseline_ami": 0.6,
        "passed": False,
    }
    assert equal_k_comparison(report, "sub_category", "joint", ("text", "image")) is None


def test_equal_k_over_seeds_scores_each_seed_and_space():
    points, labels = blobs(n_per=25, centres=4)
    rng = np.random.default_rng(1)
    spaces = {"text": points, "image": rng.normal(size=points.shape).astype(np.float32), "joint": points * 2}
    known = np.where(np.arange(len(labels)) % 2 == 0, labels.astype(str), None).astype(object)  # half labelled
    per_seed = equal_k_over_seeds(spaces, {"category": known}, FAST, seeds=[0, 1, 2])
    assert len(per_seed) == 3 * 3 and set(per_seed["k"]) == {4}
    by_space = per_seed.groupby("space")["ami"].mean()
    assert by_space["text"] > 0.9 and by_space["image"] < 0.2  # well-separated blobs vs pure noise
    table = seed_comparison(per_seed, "joint", ("text", "image")).set_index("space")
    assert table.loc["joint − text", "verdict"] == "tie"  # a scaled copy of the text space clusters the same


def test_seed_comparison_intervals_and_verdicts():
    rows = [
        {"seed": s, "target": "category", "space": space, "k": 5, "ami": ami}
        for s, (t, i, j) in enumerate([(0.60, 0.50, 0.70), (0.62, 0.52, 0.71), (0.61, 0.49, 0.69)])
        for space, ami in (("text", t), ("image", i), ("joint", j))
    ]
    table = seed_comparison(pd.DataFrame(rows), "joint", ("text", "image")).set_index("space")
    assert table.loc["text", "AMI mean"] == pytest.approx(0.61) and table.loc["text", "seeds"] == 3
    # t-interval: t(0.975, 2) · sd / √3 with sd = 0.01
    assert table.loc["text", "± (CI)"] == pytest.approx(4.302653 * 0.01 / np.sqrt(3), rel=1e-4)
    difference = table.loc["joint − text"]
    assert difference["AMI mean"] == pytest.approx(0.09) and difference["verdict"] == "above"
    noisy = pd.DataFrame(rows)
    noisy.loc[noisy["space"] == "joint", "ami"] = [0.40, 0.80, 0.66]  # mean 0.62 > 0.61, but spread wide
    assert seed_comparison(noisy, "joint", ("text", "image")).set_index("space").loc["joint − text", "verdict"] == "tie"
    lower = pd.DataFrame(rows)
    lower.loc[lower["space"] == "joint", "ami"] = [0.50, 0.51, 0.52]
    assert (
        seed_comparison(lower, "joint", ("text", "image")).set_index("space").loc["joint − text", "verdict"] == "below"
    )


def test_seed_comparison_per_recipe_also_against_the_concatenation():
    rows = [
        {"recipe": recipe, "seed": s, "target": "category", "space": space, "k": 5, "ami": ami + shift}
        for recipe, shift in (("umap", 0.0), ("pca64", -0.2))
        for s, (t, i, c, j) in enumerate([(0.60, 0.50, 0.70, 0.66), (0.62, 0.52, 0.71, 0.65), (0.61, 0.49, 0.69, 0.64)])
        for space, ami in (("text", t), ("image", i), ("early_concat", c), ("joint", j))
    ]
    table = seed_comparison(pd.DataFrame(rows), "joint", ("text", "image"))
    assert list(table["recipe"].unique()) == ["umap", "pca64"]  # one block per recipe, in order
    for recipe in ("umap", "pca64"):
        part = table[table["recipe"] == recipe].set_index("space")
        assert part.loc["joint − text", "verdict"] == "above"  # the best unimodal space is text
        assert part.loc["joint − early_concat", "verdict"] == "below"  # but the plain concatenation wins
        assert part.loc["joint − early_concat", "AMI mean"] == pytest.approx(-0.05)
    assert table.set_index(["recipe", "space"]).loc[("pca64", "text"), "AMI mean"] == pytest.approx(0.41)


def test_equal_k_over_recipes_labels_each_recipe():
    points, labels = blobs(n_per=20, centres=3)
    recipes = {"pca8": FAST, "pca4": dataclasses.replace(FAST, pca_components=4)}
    per_seed = equal_k_over_recipes({"text": points}, {"category": labels.astype(str).astype(object)}, recipes, [0, 1])
    assert per_seed.groupby("recipe").size().to_dict() == {"pca8": 2, "pca4": 2}
    assert per_seed["ami"].gt(0.9).all()


def _equal_k_report(amis: dict[str, tuple[float, float]]) -> pd.DataFrame:
    rows = []
    for space, (category, sub_category) in amis.items():
        rows.append(
            {"space": space, "algorithm": "kmeans_k_category", "category_ami": category, "sub_category_ami": np.nan}
        )
        rows.append(
            {
                "space": space,
                "algorithm": "kmeans_k_sub_category",
                "category_ami": np.nan,
                "sub_category_ami": sub_category,
            }
        )
    return pd.DataFrame(rows)


def test_choose_space_by_equal_k_ami_with_a_margin_for_the_joint_space():
    config = ClusteringConfig()
    targets = ["category", "sub_category"]
    photo_led = _equal_k_report(
        {"text": (0.24, 0.27), "image": (0.54, 0.59), "early_concat": (0.56, 0.61), "joint": (0.30, 0.30)}
    )
    space, reason, means = choose_space(photo_led, targets, config)
    assert space == "early_concat" and means["early_concat"] == pytest.approx(0.585) and "beats" in reason
    close = _equal_k_report(
        {"text": (0.64, 0.69), "image": (0.60, 0.50), "early_concat": (0.65, 0.70), "joint": (0.64, 0.69)}
    )
    assert choose_space(close, targets, config)[0] == "joint"  # +0.01 is inside the margin
    assert choose_space(close, targets, dataclasses.replace(config, space_choice_margin=0.0))[0] == "early_concat"
    assert choose_space(photo_led, targets, dataclasses.replace(config, space="text"))[:2] == (
        "text",
        "pinned by config",
    )
    no_classes = pd.DataFrame({"space": ["text", "joint"], "algorithm": ["kmeans", "kmeans"]})
    assert choose_space(no_classes, [], config)[0] == "joint"
    with pytest.raises(ValueError, match="space"):
        ClusteringConfig(space="pixels")


def test_scatter_from_the_clustering_space_needs_no_extra_fit():
    points, _ = blobs(n_per=10, centres=3)
    pca = points[:, :6]
    config = dataclasses.replace(FAST, scatter_method="clustering_space")
    xy = scatter_2d(pca, points, config)
    assert xy.shape == (30, 2)
    # the 2-D map is the PCA of the clustering space: its first axis carries the most variance there
    assert np.var(xy[:, 0]) >= np.var(xy[:, 1]) > 0
    np.testing.assert_array_equal(scatter_2d(pca, points, FAST), pca[:, :2])


# --- assets --------------------------------------------------------------------------------------


def test_clustering_assets_and_check(tmp_path, instance):
    from wb_pipeline.defs.clustering import assets, checks

    values = synthetic_catalogue(n=120, n_categories=4)
    text = values["text_embeddings"]
    image = values["image_embeddings"].subset(text.nm)
    # a stand-in joint space that carries both modalities' signal
    values["joint_embeddings"] = joint_embedding_frame(
        text.nm,
        text.vectors[:, :8] / np.linalg.norm(text.vectors[:, :8], axis=1, keepdims=True),
        image.vectors[:, :8] / np.linalg.norm(image.vectors[:, :8], axis=1, keepdims=True),
    )
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
    expected_columns = {
        f"{s}_{a}"
        for s in ("text", "image", "early_concat", "joint")
        for a in ("kmeans", "kmeans_k_category", "kmeans_k_sub_category", "hdbscan")
    }
    assert set(clusters.columns) == {"nm", "cluster", *expected_columns}
    report = result.asset_value("clustering_report")
    assert len(report) == 4 * 4  # kmeans (silhouette k), kmeans_k_category, kmeans_k_sub_category, hdbscan
    assert report["category_rows"].eq(120).all()
    assert report["same_text_pairs"].gt(0).all()  # the catalogue repeats titles
    metadata = result.asset_materializations_for_node("product_clusters_and_report")
    report_metadata = next(m for m in metadata if m.asset_key == dg.AssetKey("clustering_report")).metadata
    assert report_metadata["scatter"].value.startswith("![2-D map per space")
    assert "What to look for" in report_metadata["scatter"].value
    assert report_metadata["silhouette_by_k"].value.startswith("![silhouette by k per space](data:image/png;base64,")
    decides = report_metadata["decides"].value
    assert [column.name for column in decides.schema.columns] == [
        "target",
        "k chosen by",
        "space",
        "k",
        "AMI",
        "V-measure",
    ]
    assert len(decides.records) == 4 * 2 * 2  # 4 spaces x (category, sub_category) x (equal k, silhouette k)
    equal = report[report["algorithm"] == "kmeans_k_category"]
    assert equal["n_clusters"].eq(4).all()  # k = the 4 known categories in every space
    assert report.loc[report["algorithm"] == "kmeans_k_sub_category", "n_clusters"].eq(8).all()
    clusters_metadata = next(m for m in metadata if m.asset_key == dg.AssetKey("product_clusters")).metadata
    chosen = clusters_metadata["space"].value
    assert (chosen, clusters_metadata["space_reason"].value) == choose_space(
        report, ["category", "sub_category"], FAST
    )[:2]
    np.testing.assert_array_equal(clusters["cluster"], clusters[f"{chosen}_kmeans"])  # the chosen space's clusters
    evaluation = result.get_asset_check_evaluations()[0]
    assert evaluation.check_name == "joint_space_not_worse_than_unimodal"
    passed = []
    for target in ("category", "sub_category"):
        ami = report[report["algorithm"] == f"kmeans_k_{target}"].set_index("space")[f"{target}_ami"]
        passed.append(ami["joint"] >= max(ami["text"], ami["image"]))
    assert evaluation.passed == all(passed)


# --- pictures -----------------------------------------------------------------------------------


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_silhouette_by_k_png_and_grouped_bars_png():
    from wb_pipeline.core.evaluation.figures import grouped_bars_png, png_markdown, silhouette_by_k_png

    png = silhouette_by_k_png(
        {"text": {8: 0.3, 16: 0.4, 24: 0.35}, "joint": {8: 0.5, 16: 0.45}},
        {"text": 16, "joint": 8},
        marks={"k = category classes (5)": {"text": (5, 0.2)}},
    )
    width, height = _png_size(png)
    assert width > 300 and height > 200
    scores = pd.DataFrame({"text": [0.7, 0.8], "late fusion": [0.75, 0.78]}, index=["sex", "season"])
    bars = grouped_bars_png(
        scores,
        lower=scores - 0.05,
        upper=scores + 0.05,
        ylabel="macro-F1",
        highlight={"sex": "late fusion", "season": "text"},
    )
    assert _png_size(bars)[0] > 300
    markdown = png_markdown(bars, "models per label", "*What to look for:* the outlined bar")
    assert markdown.startswith("![models per label](data:image/png;base64,")
    assert markdown.endswith("\n\n*What to look for:* the outlined bar")
