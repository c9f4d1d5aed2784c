"""The service's pure core: card checks, the duplicate rule seen from a new product, and when a
materialization is complete enough to serve (no HTTP, no models)."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from wb_pipeline.core.data.images import ImageConfig
from wb_pipeline.core.data.storage import StorageLayout
from wb_pipeline.core.search.duplicates import DuplicateConfig, new_product_matches
from wb_pipeline.core.serving.bundle import SERVED_ASSETS, incomplete_reason, materialization_stamp
from wb_pipeline.core.serving.cards import (
    CARD_NM,
    CardError,
    ServingLimits,
    card_characteristics,
    clean_card,
    decode_photo,
    parse_card,
    raw_frame,
)
from wb_pipeline_tests.data.test_images import png_declaring


def jpeg(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def refused(fields, photo=None, limits=ServingLimits()) -> CardError:
    with pytest.raises(CardError) as caught:
        parse_card(fields, photo, limits)
    return caught.value


def test_a_good_card_keeps_its_fields():
    characteristics = json.dumps(
        [{"charcName": "Цвет", "charcValues": ["белый"]}, {"charcName": "Состав", "charcValues": ["хлопок"]}]
    )
    card = parse_card(
        {
            "title": "Платье женское",
            "description": "Летнее",
            "brand": "Ромашка",
            "price": "1290.5",
            "characteristics": characteristics,
        },
        jpeg(),
    )
    assert (card.nm, card.title, card.brand, card.price) == (CARD_NM, "Платье женское", "Ромашка", 1290.5)
    long = card_characteristics(card)
    assert sorted(long["name"]) == ["Состав", "Цвет"] and set(long["nm"]) == {CARD_NM}
    assert parse_card({"nm": "123", "title": "Платье"}, None).nm == "123"
    assert raw_frame(card)[["nm", "title", "price"]].iloc[0].tolist() == [CARD_NM, "Платье женское", 1290.5]


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({}, 422, "empty card"),
        ({"title": "   ", "description": ""}, 422, "empty card"),
        ({"title": "x" * 1_000_001}, 413, "1,000-character limit"),
        ({"description": "y" * 20_001}, 413, "20,000-character limit"),
        ({"title": "Платье", "colour": "red"}, 422, "unknown card field"),
        ({"title": 5}, 422, "must be text"),
        ({"title": "Платье", "price": "дорого"}, 422, "must be a number"),
        ({"title": "Платье", "price": "-3"}, 422, "finite number >= 0"),
        ({"title": "Платье", "price": "nan"}, 422, "finite number >= 0"),
        ({"title": "Платье", "characteristics": "__import__('os').system('touch /tmp/x')"}, 422, "cannot be parsed"),
        ({"title": "Платье", "characteristics": "[{'name': 'Цвет'"}, 422, "cannot be parsed"),
        ({"title": "Платье", "characteristics": "[" * 70_000}, 413, "byte limit"),
        ({"title": "Пла\x00тье"}, 422, "NUL"),
        ({"title": "\ud800"}, 422, "not valid text"),
    ],
)
def test_bad_cards_are_refused_with_a_status_and_a_reason(fields, status, words):
    error = refused(fields)
    assert error.status == status and words in str(error), (error.status, str(error))


def test_a_photo_alone_is_a_card_but_an_empty_one_is_not():
    assert parse_card({}, jpeg()).photo is not None
    assert "empty card" in str(refused({}, b""))


def test_cleaning_rules_apply_to_a_card():
    from wb_pipeline.core.serving.cards import ProductCard

    card = ProductCard(nm=CARD_NM, title="ab", description=None, characteristics=None, brand=None, price=None)
    with pytest.raises(CardError, match="title_too_short"):
        clean_card(card)
    # no title: the notebook's fill (the description's first words) applies, as in clean_products
    card = ProductCard(CARD_NM, None, "Тёплая зимняя куртка для мальчика", None, None, None)
    assert clean_card(card)["title"].iloc[0] == "Тёплая зимняя куртка для мальчика"


def test_photos_are_decoded_by_the_image_pipeline_or_refused():
    config = ImageConfig()
    assert decode_photo(jpeg((300, 200)), config, None).size == (300, 200)
    cases = [
        (b"GIF89a not really", 422, "corrupt"),
        (b"just some text, not an image", 422, "corrupt"),
        (jpeg((400, 400))[:300], 422, "truncated"),
        (png_declaring(100_000, 100_000), 413, "too_many_pixels"),
        (png_declaring(9_000, 9_000), 413, "too_many_pixels"),
    ]
    for data, status, reason in cases:
        with pytest.raises(CardError) as caught:
            decode_photo(data, config, None)
        assert caught.value.status == status and reason in str(caught.value), (reason, str(caught.value))
    with pytest.raises(CardError, match="byte limit") as caught:
        decode_photo(jpeg(), ImageConfig(max_member_bytes=100), None)
    assert caught.value.status == 413


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_upload_bytes"):
        ServingLimits(max_upload_bytes=0)
    error = refused({"title": "x" * 51}, limits=ServingLimits(max_title_chars=50))
    assert error.status == 413


def test_a_new_product_matches_by_either_threshold_else_its_best_candidate_above_both_floors():
    config = DuplicateConfig(text_threshold=0.99, image_threshold=0.99, text_floor=0.97, image_floor=0.95)
    # candidate 0: same title; 1: same photo; 2: nothing strong
    assert new_product_matches([0.995, 0.5, 0.9], [0.2, 0.999, 0.9], config).tolist() == [True, True, False]
    # nothing strong: the best candidate above both floors (by mean similarity), only that one
    assert new_product_matches([0.98, 0.972, 0.985], [0.96, 0.955, 0.5], config).tolist() == [True, False, False]
    # below a floor: nothing
    assert new_product_matches([0.98, 0.5], [0.90, 0.5], config).tolist() == [False, False]
    # a missing photo (-1) never reaches the image threshold or floor
    assert new_product_matches([0.98, 0.995], [-1.0, -1.0], config).tolist() == [False, True]
    assert new_product_matches([], [], config).tolist() == []


def test_a_generic_text_vouches_for_nothing():
    config = DuplicateConfig(max_title_products=3)
    text = np.full(5, 0.999, np.float32)  # five catalogue products share the card's text
    image = np.array([0.1, 0.2, 0.995, 0.3, 0.4], np.float32)
    assert new_product_matches(text, image, config).tolist() == [False, False, True, False, False]
    assert new_product_matches(text[:2], image[:2], config).tolist() == [True, True]  # 3 with the card: not generic


def _touch_all(layout: StorageLayout, seconds: dict[str, int]) -> None:
    layout.assets.mkdir(parents=True, exist_ok=True)
    for asset in SERVED_ASSETS:
        path = layout.asset_file(asset)
        path.write_bytes(b"x")
        mtime = 1_000_000 + seconds.get(asset, 0)
        os.utime(path, (mtime, mtime))


def test_only_a_complete_materialization_is_servable(tmp_path):
    layout = StorageLayout(str(tmp_path / "storage"))
    reason = incomplete_reason(layout, materialization_stamp(layout))
    assert "nothing complete is materialized" in reason and "test_predictions" in reason
    order = {
        "contrastive_model": 10,
        "classification_report": 20,
        "test_predictions": 30,
        "product_index": 40,
        "duplicate_groups": 40,
        "text_embeddings": 5,
        "image_embeddings": 5,
    }
    _touch_all(layout, order)
    stamp = materialization_stamp(layout)
    assert incomplete_reason(layout, stamp) is None
    # a run between its steps: new classifiers, predictions not written yet
    _touch_all(layout, {**order, "classification_report": 35})
    assert "classification_report is newer than test_predictions" in incomplete_reason(
        layout, materialization_stamp(layout)
    )
    _touch_all(layout, {**order, "contrastive_model": 25})
    assert "contrastive_model is newer" in incomplete_reason(layout, materialization_stamp(layout))
    # the stamp changes when any served file is rewritten
    assert materialization_stamp(layout) != stamp


def test_tabular_features_from_brand_counts_equal_those_from_the_whole_catalogue():
    import pandas as pd

    from wb_pipeline.core.models.fusion import brand_counts, tabular_features

    catalogue = pd.DataFrame(
        {
            "nm": ["1", "2", "3", "4", "5"],
            "brand": ["Ромашка", " ромашка ", "Nike", None, "NIKE"],
            "price": [100.0, None, 5.0, 7.0, 1.0],
        }
    )
    card = pd.DataFrame({"nm": ["card"], "brand": ["nike"], "price": [42.0]})
    whole = pd.concat([catalogue, card], ignore_index=True)
    expected = tabular_features(["card"], whole, None)
    counts = brand_counts(catalogue).plus(card)
    got = tabular_features(["card"], card, None, counts)
    pd.testing.assert_frame_equal(got, expected)
    assert got["brand_frequency"].iloc[0] == 3 / 6
    # an edit of product 3 (Nike -> Ромашка): its old row leaves the counts, the new one enters
    edit = pd.DataFrame({"nm": ["3"], "brand": ["Ромашка"], "price": [5.0]})
    whole = pd.concat([catalogue[catalogue["nm"] != "3"], edit], ignore_index=True)
    counts = brand_counts(catalogue).plus(catalogue[catalogue["nm"] == "3"], sign=-1).plus(edit)
    pd.testing.assert_frame_equal(tabular_features(["3"], edit, None, counts), tabular_features(["3"], whole, None))
    assert counts.products == 5
