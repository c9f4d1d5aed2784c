"""One prediction path: `core.models.prediction.predict_products` serves `test_predictions` and `drop_predictions`
(and any later caller), so the same products get the same labels and probabilities whichever asset asks."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from upath import UPath

from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.models import classification as core
from wb_pipeline.core.models import contrastive, fusion, prediction
from wb_pipeline.core.models.classification.stacking import _tabular_block
from wb_pipeline.core.models.contrastive import combine_joint
from wb_pipeline.defs.automation.jobs import product_drops
from wb_pipeline.defs.classification import assets as classification_assets
from wb_pipeline.defs.classification import checks as classification_checks
from wb_pipeline.defs.drops import assets as drops_assets
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
    labels=["sex", "category"],
    n_jobs=1,
)
DROP = "drop-1"


def _unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def _joint_model(text_dim: int, image_dim: int) -> contrastive.JointSpaceModel:
    torch.manual_seed(0)
    return contrastive.JointSpaceModel(
        text_dim, image_dim, contrastive.ContrastiveConfig(joint_dim=6, closed_form_dim=0, head="linear")
    )


@pytest.fixture()
def world(tmp_path):
    """150 products: 110 train (sex), 40 test (category); the drop holds 6 train and 10 test products,
    and one product that was rejected at cleaning. The joint vectors are the saved joint model's
    projections, as `joint_embeddings` makes them."""
    rng = np.random.default_rng(5)
    n_train, n_test = 110, 40
    n = n_train + n_test
    nm = [str(7000 + i) for i in range(n)]
    split = ["train"] * n_train + ["test"] * n_test
    batch = ["main"] * n
    for i in [*range(n_train - 6, n_train), *range(n - 10, n)]:
        batch[i] = DROP
    sex = list(rng.choice(["для женщин", "для мужчин", "для детей"], size=n_train)) + [None] * n_test
    category = [None] * n_train + list(rng.choice(["Обувь", "Игрушки"], size=n_test))
    clean = pd.DataFrame(
        {
            "nm": nm,
            "split": split,
            "batch": batch,
            "title": [f"товар {i}" for i in range(n)],
            "brand": [f"b{i % 7}" for i in range(n)],
            "price": rng.uniform(100, 5000, size=n),
        }
    )
    labels = pd.DataFrame({"nm": nm, "split": split, "sex": pd.Categorical(sex), "category": pd.Categorical(category)})
    target = [s if s is not None else c for s, c in zip(sex, category)]
    codes = pd.Series(target).astype("category").cat.codes.to_numpy()
    text = _unit(rng.normal(size=(n, 16)) + 3.0 * np.eye(16)[codes])
    image = _unit(rng.normal(size=(n, 8)) + 1.5 * np.eye(8)[codes % 8])
    text_table, image_table = EmbeddingTable(np.array(nm), text), EmbeddingTable(np.array(nm), image)
    model = _joint_model(16, 8)
    folder = UPath(tmp_path) / "joint_model"
    contrastive.save_joint_model(model, folder)
    joint = contrastive.joint_embedding_frame(nm, model.project_text(text), model.project_image(image))
    rejected_nm = "7999"  # in the drop's raw table, rejected at cleaning
    raw_train = clean.loc[clean["split"] == "train", ["nm", "batch"]]
    raw_train = pd.concat([raw_train, pd.DataFrame({"nm": [rejected_nm], "batch": [DROP]})], ignore_index=True)
    raw_test = clean.loc[clean["split"] == "test", ["nm", "batch"]]
    rejected = pd.DataFrame(
        {
            "nm": [rejected_nm],
            "split": ["train"],
            "reason": ["missing_image"],
            "detail": ["no 7999.jpg in the images zip"],
        }
    )
    characteristics = pd.DataFrame({"nm": nm[:30], "name": "Цвет", "value": "красный"})
    image_index = pd.DataFrame({"nm": nm, "content_hash": [f"h{i}" for i in range(n)]})
    # The report's choice per label: late fusion for sex (probabilities + tabular inputs), the joint
    # regression for category (the projected joint vectors); the rest ranks the fallbacks.
    report = pd.DataFrame(
        [
            {"label": label, "model": model_name, "macro_f1": f1, "best_model": best}
            for label, best in (("sex", "late_fusion"), ("category", "joint"))
            for model_name, f1 in (
                ("text", 0.8),
                ("image", 0.6),
                ("early_fusion", 0.85),
                ("joint", 0.86),
                ("mean_probability", 0.7),
                ("late_fusion", 0.87),
            )
        ]
    )
    values = {
        "clean_products": clean,
        "rejected_products": rejected,
        "product_labels": labels,
        "image_index": image_index,
        "product_characteristics": characteristics,
        "text_embeddings": text_table,
        "image_embeddings": image_table,
        "joint_embeddings": joint,
        "contrastive_model": pd.DataFrame({"stage": ["after"], "artifact": [str(folder)]}),
        "classification_report": report,
        "raw_products_train": raw_train,
        "raw_products_test": raw_test,
    }
    return values, rejected_nm


def _stub(name: str, value):
    @dg.asset(name=name)
    def stub():
        return value

    return stub


def test_both_prediction_assets_go_through_predict_products_and_agree(tmp_path, instance, world, monkeypatch):
    values, rejected_nm = world
    calls = []
    real = prediction.predict_products

    def recording(products, *args, **kwargs):
        calls.append(sorted(products["nm"].astype(str)))
        return real(products, *args, **kwargs)

    monkeypatch.setattr(prediction, "predict_products", recording)
    resources = {
        "io_manager": WBStorageIOManager(base_dir=str(tmp_path / "storage")),
        "pipeline_storage": WBStorage(base_dir=str(tmp_path / "storage")),
    }
    classifier_config = {"config": SMALL}
    trained = dg.materialize(
        [
            *(_stub(name, value) for name, value in values.items()),
            classification_assets.label_classifiers,
            classification_assets.fusion_classifier,
            classification_assets.test_predictions,
            classification_checks.test_predictions_cover_test_products,
        ],
        resources=resources,
        instance=instance,
        run_config={"ops": {"label_classifiers": classifier_config, "fusion_classifier": classifier_config}},
    )
    assert trained.success
    test_table = trained.output_for_node("test_predictions")
    checks = {e.check_name: e for e in trained.get_asset_check_evaluations()}
    assert checks["test_predictions_cover_test_products"].passed

    instance.add_dynamic_partitions(product_drops.name, [DROP])
    dropped = dg.materialize(
        [*(_stub(name, value) for name, value in values.items()), drops_assets.drop_predictions],
        resources=resources,
        instance=instance,
        partition_key=DROP,
        selection=[drops_assets.drop_predictions],
    )  # its inputs: what the first run stored
    assert dropped.success
    drop_table = dropped.output_for_node("drop_predictions")

    clean = values["clean_products"]
    test_nm = sorted(clean.loc[clean["split"] == "test", "nm"])
    drop_nm = sorted([*clean.loc[clean["batch"] == DROP, "nm"], rejected_nm])
    assert calls == [test_nm, drop_nm]  # one call per asset, each with its own products

    # test_predictions: every clean test product, every label, the report's best model
    assert list(test_table.columns) == prediction.COLUMNS
    for label, best in (("sex", "late_fusion"), ("category", "joint")):
        own = test_table[test_table["label"] == label].set_index("nm")
        assert sorted(own.index) == test_nm
        assert own["probability"].between(0, 1).all()
        assert set(own["predicted"]) <= set(values["product_labels"][label].dropna().astype(str))
        assert (own["model"] == best).all() and (own["status"] == "predicted").all()

    # the same products through the two assets: identical rows, to the last bit
    shared = sorted(set(test_nm) & set(drop_nm))
    assert len(shared) == 10
    key = ["nm", "label"]
    text_columns = {c: object for c in prediction.COLUMNS if c != "probability"}  # str dtypes differ by reader
    from_test = test_table[test_table["nm"].isin(shared)].sort_values(key).reset_index(drop=True).astype(text_columns)
    from_drop = drop_table[drop_table["nm"].isin(shared)].sort_values(key).reset_index(drop=True).astype(text_columns)
    pd.testing.assert_frame_equal(from_test, from_drop, check_exact=True)
    assert (drop_table.loc[drop_table["nm"] == rejected_nm, "status"] == "rejected").all()


class _Linear:
    """A projection through torch's matrix product, whose kernel (and last bits) depend on the row count."""

    def __init__(self, dim_in: int, dim_out: int):
        torch.manual_seed(1)
        self.layer = torch.nn.Linear(dim_in, dim_out)

    def project_text(self, vectors):
        with torch.no_grad():
            return _unit(self.layer(torch.tensor(np.asarray(vectors))).numpy())

    project_image = project_text

    def product_vectors(self, text, image):  # as a JointSpaceModel without a product space: the heads' vectors
        return combine_joint(self.project_text(text), self.project_image(image))


@pytest.mark.parametrize("n_classes", [3, 37])
def test_a_product_gets_the_same_answer_alone_or_in_any_batch(n_classes):
    """Bit for bit, at any position of its block: with 37 classes (sub_category's count) a BLAS matrix
    product's row changed in the last bits with its position, so a card (row 0) differed from the batch."""
    rng = np.random.default_rng(2)
    n, dim = 90, 384
    y = np.array([f"c{i}" for i in range(n_classes)], dtype=object)[rng.integers(0, n_classes, size=n)]
    text = _unit(rng.normal(size=(n, dim)) + np.eye(dim)[pd.Series(y).astype("category").cat.codes.to_numpy()])
    image = _unit(rng.normal(size=(n, dim)))
    joint_model = _Linear(dim, 96)
    joint = contrastive.combine_joint(joint_model.project_text(text), joint_model.project_image(image))
    from sklearn.linear_model import LogisticRegression

    models = core.LabelModels(
        label="sex",
        classes=sorted(set(y)),
        base={
            "text": LogisticRegression(max_iter=500).fit(text, y),
            "image": LogisticRegression(max_iter=500).fit(image, y),
            "joint": LogisticRegression(max_iter=500).fit(joint, y),
        },
    )
    nm = [str(i) for i in range(n)]
    catalogue = pd.DataFrame(
        {"nm": nm, "split": "test", "brand": [f"b{i % 5}" for i in range(n)], "price": rng.uniform(10, 900, n)}
    )
    # late fusion over the text and image probabilities, the tabular columns and the brand encoding
    classes = sorted(set(y))
    unimodal = np.hstack([models.predict_proba(m, {"text": text, "image": image}) for m in ("text", "image")])
    numeric, brands = _tabular_block(fusion.tabular_features(nm, catalogue, None), np.array(nm, dtype=object))
    encoding = fusion.BrandTargetEncoding(len(classes), 5.0).fit(brands, [classes.index(v) for v in y])
    late = fusion.LateFusionClassifier(classes=classes, n_estimators=10, min_child_samples=5, boost_from="mean")
    late.fit(np.hstack([unimodal, numeric, encoding.transform(brands)]), y)
    fused = core.LabelModels("category", classes, models.base, late, ("text", "image"), encoding)
    season = core.LabelModels("season", classes, models.base)
    report = pd.DataFrame(
        [
            {"label": label, "model": model, "macro_f1": f1, "best_model": best}
            for label, best in (("sex", "joint"), ("season", "mean_probability"), ("category", "late_fusion"))
            for model, f1 in (("joint", 0.9), ("text", 0.8), ("image", 0.5), ("mean_probability", 0.7))
        ]
    )
    tables = EmbeddingTable(np.array(nm), text), EmbeddingTable(np.array(nm), image)
    label_models = {"sex": models, "season": season, "category": fused}

    def predict(chosen):
        return prediction.predict_products(
            pd.DataFrame({"nm": chosen}), *tables, joint_model, label_models, report, catalogue, None
        ).set_index("nm")

    everything = predict(nm)
    assert everything.groupby("label")["model"].unique().map(list).to_dict() == {
        "sex": ["joint"],
        "season": ["mean_probability"],
        "category": ["late_fusion"],
    }
    for chosen in (["5"], ["5", "17"], nm[3:8], nm[10:19], nm[::-1]):
        part = predict(chosen)
        pd.testing.assert_frame_equal(part, everything.loc[chosen], check_exact=True)


def test_train_products_missing_from_the_characteristics_table_are_parsed():
    catalogue = pd.DataFrame(
        {
            "nm": ["1", "2", "3"],
            "split": ["train", "train", "test"],
            "characteristics": ["[{'charcName': 'Цвет', 'charcValues': ['красный']}]"] * 3,
        }
    )
    known = pd.DataFrame({"nm": ["1"], "name": "Состав", "value": "хлопок"})
    merged = prediction.with_unparsed_characteristics(pd.DataFrame({"nm": ["1", "2", "3"]}), catalogue, known)
    assert sorted(merged["nm"].astype(str)) == ["1", "2"]  # 1 kept as it was, 2 parsed, 3 is a test product
    assert merged.loc[merged["nm"].astype(str) == "2", "name"].tolist() == ["Цвет"]
