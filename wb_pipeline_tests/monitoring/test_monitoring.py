"""Pure-core tests of `wb_pipeline.core.monitoring` (drift statistics, the retraining rule) and of
`wb_pipeline.core.models.prediction` (predictions of a drop)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from wb_pipeline.core.data.storage import as_upath
from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.models import prediction
from wb_pipeline.core.models.classification import LabelModels
from wb_pipeline.core.monitoring import drift, retrain


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clouds(seed=0, n_ref=200, n_drop=40, dim=16, shift=0.0):
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim) * 3
    ref = _unit(centre + rng.normal(size=(n_ref, dim)))
    other = np.zeros(dim)
    other[0] = shift
    new = _unit(centre + other + rng.normal(size=(n_drop, dim)))
    return ref, new


def test_domain_auc_is_near_half_in_distribution_and_high_out_of_it():
    ref, same = _clouds(shift=0.0)
    _, moved = _clouds(shift=3.0)
    assert drift.domain_classifier_auc(ref, same) < 0.7
    assert drift.domain_classifier_auc(ref, moved) > 0.9


def test_domain_auc_keeps_duplicate_groups_on_one_side():
    ref, _ = _clouds(n_ref=60)
    drop = ref[:20] + 1e-6  # the drop repeats catalogue products: the same groups on both sides
    groups = np.r_[np.arange(60), np.arange(20)]
    assert drift.domain_classifier_auc(ref, drop, groups) < 0.75
    with pytest.raises(ValueError, match="groups"):
        drift.domain_classifier_auc(ref, drop, groups[:5])


def test_mmd_permutation_p_value_separates_the_two_cases():
    ref, same = _clouds(seed=1, shift=0.0)
    _, moved = _clouds(seed=1, shift=3.0)
    _, p_same, _ = drift.mmd_permutation_test(ref, same, permutations=100)
    mmd_moved, p_moved, _ = drift.mmd_permutation_test(ref, moved, permutations=100)
    assert p_same > 0.05
    assert p_moved <= 1 / 101 + 1e-12 and mmd_moved > 0


def test_two_sample_inputs_are_validated():
    with pytest.raises(ValueError, match="same d"):
        drift.mmd_permutation_test(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=">= 2 rows"):
        drift.domain_classifier_auc(np.zeros((5, 3)), np.zeros((1, 3)))


def test_js_distance_and_what_sampling_alone_gives():
    assert drift.js_distance({"a": 0.5, "b": 0.5}, {"b": 1, "a": 1}) == pytest.approx(0.0)
    assert drift.js_distance({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    shares = {f"c{i}": 1 / 40 for i in range(40)}
    few, many = drift.expected_js_by_sampling(shares, 20), drift.expected_js_by_sampling(shares, 2000)
    assert few > 0.3 > many  # 20 products cannot fill 40 classes


def _predicted(classes, label="sex"):
    return pd.DataFrame({"label": label, "predicted": classes})


def test_assess_drift_verdicts():
    config = drift.DriftConfig(mmd_permutations=50, mmd_p_threshold=0.05)
    ref, same = _clouds(seed=2)
    _, moved = _clouds(seed=2, shift=3.0)
    train = {"sex": {"f": 0.5, "m": 0.5}}
    calm = drift.assess_drift(
        {"text": ref, "image": ref}, {"text": same, "image": same}, _predicted(["f", "m"] * 20), train, config
    )
    assert calm.judged and not calm.drifted and not calm.label_shift
    assert calm.verdict.startswith("In distribution")
    moved_report = drift.assess_drift(
        {"text": ref, "image": ref},
        {"text": same, "image": moved},
        _predicted(["f"] * 40),
        train,
        drift.DriftConfig(mmd_permutations=50, mmd_p_threshold=0.05, label_js_threshold=0.3),
    )
    assert moved_report.drifted and moved_report.label_shift
    assert moved_report.verdict.startswith("DRIFTED (image") and "sex" in moved_report.verdict
    summary = moved_report.summary()
    assert summary["image_domain_auc"] > 0.9 > summary["text_domain_auc"]
    small = drift.assess_drift({"text": ref}, {"text": moved[:5]}, _predicted([]), train, config)
    assert not small.judged and not small.drifted and small.verdict.startswith("Too small")
    assert "image: not measured" in small.reasons[0]


def test_mmd_can_decide_instead():
    ref, _ = _clouds(seed=3)
    _, moved = _clouds(seed=3, shift=3.0)
    report = drift.assess_drift(
        {"text": ref}, {"text": moved}, _predicted([]), {}, drift.DriftConfig(decide_by="mmd", mmd_permutations=200)
    )
    assert report.drifted and "MMD p <" in report.verdict


def test_drift_config_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="domain_auc_threshold"):
        drift.DriftConfig(domain_auc_threshold=0.3)
    with pytest.raises(ValueError, match="cannot give p < 0.01"):
        drift.DriftConfig(mmd_permutations=50)
    with pytest.raises(ValueError, match="decide_by"):
        drift.DriftConfig(decide_by="ks")


# --- the retraining rule ------------------------------------------------------------------------

POLICY = retrain.RetrainPolicy(drift_auc_threshold=0.8, added_share_threshold=0.25)


def test_retrain_fires_on_drift_only_above_the_threshold():
    calm = retrain.DropDrift("d1", True, text_domain_auc=0.6, image_domain_auc=0.79)
    hot = retrain.DropDrift("d2", True, text_domain_auc=0.95, image_domain_auc=0.7)
    assert not retrain.decide_retrain([calm], 1000, 1010, POLICY).retrain
    decision = retrain.decide_retrain([calm, hot], 1000, 1010, POLICY)
    assert decision.retrain and decision.trigger == "drift"
    assert decision.reasons == ["drift: drop d2 text domain AUC 0.950 > 0.8"]
    unjudged = retrain.DropDrift("d3", False, text_domain_auc=0.99)
    assert not retrain.decide_retrain([unjudged], 1000, 1010, POLICY).retrain  # too small to judge


def test_retrain_fires_on_accumulated_share_and_not_below_it():
    assert not retrain.decide_retrain([], 1000, 1249, POLICY).retrain
    decision = retrain.decide_retrain([], 1000, 1250, POLICY)
    assert decision.retrain and decision.trigger == "added_share" and "25.0%" in decision.reasons[0]
    both = retrain.decide_retrain([retrain.DropDrift("d", True, image_domain_auc=0.99)], 1000, 1300, POLICY)
    assert both.trigger == "added_share+drift" and len(both.reasons) == 2
    assert not retrain.decide_retrain([], 1000, 2000, retrain.RetrainPolicy(on_added_share=False)).retrain


def test_retrain_by_mmd_and_bad_policy():
    policy = retrain.RetrainPolicy(drift_by="mmd", drift_mmd_p_threshold=0.01)
    assert retrain.decide_retrain([retrain.DropDrift("d", True, text_mmd_p_value=0.005)], 10, 10, policy).retrain
    assert not retrain.decide_retrain(
        [retrain.DropDrift("d", True, text_mmd_p_value=0.2, text_domain_auc=0.99)], 10, 10, policy
    ).retrain
    with pytest.raises(ValueError, match="added_share_threshold"):
        retrain.RetrainPolicy(added_share_threshold=0)
    with pytest.raises(ValueError, match="catalogue_at_training"):
        retrain.decide_retrain([], 0, 10, POLICY)


def test_training_manifest_round_trip(tmp_path):
    manifest = retrain.TrainingManifest(("main", "d1"), 160, {"sex": {"для женщин": 0.75, "для мужчин": 0.25}})
    retrain.save_training_manifest(manifest, as_upath(tmp_path))
    assert retrain.load_training_manifest(as_upath(tmp_path)) == manifest
    assert retrain.load_training_manifest(as_upath(tmp_path / "none")) is None
    with pytest.raises(ValueError, match="expected keys"):
        retrain.TrainingManifest.from_json('{"batches": []}')


# --- predictions of a drop ----------------------------------------------------------------------


def _label_models(rng):
    y = np.array(["a", "b"] * 20, dtype=object)
    text, image = rng.normal(size=(40, 4)) + (y == "a")[:, None], rng.normal(size=(40, 3))
    base = {
        "text": LogisticRegression().fit(text, y),
        "image": LogisticRegression().fit(image, y),
        "early_fusion": LogisticRegression().fit(np.hstack([text, image]), y),
    }
    return LabelModels(label="sex", classes=["a", "b"], base=base)


REPORT = pd.DataFrame(
    {
        "label": "sex",
        "model": ["text", "image", "early_fusion", "mean_probability"],
        "macro_f1": [0.8, 0.5, 0.85, 0.7],
        "best_model": "early_fusion",
    }
)


def test_drop_predictions_cover_every_product_with_reasons():
    rng = np.random.default_rng(0)
    models = _label_models(rng)
    products = pd.DataFrame({"nm": ["1", "2", "3", "4"]})
    features = {"text": rng.normal(size=(4, 4)).astype(np.float32), "image": rng.normal(size=(4, 3)).astype(np.float32)}
    available = {"text": np.array([True, True, False, False]), "image": np.array([True, False, False, False])}
    rejected = pd.DataFrame({"nm": ["4"], "reason": ["missing_image"], "detail": ["no 4.jpg in the images zip"]})
    table = prediction.predict_with_features(products, features, available, {"sex": models}, REPORT, None, rejected)
    assert list(table.columns) == prediction.COLUMNS
    assert list(table["nm"]) == ["1", "2", "3", "4"]  # one row per product and label, in drop order
    by_nm = table.set_index("nm")
    assert by_nm.loc["1", "status"] == "predicted" and by_nm.loc["1", "model"] == "early_fusion"
    assert by_nm.loc["1", "predicted"] in {"a", "b"} and 0.5 <= by_nm.loc["1", "probability"] <= 1
    assert by_nm.loc["2", "status"] == "fallback" and by_nm.loc["2", "model"] == "text"
    assert "no image vector" in by_nm.loc["2", "reason"] and "early_fusion" in by_nm.loc["2", "reason"]
    assert by_nm.loc["3", "status"] == "not_predicted" and pd.isna(by_nm.loc["3", "predicted"])
    assert "no image, text vector" in by_nm.loc["3", "reason"]
    assert by_nm.loc["4", "status"] == "rejected" and "missing_image (no 4.jpg" in by_nm.loc["4", "reason"]
    # the chosen model's rows equal the saved model's own probabilities on the same vectors
    direct = models.predict_proba("early_fusion", {b: features[b][:1] for b in features})
    assert by_nm.loc["1", "probability"] == pytest.approx(direct.max())


def test_drop_predictions_refuse_an_unsaved_or_unknown_model():
    models = _label_models(np.random.default_rng(1))
    products = pd.DataFrame({"nm": ["1"]})
    args = ({"text": np.zeros((1, 4))}, {"text": np.array([True])}, {"sex": models})
    with pytest.raises(ValueError, match="late_fusion.*not saved"):
        prediction.predict_with_features(products, *args, REPORT, None, chosen="late_fusion")
    with pytest.raises(ValueError, match="not in the classification report"):
        prediction.predict_with_features(products, *args, REPORT.assign(label="season"), None)


def test_drop_features_project_joint_only_where_both_vectors_exist():
    text = EmbeddingTable(nm=["1", "2"], vectors=np.eye(2, 3, dtype=np.float32))
    image = EmbeddingTable(nm=["1"], vectors=np.ones((1, 2), np.float32))

    class Model:  # the saved joint model's product-vector interface
        def product_vectors(self, text_vectors, image_vectors):
            both = np.hstack([np.asarray(text_vectors), np.asarray(image_vectors)])
            return both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)

    features, available = prediction.product_features(["1", "2", "3"], text, image, Model())
    assert available["text"].tolist() == [True, True, False] and available["image"].tolist() == [True, False, False]
    assert available["joint"].tolist() == [True, False, False]
    np.testing.assert_allclose(np.linalg.norm(features["joint"][0]), 1.0, rtol=1e-6)
    assert not features["image"][1:].any()
