"""Group-aware folds keep near duplicates together; metrics equal scikit-learn's."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from wb_pipeline.core.model_selection import metrics
from wb_pipeline.core.model_selection.folds import (
    MAX_TITLE_PRODUCTS,
    brand_groups,
    duplicate_groups,
    group_stratified_folds,
    specific_keys,
)
from wb_pipeline.core.models.classification import product_groups


def test_duplicate_groups_are_transitive_components():
    titles = ["a", "b", "a", "c", None, "d", ""]
    hashes = ["h1", "h2", "h3", "h3", "h4", "h4", None]
    # rows 0,2 share title a; row 2,3 share hash h3; rows 4,5 share h4; row 1 and 6 alone
    groups = duplicate_groups(titles, hashes)
    assert groups[0] == groups[2] == groups[3]
    assert groups[4] == groups[5]
    assert len({groups[0], groups[1], groups[4], groups[6]}) == 4
    assert groups.tolist() == [0, 1, 0, 0, 2, 2, 3]  # numbered by first appearance


def test_missing_keys_link_nothing():
    groups = duplicate_groups([None, None, float("nan")], ["", None, None])
    assert len(set(groups.tolist())) == 3


def test_duplicate_groups_rejects_ragged_keys():
    with pytest.raises(ValueError, match="differ in length"):
        duplicate_groups(["a", "b"], ["h"])


def test_brand_groups_missing_brand_is_own_group():
    groups = brand_groups(["x", None, "x", None, "y"])
    assert groups[0] == groups[2]
    assert groups[1] != groups[3]
    assert len(set(groups.tolist())) == 4


def fold_ids(folds, n_rows: int) -> np.ndarray:
    """The validation fold number of each row (-1 for a row in no validation part)."""
    ids = np.full(n_rows, -1, dtype=np.int64)
    for number, (_, valid) in enumerate(folds):
        ids[valid] = number
    return ids


def test_folds_keep_duplicates_together_and_stratify():
    rng = np.random.default_rng(0)
    n = 300
    titles = [f"t{i // 3}" for i in range(n)]  # triples of identical titles
    hashes = [f"h{rng.integers(0, 400)}" for _ in range(n)]  # random image collisions chain groups
    groups = duplicate_groups(titles, hashes)
    y = np.array([["a", "b", "c"][i % 3] for i in range(n // 3) for _ in range(3)])
    folds = group_stratified_folds(y, groups, n_splits=5, seed=0)
    ids = fold_ids(folds, n)
    assert (ids >= 0).all()
    for group in np.unique(groups):
        assert len(set(ids[groups == group])) == 1
    for train, valid in folds:
        assert not set(groups[train]) & set(groups[valid])
        assert set(y[valid]) == {"a", "b", "c"}
    again = group_stratified_folds(y, groups, n_splits=5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_too_few_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="3 distinct groups for 5 folds"):
        group_stratified_folds(["a", "b"] * 5, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0], n_splits=5, seed=0)


def test_product_groups_use_title_case_insensitively_and_image_hash():
    clean = pd.DataFrame(
        {"nm": ["1", "2", "3", "4"], "title": ["Шапка ", "шапка", "Шарф", "Носки"], "brand": ["b1", "b2", "b1", None]}
    )
    index = pd.DataFrame({"nm": ["1", "2", "3", "4"], "content_hash": ["x", "y", "z", "z"]})
    groups = product_groups(clean, index, "duplicates")
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[0] != groups[2]
    by_brand = product_groups(clean, index, "brand")
    assert by_brand[0] == by_brand[2] and by_brand[0] != by_brand[1]


def test_specific_keys_drop_values_shared_by_more_than_max_products():
    keys = ["a", "a", "", None, float("nan"), "b", "c", "c", "c"]
    assert specific_keys(keys, 2).tolist() == ["a", "a", None, None, None, "b", None, None, None]
    assert specific_keys(keys, 3).tolist() == ["a", "a", None, None, None, "b", "c", "c", "c"]
    assert specific_keys(keys, 1).tolist() == [None, None, None, None, None, "b", None, None, None]
    assert specific_keys(pd.Series(["x"] * 6, dtype="string")).tolist() == [None] * 6  # default 5
    assert specific_keys(["x"] * MAX_TITLE_PRODUCTS).tolist() == ["x"] * MAX_TITLE_PRODUCTS
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_products"):
            specific_keys(keys, bad)


def test_product_groups_do_not_link_products_by_a_generic_title():
    # 8 different products carry the bare attribute title (a catalogue whose titles are colour and
    # fabric fields); 2 carry a specific one; products 8 and 9 share an image.
    titles = ["Negro grey P-PLANA SHE"] * 8 + ["Платье миди красное", "платье миди красное"]
    clean = pd.DataFrame({"nm": [str(i) for i in range(10)], "title": titles})
    index = pd.DataFrame({"nm": clean["nm"], "content_hash": [f"h{i}" for i in range(7)] + ["h7", "h7", "h9"]})
    groups = product_groups(clean, index, "duplicates")
    assert groups[8] == groups[9]  # a specific title
    assert groups[7] == groups[8]  # the identical image still links, whatever the title
    assert len(set(groups[:7].tolist())) == 7 and not set(groups[:7]) & {groups[8]}
    assert len(set(product_groups(clean, index, "duplicates", max_title_products=8).tolist())) == 1


def test_scores_equal_sklearn_on_hand_made_case():
    y_true = ["a", "a", "b", "b", "c", "c", "c"]
    y_pred = ["a", "b", "b", "b", "c", "a", "c"]
    labels = ["a", "b", "c", "d"]  # 'd' never occurs: counts as F1 0 in the macro mean
    result = metrics.scores(y_true, y_pred, labels)
    assert result["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    )
    # by hand: a: P=1/2 R=1/2 F=.5; b: P=2/3 R=1 F=.8; c: P=1 R=2/3 F=.8; d: 0
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.8 + 0.0) / 4)
    assert result["weighted_f1"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 3 * 0.8) / 7)
    binary = metrics.scores(["p", "n", "n", "p"], ["p", "p", "n", "n"], ["n", "p"], positive_label="p")
    assert binary["f1"] == pytest.approx(0.5)
    per_class = metrics.per_class_f1(y_true, y_pred, labels)
    assert per_class == pytest.approx({"a": 0.5, "b": 0.8, "c": 0.8, "d": 0.0})


def test_bootstrap_resamples_match_sklearn():
    rng = np.random.default_rng(3)
    labels = ["x", "y", "z"]
    y_true = rng.choice(labels, size=60, p=[0.6, 0.3, 0.1])
    y_pred = np.where(rng.random(60) < 0.7, y_true, rng.choice(labels, size=60))
    config = metrics.MetricsConfig(n_bootstrap=25, seed=5)
    dist = metrics.bootstrap_f1(y_true, y_pred, labels, config, positive_label="z")
    # replay the same resamples and score them with sklearn
    replay = np.random.default_rng(5).integers(0, 60, size=(25, 60))
    for b, index in enumerate(replay):
        t, p = y_true[index], y_pred[index]
        assert dist["macro_f1"][b] == pytest.approx(f1_score(t, p, labels=labels, average="macro", zero_division=0))
        assert dist["weighted_f1"][b] == pytest.approx(
            f1_score(t, p, labels=labels, average="weighted", zero_division=0)
        )
        assert dist["f1"][b] == pytest.approx(f1_score(t, p, labels=["z"], average=None, zero_division=0)[0])


def test_interval_brackets_point_estimate_and_narrows_with_data():
    rng = np.random.default_rng(1)

    def interval(n):
        y_true = rng.choice(["a", "b"], size=n)
        y_pred = np.where(rng.random(n) < 0.8, y_true, np.where(y_true == "a", "b", "a"))
        result = metrics.scores_with_intervals(y_true, y_pred, ["a", "b"], metrics.MetricsConfig(n_bootstrap=400))
        assert result["macro_f1_low"] <= result["macro_f1"] <= result["macro_f1_high"]
        return result["macro_f1_high"] - result["macro_f1_low"]

    assert interval(2000) < interval(100)


def test_paired_gain_is_the_sklearn_difference_with_the_error_of_the_difference():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.8, y, rng.integers(0, 3, 300))
    worse = np.where(rng.random(300) < 0.6, y, rng.integers(0, 3, 300))
    gain, error = metrics.paired_macro_f1_gain(y, good, worse, 3, n_bootstrap=300, seed=0)
    expected = f1_score(y, good, labels=[0, 1, 2], average="macro") - f1_score(
        y, worse, labels=[0, 1, 2], average="macro"
    )
    assert gain == pytest.approx(expected)
    assert 0 < error < 0.06 and gain > 3 * error  # a real gain stands well clear of its error
    # a candidate that differs from the reference by noise alone (12 rows re-drawn at random): its
    # gain is of the order of its error, so a one-standard-error rule would not take it
    nearly = good.copy()
    changed = rng.choice(300, 12, replace=False)
    nearly[changed] = rng.integers(0, 3, 12)
    small, small_error = metrics.paired_macro_f1_gain(y, nearly, good, 3, n_bootstrap=300, seed=0)
    assert small_error > 0 and small < small_error
    assert metrics.paired_macro_f1_gain(y, good, good, 3) == (0.0, 0.0)
    with pytest.raises(ValueError, match="predictions"):
        metrics.paired_macro_f1_gain(y, good[:10], worse, 3)


def test_bootstrap_rejects_unknown_label():
    with pytest.raises(ValueError, match="'q' is not in labels"):
        metrics.bootstrap_f1(["a", "q"], ["a", "a"], ["a", "b"])


def test_confusion_png_is_embeddable():
    png = metrics.confusion_matrix_png(["a", "b", "b"], ["a", "a", "b"], ["a", "b"], "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from wb_pipeline.core.evaluation.figures import png_markdown

    assert png_markdown(png, "cm").startswith("![cm](data:image/png;base64,")
