"""A product card as a seller uploads it, checked and turned into the pipeline's own inputs.

A card (title, description, optional characteristics, brand, price, photo) becomes exactly what the
batch pipeline would have made of the same product: the cleaning rules of `clean_products`
(`core.data.cleaning`), the `product_text` preprocessing, the encoder text of `text_embeddings`
(`core.text.product_text.encoder_input`, the same fields, form and description token budget), the
characteristics parser of `product_characteristics`, and the photo decoded by the image pipeline's
decoder (`core.data.images.decode_image`: decompression-bomb guard, truncated / corrupt / unsupported
files refused). Every refusal is a `CardError` carrying an HTTP status and a message a person can act
on; nothing here executes input or writes a file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import pandas as pd

from wb_pipeline.core.data import images
from wb_pipeline.core.data.characteristics import characteristics_table
from wb_pipeline.core.data.cleaning import CleaningConfig, clean_products
from wb_pipeline.core.data.images.config import REASON_TOO_LARGE, REASON_TOO_MANY_PIXELS
from wb_pipeline.core.text.product_text import TextInputs, build_product_text, encoder_input

# The id a card gets when it names no catalogue product (a WB nm is a number, so it never collides).
CARD_NM = "card"
CARD_FIELDS = ("nm", "title", "description", "characteristics", "brand", "price")


class CardError(ValueError):
    """A card the service refuses; `status` is the HTTP status to answer with (4xx)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServingLimits:
    """What one request may carry (the service's config; `wb_pipeline.settings` sets the upload limit).

    `max_upload_bytes`: the whole request body (a photo included); `max_title_chars` /
    `max_description_chars` / `max_characteristics_bytes` / `max_field_chars`: per field;
    `max_top`: the most neighbours `/similar` and `/search` return."""

    max_upload_bytes: int = 8 * 1024 * 1024
    max_title_chars: int = 1_000
    max_description_chars: int = 20_000
    max_characteristics_bytes: int = 64 * 1024
    max_field_chars: int = 200
    max_top: int = 100

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_title_chars",
            "max_description_chars",
            "max_characteristics_bytes",
            "max_field_chars",
            "max_top",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"ServingLimits.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ProductCard:
    """A checked card: `nm` is CARD_NM unless the card names a product (an edit of a catalogue product)."""

    nm: str
    title: str | None
    description: str | None
    characteristics: str | None
    brand: str | None
    price: float | None
    photo: bytes | None = None


def _text_field(fields: dict, name: str, limit: int) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CardError(f"field {name!r} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise CardError(f"field {name!r} has {len(value):,} characters, above the {limit:,}-character limit", 413)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CardError(f"field {name!r} is not valid text (lone surrogates): send UTF-8") from None
    if "\x00" in value:
        raise CardError(f"field {name!r} contains a NUL character")
    return value if value.strip() else None


def parse_card(fields: dict, photo: bytes | None, limits: ServingLimits = ServingLimits()) -> ProductCard:
    """A `ProductCard` from the request's fields (str values; `price` may be a number) and photo bytes.

    Refused (`CardError`): unknown fields, a non-text or over-long field, a price that is not a
    non-negative finite number, a card without a title, a description and a photo, characteristics
    the pipeline's parser cannot read."""
    unknown = sorted(set(fields) - set(CARD_FIELDS))
    if unknown:
        raise CardError(f"unknown card field(s) {unknown}: a card has {list(CARD_FIELDS)} and an optional photo")
    title = _text_field(fields, "title", limits.max_title_chars)
    description = _text_field(fields, "description", limits.max_description_chars)
    brand = _text_field(fields, "brand", limits.max_field_chars)
    nm = _text_field(fields, "nm", limits.max_field_chars)
    raw_characteristics = fields.get("characteristics")
    if raw_characteristics is not None and not isinstance(raw_characteristics, str):
        raise CardError("field 'characteristics' must be text: the WB JSON list of {charcName, charcValues} items")
    characteristics = None
    if raw_characteristics is not None and raw_characteristics.strip():
        size = len(raw_characteristics.encode("utf-8", "surrogatepass"))
        if size > limits.max_characteristics_bytes:
            raise CardError(
                f"field 'characteristics' has {size:,} bytes, "
                f"above the {limits.max_characteristics_bytes:,}-byte limit",
                413,
            )
        characteristics = raw_characteristics
    price = _price(fields.get("price"))
    if title is None and description is None and not photo:
        raise CardError("empty card: give a title or a description (and optionally a photo)")
    card = ProductCard(
        nm=nm or CARD_NM,
        title=title,
        description=description,
        characteristics=characteristics,
        brand=brand,
        price=price,
        photo=photo or None,
    )
    card_characteristics(card, limits)  # malformed characteristics fail here, before any model runs
    return card


def _price(value) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise CardError("field 'price' must be a number")
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise CardError(f"field 'price' must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(price) or price < 0:
        raise CardError(f"field 'price' must be a finite number >= 0, got {str(value)[:40]!r}")
    return price


def card_characteristics(card: ProductCard, limits: ServingLimits = ServingLimits()) -> pd.DataFrame:
    """The card's characteristics as the long `product_characteristics` table (nm, name, value), parsed
    by the pipeline's parser (never executed); CardError when the parser rejects them."""
    if card.characteristics is None:  # nothing to parse: the parser's empty table, built once
        return _no_characteristics().copy()
    raw = pd.Series([card.characteristics], dtype=object)
    parsed = characteristics_table(pd.Series([card.nm]), raw, limits.max_characteristics_bytes)
    if card.characteristics is not None and len(parsed.rejections):
        row = parsed.rejections.iloc[0]
        raise CardError(
            f"field 'characteristics' cannot be parsed ({row['reason']}: {str(row['detail'])[:200]}); "
            'send the WB form, a JSON list like [{"charcName": "Цвет", "charcValues": ["белый"]}]'
        )
    return parsed.long


@functools.cache
def _no_characteristics() -> pd.DataFrame:
    return characteristics_table(pd.Series([], dtype=object), pd.Series([], dtype=object)).long


def raw_frame(card: ProductCard) -> pd.DataFrame:
    """The card as one row of the WB raw table (the columns ingestion gives cleaning)."""
    return pd.DataFrame(
        {
            "nm": [card.nm],
            "batch": ["card"],
            "title": pd.Series([card.title], dtype=object),
            "description": pd.Series([card.description], dtype=object),
            "characteristics": pd.Series([card.characteristics], dtype=object),
            "brand": pd.Series([card.brand], dtype=object),
            "price": pd.Series([card.price], dtype="float64"),
        }
    )


def clean_card(card: ProductCard, config: CleaningConfig = CleaningConfig()) -> pd.DataFrame:
    """The card through the cleaning rules of `clean_products` (the photo is checked separately);
    CardError naming the rule when cleaning would reject it (e.g. a title under `min_title_chars`)."""
    result = clean_products({"card": raw_frame(card)}, None, dataclasses.replace(config, require_image=False))
    if len(result.rejected):
        row = result.rejected.iloc[0]
        detail = f" ({row['detail']})" if row["detail"] else ""
        raise CardError(f"the card is rejected by the cleaning rules: {row['reason']}{detail}")
    return result.clean


def card_encoder_text(clean: pd.DataFrame, encoder, inputs: TextInputs) -> str:
    """The exact text `text_embeddings` would encode for this (cleaned) card (`encoder_input` on its
    `product_text` row: the natural columns alone when the natural form is fed)."""
    text = build_product_text(clean, inputs.preprocessing, natural_only=inputs.form == "natural")
    return str(encoder_input(text, encoder, inputs)[0].iloc[0])


def decode_photo(data: bytes, config: images.ImageConfig, min_side: int | None):
    """The photo decoded as the image pipeline decodes a zip member (`decode_image`: decompression-bomb
    guard, EXIF, modes); CardError (413 for an oversized file or a pixel bomb, else 422) otherwise."""
    if len(data) > config.max_member_bytes:
        raise CardError(f"photo of {len(data):,} bytes, above the {config.max_member_bytes:,}-byte limit", 413)
    try:
        return images.decode_image(data, config, min_side)
    except images.ImageDecodeError as error:
        status = 413 if error.reason in (REASON_TOO_MANY_PIXELS, REASON_TOO_LARGE) else 422
        detail = f": {error.detail}" if error.detail else ""
        raise CardError(
            f"the photo cannot be used ({error.reason}{detail}); send a JPEG, PNG or WEBP photo", status
        ) from None
