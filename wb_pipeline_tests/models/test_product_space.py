"""The joint space's product vector: the text's share read from the catalogue (core.models.product_space) and
the model's product vectors and one-modality queries (core.models.contrastive.JointSpaceModel)."""

import numpy as np
import pytest
from upath import UPath

from wb_pipeline.core.models import product_space
from wb_pipeline.core.models.clustering import ClusteringConfig
from wb_pipeline.core.models.contrastive import JointSpaceModel, load_joint_model, save_joint_model
from wb_pipeline_tests.models.test_contrastive import FAST

SMALL_PCA = ClusteringConfig(reduction="pca", pca_components=8)


def blobs(informative: str, n: int = 240, classes: int = 4, seed: int = 0):
    """Text [n, 12] and image [n, 20] vectors where only `informative`'s side separates the classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = {"text": rng.normal(size=(classes, 12)) * 4, "image": rng.normal(size=(classes, 20)) * 4}
    sides = {
        side: (centres[side][y] if side == informative else 0) + rng.normal(size=(n, dim))
        for side, dim in (("text", 12), ("image", 20))
    }
    # the uninformative side gets the larger variance, as a photo encoder's often has
    sides["text" if informative == "image" else "image"] *= 3.0
    return sides["text"].astype(np.float32), sides["image"].astype(np.float32), y.astype(str)


@pytest.mark.parametrize("informative", ["image", "text"])
def test_the_share_goes_to_the_side_that_carries_the_classes(informative):
    text, image, y = blobs(informative)
    labelled = np.random.default_rng(1).random(len(y)) < 0.5  # about half the products carry their class
    targets = {"category": np.where(labelled, y, None)}
    choice = product_space.choose_text_share(
        text, image, targets, step=0.25, halves=3, min_labelled=20, config=SMALL_PCA
    )
    assert choice.rule == product_space.RULE_CROSS_FITTED
    assert sum(choice.chosen_counts.values()) == 6  # 3 halves, both ways
    # ties (every share that separates the classes) go to the balanced 0.5; never toward the noise side
    if informative == "image":
        assert choice.share <= 0.5 and 1.0 not in choice.chosen_counts
    else:
        assert choice.share >= 0.5 and 0.0 not in choice.chosen_counts
    assert choice.held_out_ami is not None and choice.held_out_ami > 0.5


def test_without_known_classes_the_r2_rule_decides():
    text, image, _ = blobs("image")
    choice = product_space.choose_text_share(text, image, {"category": np.full(len(text), None)}, config=SMALL_PCA)
    assert choice.rule == product_space.RULE_R2 and choice.held_out_ami is None
    assert 0.0 <= choice.share <= 1.0
    assert 0.0 <= choice.r2_text_given_image <= 1.0 and 0.0 <= choice.r2_image_given_text <= 1.0


def test_product_vectors_and_one_modality_queries(tmp_path):
    text, image, _ = blobs("image", n=60)
    model = JointSpaceModel(text.shape[1], image.shape[1], FAST)
    assert not model.has_product_space
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.set_product_space(text, image, 1.5)
    model.set_product_space(text, image, 0.3)
    products = model.product_vectors(text, image)
    assert products.shape == (60, 32) and model.product_dim == 32
    np.testing.assert_allclose(np.linalg.norm(products, axis=1), 1.0, atol=1e-5)
    # each side carries its share of the (standardised) variance: the squared norms average to s and 1 - s
    np.testing.assert_allclose((products[:, :12] ** 2).sum(axis=1).mean(), 0.3, atol=0.08)
    query = model.product_query(text[:1], "text")
    assert query.shape == (1, 32) and not query[0, 12:].any()
    # a text query's scores come from the products' text parts alone (the image half adds 0)
    np.testing.assert_allclose(products @ query[0], products[:, :12] @ query[0, :12], atol=1e-6)
    assert int(np.argmax(products[:, :12] @ query[0, :12])) == int(np.argmax(products @ query[0]))
    image_query = model.product_query(image[:1], "image")
    assert not image_query[0, :12].any()
    # saved and loaded with the model, bit for bit
    save_joint_model(model, UPath(tmp_path / "m"))
    loaded, _ = load_joint_model(UPath(tmp_path / "m"))
    assert loaded.has_product_space
    np.testing.assert_array_equal(loaded.product_vectors(text, image), products)


def test_the_r2_rule_weights_each_side_by_what_the_other_cannot_predict():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(300, 16)).astype(np.float32)
    same = product_space.r2_text_share(image.copy(), image)[0]
    assert 0.3 <= same <= 0.7  # either side predicts the other completely: balanced
    text_from_image = (image[:, :8] @ rng.normal(size=(8, 12))).astype(np.float32)  # the text is a photo summary
    share, text_given_image, image_given_text = product_space.r2_text_share(text_from_image, image)
    assert text_given_image > 0.9 and image_given_text < 0.7
    assert share < 0.3  # the photo leads
