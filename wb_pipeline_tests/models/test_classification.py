"""Label preparation (skips, rare classes), saved models reload to identical predictions without
pickle, and the classification assets end to end on a small product table they build."""

import json
import pickle

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from upath import UPath

from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.models import classification as core
from wb_pipeline.core.models import contrastive
from wb_pipeline.core.models.classification import cross_validation
from wb_pipeline.core.models.classification import solver as logistic_solver
from wb_pipeline.defs.classification import assets as classification_assets
from wb_pipeline.defs.classification import checks as classification_checks
from wb_pipeline.defs.embeddings.resources import TextEncoderResource
from wb_pipeline.defs.resources import WBStorage, WBStorageIOManager

SMALL = dict(
    n_splits=3,
    inner_splits=2,
    min_class_rows=3,
    min_labelled_rows=20,
    c_values=[10.0],
    class_weights=["none", "balanced"],
    fusion_n_estimators=20,
    fusion_min_child_samples=5,
)


def labelled_table(n: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Products whose 'sex' is readable from the text vectors, plus one rare class of 2 rows."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["для женщин", "для мужчин", "для детей"], size=n).astype(object)
    sex[:2] = "для мальчиков"  # rare: fewer rows than min_class_rows
    sex[2:6] = None
    codes = pd.Series(sex).astype("category").cat.codes.to_numpy()
    text = rng.normal(size=(n, 12)) + 3.0 * np.eye(12)[codes.clip(0)]
    image = rng.normal(size=(n, 10))
    labels = pd.DataFrame(
        {
            "nm": [str(1000 + i) for i in range(n)],
            "split": "train",
            "sex": pd.Categorical(sex),
            "fragility": pd.Categorical([None] * (n - 5) + ["хрупкий"] * 5),
        }
    )
    return labels, {"text": text.astype(np.float32), "image": image.astype(np.float32)}


def test_prepare_label_skips_with_reasons_and_counts_rare_classes():
    labels, features = labelled_table(60)
    config = core.ClassificationConfig(**{**SMALL, "c_values": (10.0,), "class_weights": ("none", "balanced")})
    groups = np.arange(60)
    absent = core.prepare_label(labels, "season", features, groups, config)
    assert isinstance(absent, core.LabelSkip) and absent.reason == "absent"
    few = core.prepare_label(labels, "fragility", features, groups, config)
    assert isinstance(few, core.LabelSkip) and few.reason == "too_few_labelled" and "5 labelled rows" in few.detail
    data = core.prepare_label(labels, "sex", features, groups, config)
    assert isinstance(data, core.LabelData)
    assert data.dropped_classes == {"для мальчиков": 2}
    assert data.classes == ["для детей", "для женщин", "для мужчин"]
    assert len(data.y) == 60 - 2 - 4 and set(data.y) == set(data.classes)
    np.testing.assert_array_equal(data.features["text"], features["text"][6:])
    one_group = core.prepare_label(labels, "sex", features, np.zeros(60, dtype=int), config)
    assert isinstance(one_group, core.LabelSkip) and one_group.reason == "too_few_groups"
    single = labels.assign(sex=pd.Categorical(["для женщин"] * 58 + ["для детей"] * 2))
    only_one = core.prepare_label(single, "sex", features, groups, config)
    assert isinstance(only_one, core.LabelSkip) and only_one.reason == "too_few_classes"


def test_config_rejects_rare_class_threshold_below_folds():
    with pytest.raises(ValueError, match="min_class_rows"):
        core.ClassificationConfig(n_splits=5, min_class_rows=3)


def test_saved_models_reload_to_identical_predictions_without_pickle(tmp_path, monkeypatch):
    labels, features = labelled_table(90, seed=1)
    config = core.ClassificationConfig(**{**SMALL, "c_values": (10.0,), "class_weights": ("none", "balanced")})
    data = core.prepare_label(labels, "sex", features, np.arange(90), config)
    cv = core.cross_validate_label(data, config)
    models = core.fit_final_base_models(data, cv.final_settings, config)
    models.late_fusion, models.fusion_inputs, models.brand_encoding = core.fit_final_late_fusion(
        cv.probabilities, "sex", data.classes, config
    )
    folder = UPath(tmp_path) / "sex"
    core.save_label_models(models, folder)

    def refuse(*args, **kwargs):
        raise AssertionError("loading must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = core.load_label_models(folder, "sex")
    assert loaded.classes == models.classes
    assert set(loaded.base) == {"text", "image", "early_fusion"}  # no joint vectors were given
    for model in (*loaded.base, *core.FUSION_MODELS):
        np.testing.assert_array_equal(loaded.predict_proba(model, features), models.predict_proba(model, features))
    predicted = np.asarray(loaded.classes)[loaded.predict_proba("text", features).argmax(axis=1)]
    text_accuracy = (predicted[6:] == labels["sex"].astype(str).to_numpy()[6:]).mean()
    assert text_accuracy > 0.8


@pytest.mark.parametrize("n_classes", [2, 37])
def test_logistic_probabilities_row_by_row_equal_sklearn_and_ignore_the_other_rows(n_classes):
    """The prediction path's regression probabilities: sklearn's up to rounding, and each row's bits its
    own: alone, at any position of a 64-row block, with a fitted (F-ordered) or reloaded (C-ordered) matrix."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 1664)).astype(np.float32)
    model = LogisticRegression(max_iter=200).fit(X, rng.integers(0, n_classes, size=300))
    model.coef_ = np.asfortranarray(model.coef_.astype(np.float32))
    model.intercept_ = model.intercept_.astype(np.float32)
    block = X[:64]
    got = logistic_solver.logistic_proba_by_row(model, block)
    np.testing.assert_allclose(got, model.predict_proba(block), rtol=1e-5, atol=1e-7)
    assert (got.argmax(axis=1) == model.predict_proba(block).argmax(axis=1)).all()
    c_ordered = LogisticRegression()
    c_ordered.coef_, c_ordered.intercept_ = np.ascontiguousarray(model.coef_), model.intercept_
    c_ordered.classes_, c_ordered.n_features_in_ = model.classes_, model.n_features_in_
    for row in (0, 5, 11, 63):
        alone = np.zeros_like(block)
        alone[0] = block[row]
        assert np.array_equal(logistic_solver.logistic_proba_by_row(model, alone)[0], got[row])
        assert np.array_equal(logistic_solver.logistic_proba_by_row(model, block[row : row + 1])[0], got[row])
        assert np.array_equal(logistic_solver.logistic_proba_by_row(c_ordered, block[row : row + 1])[0], got[row])
    with pytest.raises(ValueError, match="NaN"):
        logistic_solver.logistic_proba_by_row(model, np.full((1, 1664), np.nan, np.float32))
    with pytest.raises(ValueError, match="features"):  # another width: sklearn's own check and message
        logistic_solver.logistic_proba_by_row(model, block[:, :10])


def test_label_classes_match_probability_width():
    frame = pd.DataFrame({"label": "x", "y": ["b", "a", "b"], "proba": [np.ones(2)] * 3})
    assert core.label_classes(frame, "x") == ["a", "b"]
    with pytest.raises(ValueError, match="2 classes in y but probability vectors of length 3"):
        core.label_classes(frame.assign(proba=[np.ones(3)] * 3), "x")


def _decided_rows(label: str, model: str, y: list[str], predicted: list[str], classes: list[str]) -> pd.DataFrame:
    proba = [[1.0 if c == p else 0.0 for c in classes] for p in predicted]
    return pd.DataFrame(
        {
            "label": label,
            "model": model,
            "stage": core.OUTER,
            "fold": 0,
            "row": range(len(y)),
            "nm": [str(i) for i in range(len(y))],
            "y": y,
            "group": range(len(y)),
            "proba": proba,
        }
    )


def test_report_gives_the_gain_over_the_best_unimodal_model_a_paired_interval():
    classes = ["a", "b"]
    rng = np.random.default_rng(0)
    y = rng.choice(classes, 300).tolist()
    flip = lambda values, share: [("b" if v == "a" else "a") if rng.random() < share else v for v in values]  # noqa: E731
    text = flip(y, 0.2)
    image = flip(y, 0.4)
    late_same = list(text)  # the best unimodal model's own decisions
    late_better = [truth if i < 40 else t for i, (truth, t) in enumerate(zip(y, text))]  # fixes some of its errors
    predictions = pd.concat(
        [
            _decided_rows("sex", "text", y, text, classes),
            _decided_rows("sex", "image", y, image, classes),
            _decided_rows("sex", "early_fusion", y, late_same, classes),
            _decided_rows("sex", "late_fusion", y, late_better, classes),
        ],
        ignore_index=True,
    )
    report = core.build_report(predictions, {"sex": classes}).set_index("model")
    assert report.loc["text", "gain_vs_best_unimodal"] == 0 and report.loc["image", "gain_vs_best_unimodal"] < 0
    # identical decisions: a difference of exactly zero on every resample
    assert report.loc["early_fusion", ["gain_low", "gain_high"]].tolist() == [0.0, 0.0]
    late = report.loc["late_fusion"]
    assert 0 < late["gain_low"] < late["gain_vs_best_unimodal"] < late["gain_high"]
    # pairing makes the difference's interval much narrower than either model's own interval
    assert late["gain_high"] - late["gain_low"] < 0.5 * (late["macro_f1_high"] - late["macro_f1_low"])
    assert report.loc["image", "gain_high"] < 0  # a clearly worse model is below zero all the way


def test_zero_shot_hook_is_a_softmax_over_cosines():
    products = np.array([[1.0, 0.0], [0.0, 2.0]])
    names = np.array([[1.0, 0.0], [0.0, 1.0]])
    proba = core.zero_shot_probabilities(products, names, temperature=0.1)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert proba.argmax(axis=1).tolist() == [0, 1]


def test_class_phrases_describe_isadult_and_keep_vocabulary_values():
    phrases = core.ZeroShotConfig().class_phrases
    assert core.class_phrases("isadult", ["False", "True"], phrases) == ["обычный товар", "товары для взрослых"]
    assert core.class_phrases("season", ["зима", "лето"], phrases) == ["зима", "лето"]
    with pytest.raises(ValueError, match="joint_column"):
        core.ZeroShotConfig(joint_column="joint")
    with pytest.raises(ValueError, match="template"):
        core.ZeroShotConfig(template="товар")


def _outer_rows(label: str, nm: list[str], y: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "label": label,
            "model": "text",
            "stage": core.OUTER,
            "fold": np.arange(len(nm)) % 2,
            "row": np.arange(len(nm)),
            "nm": nm,
            "y": y,
            "proba": [np.full(2, 0.5)] * len(nm),
        }
    )


def test_zero_shot_predictions_score_the_same_rows_and_skip_without_joint_vectors():
    rows = _outer_rows("season", ["a", "b", "c"], ["зима", "лето", "зима"])
    vectors = np.array([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1], [0.2, 0.8]])
    seen = []

    def score(phrases, products):  # class k's vector is the k-th unit vector
        seen.append(phrases)
        return products

    zero_shot = core.zero_shot_predictions(
        rows, "season", ["зима", "лето"], ["x", "c", "b", "a"], vectors, score, {}, temperature=0.1
    )
    assert seen == [["зима", "лето"]]
    assert zero_shot["nm"].tolist() == ["a", "b", "c"] and zero_shot["fold"].tolist() == [0, 1, 0]
    assert (zero_shot["model"] == core.ZERO_SHOT_MODEL).all() and (zero_shot["stage"] == core.OUTER).all()
    assert core.predicted_classes(zero_shot, ["зима", "лето"]).tolist() == ["лето", "зима", "зима"]
    missing = core.zero_shot_predictions(rows, "season", ["зима", "лето"], ["a", "b"], vectors[:2], score, {}, 0.1)
    assert isinstance(missing, core.LabelSkip) and missing.reason == "missing_joint_vectors" and "'c'" in missing.detail


CLASS_NAMES = ["для детей", "для женщин", "для мужчин", "Игрушки", "Обувь"]  # one joint axis each


class OneHotClassNames:
    """A text encoder that knows only the class names: each is the unit vector of its joint axis."""

    def encode(self, texts):
        return np.eye(len(CLASS_NAMES), dtype=np.float32)[[CLASS_NAMES.index(t) for t in texts]]


class OneHotTextEncoder(TextEncoderResource):
    def build(self):
        return OneHotClassNames()


def identity_joint_model(dim: int) -> contrastive.JointSpaceModel:
    """Heads that leave vectors unchanged, so class k's joint vector is the k-th unit vector."""
    return contrastive.JointSpaceModel(
        dim, dim, contrastive.ContrastiveConfig(joint_dim=dim, closed_form_dim=0, head="residual")
    )


@pytest.fixture()
def product_world():
    """150 products (110 train with sex labels, 40 test with category labels), duplicates included."""
    rng = np.random.default_rng(7)
    n_train, n_test = 110, 40
    n = n_train + n_test
    nm = [str(5000 + i) for i in range(n)]
    split = ["train"] * n_train + ["test"] * n_test
    sex = list(rng.choice(["для женщин", "для мужчин", "для детей"], size=n_train)) + [None] * n_test
    category = [None] * n_train + list(rng.choice(["Обувь", "Игрушки"], size=n_test))
    titles = [f"товар {i}" for i in range(n)]
    titles[1] = titles[0]  # a duplicate pair must land in one fold
    clean = pd.DataFrame({"nm": nm, "split": split, "title": titles, "brand": [f"b{i % 9}" for i in range(n)]})
    labels = pd.DataFrame(
        {
            "nm": nm,
            "split": split,
            "sex": pd.Categorical(sex),
            "season": pd.Categorical([None] * n),
            "category": pd.Categorical(category),
        }
    )
    image_index = pd.DataFrame({"nm": nm, "content_hash": [f"h{i}" for i in range(n)]})
    target = [s if s is not None else c for s, c in zip(sex, category)]
    codes = pd.Series(target).astype("category").cat.codes.to_numpy()
    text = rng.normal(size=(n, 16)) + 3.0 * np.eye(16)[codes]
    image = rng.normal(size=(n, 8)) + 1.0 * np.eye(8)[codes % 8]
    norm = lambda m: (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    # The joint space: axis k = CLASS_NAMES[k]; products lean towards their true class, with noise.
    truth_axis = np.array([CLASS_NAMES.index(t) for t in target])
    text_joint = norm(rng.normal(size=(n, 5)) + 1.2 * np.eye(5)[truth_axis])
    image_joint = norm(rng.normal(size=(n, 5)))
    joint = contrastive.joint_embedding_frame(nm, text_joint, image_joint)
    return (
        clean,
        labels,
        image_index,
        EmbeddingTable(np.array(nm), norm(text)),
        EmbeddingTable(np.array(nm), norm(image)),
        joint,
    )


def test_classification_assets_end_to_end(tmp_path, instance, product_world):
    clean, labels, image_index, text, image, joint = product_world
    joint_folder = UPath(tmp_path) / "joint_model"
    contrastive.save_joint_model(identity_joint_model(5), joint_folder)

    @dg.asset(name="contrastive_model")
    def contrastive_model_stub() -> pd.DataFrame:
        return pd.DataFrame({"stage": ["after"], "artifact": [str(joint_folder)]})

    @dg.asset(name="joint_embeddings")
    def joint_embeddings_stub() -> pd.DataFrame:
        return joint

    @dg.asset(name="clean_products")
    def clean_products_stub() -> pd.DataFrame:
        return clean

    @dg.asset(name="product_labels")
    def product_labels_stub() -> pd.DataFrame:
        return labels

    @dg.asset(name="image_index")
    def image_index_stub() -> pd.DataFrame:
        return image_index

    @dg.asset(name="product_characteristics")
    def characteristics_stub() -> pd.DataFrame:
        return pd.DataFrame({"nm": clean["nm"].iloc[:10].tolist(), "name": "Цвет", "value": "красный"})

    @dg.asset(name="text_embeddings")
    def text_embeddings_stub() -> EmbeddingTable:
        return text

    @dg.asset(name="image_embeddings")
    def image_embeddings_stub() -> EmbeddingTable:
        return image

    classifier_config = {"config": {**SMALL, "labels": ["sex", "season", "fragility", "category"]}}
    result = dg.materialize(
        [
            clean_products_stub,
            product_labels_stub,
            image_index_stub,
            characteristics_stub,
            text_embeddings_stub,
            image_embeddings_stub,
            contrastive_model_stub,
            joint_embeddings_stub,
            classification_assets.label_classifiers,
            classification_assets.fusion_classifier,
            classification_assets.classification_report,
            classification_checks.fusion_not_worse_than_best_unimodal,
        ],
        resources={
            "io_manager": WBStorageIOManager(base_dir=str(tmp_path)),
            "pipeline_storage": WBStorage(base_dir=str(tmp_path)),
            "text_encoder": OneHotTextEncoder(cache_dir=str(tmp_path)),
        },
        run_config={
            "ops": {
                "label_classifiers": classifier_config,
                "fusion_classifier": classifier_config,
                "classification_report": {"config": {"n_bootstrap": 100}},
            }
        },
        instance=instance,
    )
    assert result.success

    report = result.output_for_node("classification_report")
    assert sorted(report["label"].unique()) == ["category", "sex"]
    for label in ("sex", "category"):
        assert set(report.loc[report["label"] == label, "model"]) == {*core.ALL_MODELS, core.ZERO_SHOT_MODEL}
    assert report[["macro_f1", "macro_f1_low", "macro_f1_high", "weighted_f1"]].notna().all().all()
    assert (report["macro_f1_low"] <= report["macro_f1"]).all() and (
        report["macro_f1"] <= report["macro_f1_high"]
    ).all()
    assert report.loc[(report["label"] == "sex") & (report["model"] == "text"), "macro_f1"].item() > 0.7
    assert report.loc[report["label"] == "category", "f1"].notna().all()  # binary: F1 of the rarer class

    report_metadata = result.asset_materializations_for_node("classification_report")[0].metadata
    summary = report_metadata["summary"].value  # the narrow lead table: label, best model, macro-F1, fusion gain
    assert summary.splitlines()[0].startswith("| label") and "sex" in summary and "category" in summary
    assert "late fusion − best unimodal" in summary
    assert "data:image/png;base64," in report_metadata["model_comparison"].value
    skipped = result.asset_materializations_for_node("label_classifiers")[0].metadata["skipped_labels"]
    reasons = {record.data["label"]: record.data["reason"] for record in skipped.records}
    assert reasons == {"season": "too_few_labelled", "fragility": "absent"}

    probabilities = result.output_for_node("label_classifiers")
    outer = probabilities[(probabilities["stage"] == "outer") & (probabilities["label"] == "sex")]
    fold_of = outer.drop_duplicates("nm").set_index("nm")["fold"]
    assert fold_of["5000"] == fold_of["5001"]  # identical titles share a fold

    # zero-shot: on the text model's held-out rows, the argmax over the class axes of the combined
    # joint vectors (a class name scores the mean of its cosines with the text and image sides: the
    # argmax of text + image), computed here by hand.
    position = {n: i for i, n in enumerate(joint["nm"])}
    combined = np.vstack(joint["text_joint"].to_numpy()) + np.vstack(joint["image_joint"].to_numpy())
    for label in ("sex", "category"):
        rows = outer_of(probabilities, label)
        classes = sorted(rows["y"].unique())
        axes = [CLASS_NAMES.index(c) for c in classes]
        by_hand = np.array(classes)[combined[[position[n] for n in rows["nm"]]][:, axes].argmax(axis=1)]
        zero_shot = report[(report["label"] == label) & (report["model"] == core.ZERO_SHOT_MODEL)].iloc[0]
        text_row = report[(report["label"] == label) & (report["model"] == "text")].iloc[0]
        assert zero_shot["n"] == text_row["n"] == len(rows)
        assert zero_shot["macro_f1"] == pytest.approx(
            f1_score(rows["y"], by_hand, labels=classes, average="macro", zero_division=0)
        )
        assert 0.0 < zero_shot["macro_f1"] < 1.0  # the constructed space is informative but noisy
        assert zero_shot["best_model"] in core.ALL_MODELS  # a baseline is never picked for test predictions
    category = report[(report["label"] == "category") & (report["model"] == core.ZERO_SHOT_MODEL)].iloc[0]
    rows = outer_of(probabilities, "category")
    by_hand = np.array(["Игрушки", "Обувь"])[combined[[position[n] for n in rows["nm"]]][:, [3, 4]].argmax(axis=1)]
    assert category["f1"] == pytest.approx(f1_score(rows["y"], by_hand, pos_label=category["positive_class"]))

    # test_predictions (the saved models through core.models.prediction): test_prediction.py, with a joint model
    # whose projections are the joint vectors (this world's joint vectors are built by hand).
    checks = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    comparison = checks["fusion_not_worse_than_best_unimodal"].metadata["comparison"]
    assert {record.data["label"] for record in comparison.records} == {"sex", "category"}
    assert all(
        record.data["best_unimodal"] in core.UNIMODAL_MODELS and record.data["winner"] in core.ALL_MODELS
        for record in comparison.records
    )

    saved = tmp_path / "models" / "classification" / "sex"
    names = {p.name for p in saved.iterdir()}
    assert names >= {"text.safetensors", "text.json", "joint.safetensors", "late_fusion.json", "base_models.json"}
    sidecar = json.loads((saved / "late_fusion.json").read_text())
    assert sidecar["inputs"] == ["text", "image", "early_fusion", "joint"] and sidecar["tabular"]
    assert ("late_fusion.lgbm.txt" in names) == (sidecar["n_trees"] > 0)  # no booster file when no tree helped


def outer_of(probabilities: pd.DataFrame, label: str) -> pd.DataFrame:
    """The held-out rows of `label` every model is scored on (one per labelled row)."""
    return probabilities[
        (probabilities["stage"] == "outer") & (probabilities["label"] == label) & (probabilities["model"] == "text")
    ]


def _wide_problem(n: int = 40, d: int = 120, seed: int = 3) -> tuple[list[np.ndarray], np.ndarray]:
    """Fewer rows than columns (two blocks), three classes readable from a few columns."""
    rng = np.random.default_rng(seed)
    y = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, size=n)]
    codes = pd.Series(y).astype("category").cat.codes.to_numpy()
    text = rng.normal(size=(n, d // 3)) + 1.5 * np.eye(d // 3)[codes]
    image = 4.0 * rng.normal(size=(n, d - d // 3))
    return [text.astype(np.float32), image.astype(np.float32)], y


def test_row_space_fit_solves_the_same_regression_with_fewer_weights():
    blocks, y = _wide_problem()
    new_rows = [b[:10] + 0.1 for b in blocks]
    for setting, solver in (
        ((1.0, "none", 1.0), "lbfgs"),
        ((10.0, "balanced", 2.0), "lbfgs"),
        ((10.0, "balanced", 2.0), "newton-cg"),
    ):
        full = core.fit_logistic(blocks, y, setting, max_iter=5000)
        rotated = core.fit_logistic(blocks, y, setting, max_iter=5000, row_space=True, solver=solver)
        assert rotated.coef_.shape == full.coef_.shape == (3, 120)
        for X in (np.hstack(blocks), np.hstack(new_rows)):
            np.testing.assert_allclose(rotated.predict_proba(X), full.predict_proba(X), atol=2e-3)
            np.testing.assert_array_equal(rotated.predict(X), full.predict(X))
    design = logistic_solver._design(blocks, 1.0, row_space=True)
    assert design.X.shape == (40, 40) and design.basis.shape == (40, 120)
    tall = logistic_solver._design(
        [b[:, :10] for b in blocks], 1.0, row_space=True
    )  # more rows than columns: unchanged
    assert tall.basis is None and tall.X.shape == (40, 20)


def test_warm_started_grid_chooses_the_same_settings_as_cold_fits():
    labels, features = labelled_table(150, seed=2)
    small = {
        **SMALL,
        "c_values": (0.1, 1.0, 10.0),
        "class_weights": ("none", "balanced"),
        "early_fusion_image_weights": (0.5, 2.0),
    }
    cold = core.ClassificationConfig(**small, warm_start=False, row_space=False, solver="lbfgs")
    warm = core.ClassificationConfig(**small)  # the default: warm-started newton-cg in the row space
    data = core.prepare_label(labels, "sex", features, np.arange(150), cold)
    results = [core.cross_validate_label(data, config) for config in (cold, warm)]
    chosen = [
        r.choices[r.choices["chosen"]][["model", "fold", "C", "class_weight", "image_weight"]].to_numpy()
        for r in results
    ]
    np.testing.assert_array_equal(chosen[0], chosen[1])
    assert results[0].final_settings == results[1].final_settings
    np.testing.assert_allclose(results[0].choices["inner_macro_f1"], results[1].choices["inner_macro_f1"], atol=0.02)
    # The warm chain really starts from the previous solution: C ascending within a class weight.
    order = cross_validation._fit_order(core.grid(warm, "early_fusion"))
    assert [[(c, w) for c, w, _ in chain] for chain in order] == [
        [(0.1, "none"), (1.0, "none"), (10.0, "none"), (0.1, "balanced"), (1.0, "balanced"), (10.0, "balanced")]
    ] * 2


def test_outer_folds_in_two_processes_give_identical_results():
    labels, features = labelled_table(90, seed=1)
    config = core.ClassificationConfig(**{**SMALL, "c_values": (1.0, 10.0)})
    data = core.prepare_label(labels, "sex", features, np.arange(90), config)
    runs = [
        core.cross_validate_label(data, core.ClassificationConfig(**{**SMALL, "c_values": (1.0, 10.0)}, n_jobs=n))
        for n in (1, 2)
    ]
    pd.testing.assert_frame_equal(runs[0].choices, runs[1].choices)
    assert runs[0].final_settings == runs[1].final_settings
    pd.testing.assert_frame_equal(
        runs[0].probabilities.drop(columns="proba"), runs[1].probabilities.drop(columns="proba")
    )
    np.testing.assert_array_equal(np.vstack(runs[0].probabilities["proba"]), np.vstack(runs[1].probabilities["proba"]))
    fusion = [
        core.cross_validate_fusion(
            runs[0].probabilities, "sex", data.classes, core.ClassificationConfig(**SMALL, n_jobs=n)
        )
        for n in (1, 2)
    ]
    pd.testing.assert_frame_equal(fusion[0][1], fusion[1][1])
    np.testing.assert_array_equal(np.vstack(fusion[0][0]["proba"]), np.vstack(fusion[1][0]["proba"]))
