"""benchmarks/product_space_share.py on synthetic two-sided products: the cross-fitted share goes to
the side that separates the known classes, the product vectors are unit-norm with both sides'
dimensions, and the label-free R² rule returns a share in [0, 1]."""

import numpy as np
import pytest

from benchmarks import product_space_share as bench


def blobs(n: int = 240, informative: str = "image", seed: int = 0):
    """(text, image, targets): the `informative` side holds 4 categories × 2 sub-categories; the other
    side holds 4 equally strong blobs unrelated to the classes (plus noise)."""
    rng = np.random.default_rng(seed)
    sub = rng.integers(0, 8, n)
    category = sub // 2
    informative_side = (rng.normal(size=(4, 16)) * 4)[category] + (rng.normal(size=(8, 16)) * 2)[sub]
    informative_side += rng.normal(size=(n, 16))
    unrelated = (rng.normal(size=(4, 24)) * 4)[rng.integers(0, 4, n)] + rng.normal(size=(n, 24))
    text, image = (unrelated, informative_side) if informative == "image" else (informative_side, unrelated)
    known = rng.random(n) < 0.8
    targets = {
        "category": np.where(known, [f"c{c}" for c in category], None).astype(object),
        "sub_category": np.where(known, [f"s{s}" for s in sub], None).astype(object),
    }
    return text, image, targets


@pytest.mark.parametrize("informative", ["image", "text"])
def test_chosen_share_goes_to_the_informative_side(informative):
    text, image, targets = blobs(informative=informative)
    choice = bench.crossfit_share(text, image, targets, seeds=(0,), halves=4)
    if informative == "image":
        assert choice.share <= 0.3
    else:
        assert choice.share >= 0.7
    assert sum(choice.frequency.values()) == 8  # 4 halves × both directions
    assert set(choice.frequency) <= set(bench.SHARE_GRID)
    assert set(choice.held_out) == {"category", "sub_category"}
    assert choice.held_out["category"][0] > 0.5  # the informative side's classes are recovered out of sample


def test_product_vectors_are_unit_norm_with_both_sides():
    text, image, _ = blobs()
    standard_text, standard_image = bench.standardise(text), bench.standardise(image)
    assert np.allclose(standard_text.mean(axis=0), 0.0, atol=1e-9)
    assert np.isclose((standard_image**2).sum(axis=1).mean(), 1.0)
    for share in (0.0, 0.3, 1.0):
        vectors = bench.product_vector(standard_text, standard_image, share)
        assert vectors.shape == (len(text), text.shape[1] + image.shape[1])
        assert vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(bench.product_vector(standard_text, standard_image, 1.0)[:, text.shape[1] :], 0.0)
    assert np.allclose(bench.product_vector(standard_text, standard_image, 0.0)[:, : text.shape[1]], 0.0)
    with pytest.raises(ValueError):
        bench.product_vector(standard_text, standard_image, 1.5)


def test_r2_rule_share_is_a_share():
    text, image, _ = blobs()
    share, r2 = bench.r2_rule_share(text, image)
    assert 0.0 <= share <= 1.0
    assert set(r2) == {"text|image", "image|text"}
    # the text a copy of the image (plus a little noise): each predicts the other alike → balanced
    rng = np.random.default_rng(1)
    share, r2 = bench.r2_rule_share(image + 0.1 * rng.normal(size=image.shape), image, groups=np.arange(len(image)) % 7)
    assert r2["text|image"] > 0.8 and r2["image|text"] > 0.8
    assert 0.3 <= share <= 0.7
    # the text read off a quarter of the photo's dimensions: the photo predicts the text, not the reverse
    # → the photo leads
    share, r2 = bench.r2_rule_share(image[:, :4] @ rng.normal(size=(4, 8)), image)
    assert r2["text|image"] > r2["image|text"]
    assert share < 0.3
