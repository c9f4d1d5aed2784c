"""The quality table of `make eval`: cross-validated retrieval against CCA on the same folds, and the
tables read from a run's assets."""

import json

import numpy as np
import pandas as pd
import pytest

from wb_pipeline import evaluate
from wb_pipeline.core.evaluation import report
from wb_pipeline.core.evaluation.retrieval import METHODS, cross_validated_retrieval, summarise_retrieval
from wb_pipeline_tests.test_contrastive import FAST, paired_vectors, unique_keys


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
        rows.append({"label": "sex", "model": model, "n": 100, "n_classes": 3, "macro_f1": f1,
                     "macro_f1_low": f1 - 0.05, "macro_f1_high": f1 + 0.05, "best_model": "early_fusion",
                     "gain_low": -0.05 if model == "late_fusion" else np.nan, "gain_high": 0.03})
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
    assert json.loads(report.to_json({"r": report.rejection_table(rejected, 200)}, {"n": np.int64(200)}))["notes"]["n"] == 200


def test_evaluate_says_what_is_missing(tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    assert "classification_report" in capsys.readouterr().err


def test_quality_tables_lead_the_clustering_with_the_seed_comparison():
    per_seed = pd.DataFrame([{"seed": s, "target": "category", "space": space, "k": 3, "ami": ami + 0.01 * s}
                             for s in range(3) for space, ami in (("text", 0.5), ("image", 0.4), ("joint", 0.6))])
    empty = pd.DataFrame(columns=["space", "algorithm", "n_clusters"])
    classification = pd.DataFrame(columns=["label", "model", "n", "n_classes", "macro_f1", "best_model"])
    summary = summarise_retrieval(pd.DataFrame([
        {"fold": f, "method": m, "direction": "text_to_image", "pairs": 10, "recall_at_1": 0.2 + 0.1 * (m == "joint"),
         "recall_at_10": 0.5} for f in range(2) for m in METHODS]))
    tables = report.quality_tables(classification, summary, empty, pd.DataFrame({"reason": []}), 10, per_seed)
    (heading,) = [h for h in tables if "over 3 UMAP/KMeans seeds" in h]
    seeds = tables[heading].set_index("space")
    assert seeds.loc["joint − text", "verdict"] == "above" and seeds.loc["joint − text", "AMI mean"] == pytest.approx(0.1)
    assert "over" not in " ".join(report.quality_tables(classification, summary, empty, pd.DataFrame({"reason": []}), 10))
