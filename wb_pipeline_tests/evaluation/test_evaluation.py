"""The quality table of `make eval`: cross-validated retrieval against CCA on the same folds, and the
tables read from a run's assets."""

import json

import numpy as np
import pandas as pd
import pytest

from wb_pipeline import evaluate
from wb_pipeline.core.evaluation import report, training_seeds
from wb_pipeline.core.evaluation.retrieval import METHODS, cross_validated_retrieval, summarise_retrieval
from wb_pipeline.core.models.contrastive import combine_joint, train_joint_space
from wb_pipeline_tests.models.test_clustering import FAST as FAST_CLUSTERING
from wb_pipeline_tests.models.test_clustering import blobs
from wb_pipeline_tests.models.test_contrastive import FAST, paired_vectors, unique_keys


def test_cross_validated_retrieval_holds_every_pair_out_once_and_beats_chance():
    text, image = paired_vectors(n=200, seed=3)
    folds = cross_validated_retrieval(text, image, unique_keys(200, "t"), unique_keys(200, "i"), FAST, n_splits=4)
    assert set(folds["method"]) == set(METHODS)
    assert set(folds["direction"]) == {"text_to_image", "image_to_text"}
    per_fold = folds[(folds["method"] == "joint") & (folds["direction"] == "text_to_image")]
    assert per_fold["pairs"].sum() == 200 and len(per_fold) == 4  # each pair held out exactly once
    summary = summarise_retrieval(folds)
    joint = summary[summary["method"] == "joint"].set_index("direction")
    assert (joint["recall_at_10"] > 10 / 50 * 2).all()  # chance is 10/50 per fold
    baseline = summary[summary["method"] == "cca_pca128"]
    assert np.allclose(baseline["recall_at_1_gain_vs_baseline"], 0.0)
    row = summary[(summary["method"] == "joint") & (summary["direction"] == "image_to_text")].iloc[0]
    base = baseline.set_index("direction").loc["image_to_text", "recall_at_1"]
    assert row["recall_at_1_gain_vs_baseline"] == pytest.approx(row["recall_at_1"] / base - 1.0)


def test_duplicate_pairs_never_straddle_retrieval_folds():
    text, image = paired_vectors(n=120, seed=4)
    titles = [f"t{i // 2}" for i in range(120)]  # pairs of products share a title
    folds = cross_validated_retrieval(text, image, titles, unique_keys(120, "i"), FAST, n_splits=3)
    assert folds.groupby(["method", "direction"])["pairs"].sum().eq(120).all()
    with pytest.raises(ValueError, match="duplicate groups"):
        cross_validated_retrieval(text[:4], image[:4], ["same"] * 4, unique_keys(4, "i"), FAST, n_splits=3)


def test_classifier_and_rejection_tables():
    rows = []
    for model, f1 in (("text", 0.8), ("image", 0.6), ("early_fusion", 0.82), ("late_fusion", 0.79), ("zero_shot", 0.3)):
        rows.append(
            {
                "label": "sex",
                "model": model,
                "n": 100,
                "n_classes": 3,
                "macro_f1": f1,
                "macro_f1_low": f1 - 0.05,
                "macro_f1_high": f1 + 0.05,
                "best_model": "early_fusion",
                "gain_low": -0.05 if model == "late_fusion" else np.nan,
                "gain_high": 0.03,
            }
        )
    table = report.classifier_table(pd.DataFrame(rows))
    assert table.iloc[0]["late − best unimodal, 95% paired"] == "[-0.050, +0.030]"
    row = table.iloc[0]
    assert row["text"] == "0.800 [0.750, 0.850]" and row["best model"] == "early_fusion"
    assert row["late − best unimodal"] == pytest.approx(-0.01) and row["early − text"] == pytest.approx(0.02)
    rejected = pd.DataFrame({"reason": ["empty_image", "empty_image", "missing_image"]})
    shares = report.rejection_table(rejected, 200).set_index("reason")
    assert shares.loc["empty_image", "products"] == 2 and shares.loc["missing_image", "share of input"] == "0.5%"
    text = report.to_markdown("t", {"rejections": report.rejection_table(rejected, 200)}, {"n": 200})
    assert text.startswith("# t\n") and "- n: 200" in text and "## rejections" in text and "empty_image" in text
    assert (
        json.loads(report.to_json({"r": report.rejection_table(rejected, 200)}, {"n": np.int64(200)}))["notes"]["n"]
        == 200
    )


def test_evaluate_says_what_is_missing(tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    assert "classification_report" in capsys.readouterr().err


def test_quality_tables_lead_the_clustering_with_the_seed_comparison():
    per_seed = pd.DataFrame(
        [
            {"seed": s, "target": "category", "space": space, "k": 3, "ami": ami + 0.01 * s}
            for s in range(3)
            for space, ami in (("text", 0.5), ("image", 0.4), ("joint", 0.6))
        ]
    )
    empty = pd.DataFrame(columns=["space", "algorithm", "n_clusters"])
    classification = pd.DataFrame(columns=["label", "model", "n", "n_classes", "macro_f1", "best_model"])
    summary = summarise_retrieval(
        pd.DataFrame(
            [
                {
                    "fold": f,
                    "method": m,
                    "direction": "text_to_image",
                    "pairs": 10,
                    "recall_at_1": 0.2 + 0.1 * (m == "joint"),
                    "recall_at_10": 0.5,
                }
                for f in range(2)
                for m in METHODS
            ]
        )
    )
    tables = report.quality_tables(classification, summary, empty, pd.DataFrame({"reason": []}), 10, per_seed)
    (heading,) = [h for h in tables if "over 3 clustering seeds" in h]
    seeds = tables[heading].set_index("space")
    assert seeds.loc["joint − text", "verdict"] == "above" and seeds.loc["joint − text", "AMI mean"] == pytest.approx(
        0.1
    )
    assert "over" not in " ".join(
        report.quality_tables(classification, summary, empty, pd.DataFrame({"reason": []}), 10)
    )


def test_retrained_joint_vectors_follow_the_training_seed_and_reproduce_the_run():
    text, image = paired_vectors(n=160, seed=5)
    keys_t, keys_i = unique_keys(160, "t"), unique_keys(160, "i")
    vectors = training_seeds.retrained_joint_vectors(text, image, keys_t, keys_i, FAST, [0, 1])
    model, _ = train_joint_space(text, image, keys_t, keys_i, FAST)
    assert set(vectors) == {0, 1} and vectors[1].shape == (160, 2 * model.output_dim)
    assert np.allclose(np.linalg.norm(vectors[1], axis=1), 1.0, atol=1e-5)
    # seed 0 is what the asset trains with this config: the same vectors, bit for bit
    assert np.array_equal(vectors[0], combine_joint(model.project_text(text), model.project_image(image)))
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)  # another seed, another model


def test_equal_k_over_training_seeds_pools_the_joint_space_over_both_seeds():
    points, labels = blobs(n_per=20, centres=4)
    rng = np.random.default_rng(2)
    spaces = {"text": points, "image": rng.normal(size=points.shape).astype(np.float32), "joint": points}
    retrained = {1: points + rng.normal(scale=0.1, size=points.shape).astype(np.float32), 2: rng.permutation(points)}
    per_seed = training_seeds.equal_k_over_training_seeds(
        spaces, 0, retrained, {"category": labels.astype(str)}, {"pca": FAST_CLUSTERING}, [0, 1]
    )
    assert len(per_seed) == 3 * 2 + 2 * 2  # the run's three spaces, then the two retrained joint spaces
    assert set(per_seed["recipe"]) == {"pca"}
    assert per_seed.groupby("space")["train_seed"].apply(set).to_dict() == {
        "text": {0},
        "image": {0},
        "joint": {0, 1, 2},
    }
    table = report.clustering_seed_table(per_seed).set_index("space")
    assert table.loc["joint", "seeds"] == 6 and table.loc["text", "seeds"] == 2
    # the retrained space with shuffled rows scores near chance: the pooled joint mean drops below text
    assert table.loc["joint", "AMI mean"] < table.loc["text", "AMI mean"]
    with pytest.raises(ValueError, match="the run's own"):
        training_seeds.equal_k_over_training_seeds(
            spaces, 1, retrained, {"category": labels.astype(str)}, {"pca": FAST_CLUSTERING}, [0]
        )


def test_seed_comparison_uses_each_space_own_number_of_draws():
    rows = [{"seed": s, "target": "category", "space": "text", "k": 3, "ami": a} for s, a in enumerate([0.5, 0.52])]
    rows += [
        {"seed": s % 2, "target": "category", "space": "joint", "k": 3, "ami": a}
        for s, a in enumerate([0.60, 0.64, 0.62, 0.58])
    ]
    difference = report.clustering_seed_table(pd.DataFrame(rows)).set_index("space").loc["joint − text"]
    standard_error = np.sqrt(np.var([0.60, 0.64, 0.62, 0.58], ddof=1) / 4 + np.var([0.5, 0.52], ddof=1) / 2)
    assert difference["± (CI)"] == pytest.approx(12.7062 * standard_error, abs=1e-3)  # t(0.975, min(n) − 1 = 1)
    assert difference["AMI mean"] == pytest.approx(0.1, abs=1e-3)
