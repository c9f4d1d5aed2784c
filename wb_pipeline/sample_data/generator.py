"""Deterministic generator of a synthetic WB-layout sample (the real dump is private).

``generate_catalogue`` draws products (with their hidden ground truth), ``generate_tables`` returns
the train/test tables in memory, ``write_sample`` writes the four WB files byte-identically for a
given spec, ``ensure_sample`` writes them only when missing or made with another spec. Every
random draw comes from numpy generators seeded by ``SampleSpec.seed``; no wall clock, no salted
``hash()``, fixed zip timestamps and sorted members, so the bytes depend on the spec only (and on
the pinned pandas/pyarrow/pillow/numpy versions).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from wb_pipeline.core.data.schema import IMAGE_SIZES_FILE, IMAGES_ZIP, TEST_FILE, TRAIN_FILE, label_vocabularies
from wb_pipeline.sample_data import characteristics as ch
from wb_pipeline.sample_data import images as im
from wb_pipeline.sample_data import text as tx
from wb_pipeline.sample_data.catalog import (
    AGE_PRIOR,
    CURATED_TYPES,
    SEASON_PRIOR,
    SEX_PRIOR,
    ProductType,
    long_tail_types,
)

# Bump whenever the output for a given spec changes (2: placeholder kinds + small clean shots; 3: the
# manifest's duplicate ground truth).
GENERATOR_VERSION = "3"
MANIFEST_FILE = "sample_manifest.json"

# Latent code -> the derived label value the pipeline should recover (None: no vocabulary value).
SEX_LABELS = {
    "W": "для женщин",
    "M": "для мужчин",
    "K": "для детей",
    "G": "для девочек",
    "B": "для мальчиков",
    "U": None,
}
SEASON_LABELS = {"S": "лето", "W": "зима", "D": "демисезон", "A": "круглогодичный"}
AGE_LABELS = {
    "A": "для взрослых",
    "T": "для подростков",
    "C": "для детей",
    "B": "для малышей",
    "L": "для всех возрастов",
}
FRAGILITY_LABELS = {"Y": "хрупкий", "N": "не хрупкий"}

TRAIN_SCHEMA = pa.schema(
    [
        ("nm", pa.int64()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("characteristics", pa.binary()),
        ("brand", pa.string()),
        ("price", pa.int64()),
    ]
)
TEST_SCHEMA = pa.schema(
    [
        ("nm", pa.int64()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("category", pa.string()),
        ("sub_category", pa.string()),
        ("price", pa.int64()),
        ("brand", pa.string()),
        ("isadult", pa.bool_()),
    ]
)
# The real image_df mixes id types with the tables: nm is a string here, int64 elsewhere.
IMAGE_SIZES_SCHEMA = pa.schema([("nm", pa.string()), ("size", pa.int64())])
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)

_BRANDS = (
    "ZARA HOME",
    "Befree",
    "Gloria Jeans",
    "LOVE REPUBLIC",
    "Xiaomi",
    "Samsung",
    "Apple",
    "Tefal",
    "Bosch",
    "Nike",
    "adidas",
    "Puma",
    "LEGO",
    "Hasbro",
    "Mattel",
    "Pampers",
    "Huggies",
    "L'Oreal Paris",
    "Nivea",
    "Garnier",
    "Vitek",
    "Polaris",
    "Redmond",
    "Home&Style",
    "UrbanStyle",
    "Lunaro",
    "MAXWELL",
    "Кухня Дома",
    "Своя Линия",
    "Мамин Дом",
    "Бабушкины рецепты",
    "ТекстильПро",
    "Уют",
    "Ромашка",
    "Сибирь",
    "Русские узоры",
    "Добрый мастер",
    "Happy Baby",
    "Kari",
    "O'STIN",
    "Sela",
    "Incity",
    "Твой дом",
    "Fashion Lab",
    "Royal Canin",
    "Whiskas",
    "Pro Plan",
    "Deli",
    "Berlingo",
    "Эксмо",
    "АСТ",
    "Махаон",
    "Makita",
    "Интерскол",
    "Gardena",
    "Bestway",
)
_SYLLABLES = ("ra", "no", "ki", "ve", "lu", "mo", "sa", "ti", "de", "ar", "on", "el", "ma", "ri", "zo", "ka")


@dataclass(frozen=True)
class SampleSpec:
    """Everything that determines a sample. Same spec -> byte-identical files.

    Rates are shares of products (train rows for characteristics). Defaults follow the real dump
    (REFERENCE.md §1) and the seed notebook (25 KB "empty image" threshold).
    """

    n_products: int = 3000
    test_fraction: float = 0.2
    seed: int = 0
    with_images: bool = True  # False: only the parquet tables (fast, for 100k-row text benchmarks)
    # Catalogue shape.
    long_tail_fraction: float = 0.15  # products from the ~500 non-curated sub_categories
    colour_variant_model_rate: float = 0.12  # models sold in several colours (near-duplicates)
    max_colour_variants: int = 5
    same_title_variant_rate: float = 0.7  # a colour variant keeps the exact title
    identical_description_variant_rate: float = 0.6  # ... and the exact description
    # Label characteristics present (share of train rows; most rows have none).
    sex_presence: float = 0.25
    season_presence: float = 0.10
    age_presence: float = 0.05
    fragility_presence: float = 0.08
    # How often the text states a label (the rest of the signal is only in the image / nowhere).
    text_mentions_sex: float = 0.55
    text_mentions_season: float = 0.45
    text_mentions_age: float = 0.4
    text_mentions_material: float = 0.8  # fragility signal: only in the text
    # Characteristics cells.
    form_weights: tuple[float, float, float] = (0.45, 0.45, 0.10)  # bytes repr, numpy repr, plain JSON
    empty_characteristics_rate: float = 0.03  # an empty list, validly encoded
    malformed_characteristics_rate: float = 0.005
    # Text quirks.
    missing_title_rate: float = 0.01  # half None, half ""
    missing_description_rate: float = 0.08  # half None, half ""
    both_missing_rate: float = 0.003
    short_title_rate: float = 0.003  # titles of <= 2 characters (the notebook drops them)
    caps_title_rate: float = 0.03
    english_title_rate: float = 0.02
    emoji_title_rate: float = 0.02
    brand_in_title_rate: float = 0.25
    long_description_rate: float = 0.05
    long_description_words: tuple[int, int] = (310, 700)
    missing_brand_rate: float = 0.04
    brands_per_category: int = 8
    adult_mislabel_rate: float = 0.05  # adult goods labelled isadult=False (real label noise)
    # Images.
    image_side: tuple[int, int] = (256, 520)
    jpeg_quality: tuple[int, int] = (85, 95)
    image_noise_sigma: float = 6.0
    empty_image_threshold_bytes: int = 25 * 1024  # the notebook's "empty image" cut
    normal_image_margin_bytes: int = 1024  # normal photos are at least threshold + margin
    empty_image_rate: float = 0.02  # placeholders (uniform, "no photo", logo, blurred): must be rejected
    small_clean_image_rate: float = 0.02  # good product shots on white below the size cut: must be kept
    corrupt_image_rate: float = 0.003
    missing_image_rate: float = 0.01
    duplicate_image_rate: float = 0.01  # identical bytes under two nms
    orphan_image_rate: float = 0.003  # images whose nm is in neither table
    grayscale_image_rate: float = 0.01
    cmyk_image_rate: float = 0.005
    min_defects_from: int = 100  # samples this large carry every defect kind at least once

    def __post_init__(self) -> None:
        if not isinstance(self.n_products, int) or self.n_products < 2:
            raise ValueError(f"SampleSpec.n_products must be an int >= 2, got {self.n_products!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"SampleSpec.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith(("_rate", "_presence", "_fraction")) or field.name.startswith("text_mentions_"):
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"SampleSpec.{field.name} must be in [0, 1], got {value!r}")
        if len(self.form_weights) != 3 or min(self.form_weights) < 0 or sum(self.form_weights) <= 0:
            raise ValueError(f"SampleSpec.form_weights must be 3 non-negative weights, got {self.form_weights!r}")
        lo, hi = self.image_side
        if not 64 <= lo <= hi <= im.NOISE_TILE:
            raise ValueError(
                f"SampleSpec.image_side must satisfy 64 <= lo <= hi <= {im.NOISE_TILE}, got {self.image_side!r}"
            )

    def to_json_dict(self) -> dict[str, Any]:
        """The spec as JSON-safe values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@lru_cache(maxsize=1024)
def _cumulative(weights: tuple[float, ...]) -> tuple[float, ...]:
    total = sum(weights)
    return tuple(float(x) for x in np.cumsum(weights) / total)


def _weighted(options: tuple[Any, ...] | str, weights: list[float] | tuple[float, ...], u: float) -> Any:
    """Pick one option with a uniform draw ``u`` in [0, 1) (cheap, no per-call RNG overhead)."""
    return options[min(bisect.bisect_right(_cumulative(tuple(weights)), u), len(options) - 1)]


def _pick_raw(table: dict[str, tuple[tuple[Any, float], ...]], code: str, u: float) -> Any:
    values = table[code]
    return _weighted(tuple(v for v, _ in values), [w for _, w in values], u)


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _brand_pool(n_models: int, rng: np.random.Generator) -> list[str]:
    extra = max(0, n_models // 10 - len(_BRANDS))
    made = []
    for _ in range(extra):
        k = int(rng.integers(2, 4))
        name = "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), size=k))
        made.append(name.upper() if rng.random() < 0.3 else name.capitalize())
    return list(_BRANDS) + made


def _model_sizes(n_products: int, spec: SampleSpec, rng: np.random.Generator) -> np.ndarray:
    multi = rng.random(n_products) < spec.colour_variant_model_rate
    sizes = np.where(multi, rng.integers(2, spec.max_colour_variants + 1, size=n_products), 1)
    ends = np.cumsum(sizes)
    n_models = int(np.searchsorted(ends, n_products) + 1)
    sizes = sizes[:n_models].copy()
    sizes[-1] -= int(ends[n_models - 1] - n_products)
    return sizes


def _unique_nms(count: int, rng: np.random.Generator) -> np.ndarray:
    gaps = rng.integers(1, 4000, size=count, dtype=np.int64)
    return rng.permutation(10_000_000 + np.cumsum(gaps))


def _defect_count(rate: float, n: int, spec: SampleSpec) -> int:
    count = int(round(rate * n))
    if rate > 0 and n >= spec.min_defects_from:
        count = max(count, 1)
    return count


def _characteristic_items(ptype: ProductType, colour: str, rng_u: list[float], labels: dict[str, Any]) -> list[dict]:
    """Other characteristics around the label ones, in the dump's item shapes."""
    u = iter(rng_u)
    items: list[dict[str, Any]] = [{"charcName": "Цвет", "charcValues": [colour]}]
    if ptype.sexes or ptype.seasons:
        items.append(
            {"charcName": "Состав", "charcValues": ch.CLOTH_COMPOSITIONS[int(next(u) * len(ch.CLOTH_COMPOSITIONS))]}
        )
    items.append({"charcName": "Страна производства", "charcValues": [ch.COUNTRIES[int(next(u) * len(ch.COUNTRIES))]]})
    grams = int(50 + next(u) * 2000)
    if next(u) < 0.5:
        items.append({"charcName": "Вес товара (г)", "value": grams})
    else:
        items.append({"charcName": "Вес товара (кг)", "value": f"{grams / 1000:.2f}".replace(".", ",")})
    if next(u) < 0.4:
        items.append({"charcName": "Комплектация", "charcValues": [f"{ptype.noun.lower()} - 1 шт"]})
    if next(u) < 0.3:
        items.append({"charcName": "Высота упаковки", "value": round(5 + next(u) * 40, 1)})
    if next(u) < 0.25:
        items.append(
            {"charcName": ch.FEATURE_FLAGS[int(next(u) * len(ch.FEATURE_FLAGS))], "value": bool(next(u) < 0.5)}
        )
    if next(u) < 0.2:
        items.append({"charcName": "ТНВЭД", "charcValues": [str(6100000000 + 10000 * int(next(u) * 300))]})
    for name, value in labels.items():
        position = int(next(u) * (len(items) + 1))
        cell = {"charcName": name, "charcValues": value if isinstance(value, list) else [value]}
        items.insert(position, cell)
    return items


def generate_catalogue(spec: SampleSpec = SampleSpec()) -> pd.DataFrame:
    """All products with their hidden ground truth (see ``_catalogue_rows``) as a DataFrame."""
    return pd.DataFrame(_catalogue_rows(spec))


def _catalogue_rows(spec: SampleSpec) -> list[dict[str, Any]]:
    """All products with their hidden ground truth, one row per product (train and test).

    Columns: the file columns (nm, title, description, characteristics, brand, price, category,
    sub_category, isadult), ``split``, ``model_id`` / ``variant_index`` (colour variants share a
    model), the latent labels ``sex``/``season``/``age_restrictions``/``fragility`` as vocabulary
    values (None where not applicable), ``<label>_in_characteristics`` flags, ``characteristics_form``
    (1, 2, 3, or a malformed kind) and the image plan fields used by ``write_sample``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1]))
    n = spec.n_products
    vocab_categories = label_vocabularies()["category"]
    curated, tail = CURATED_TYPES, long_tail_types()
    sizes = _model_sizes(n, spec, rng)
    n_models = len(sizes)
    brands = _brand_pool(n_models, rng)

    # Model-level draws (colour variants share them).
    is_tail = rng.random(n_models) < spec.long_tail_fraction
    curated_weights = np.array([t.weight for t in curated])
    type_idx = np.where(
        is_tail,
        rng.integers(0, len(tail), size=n_models),
        rng.choice(len(curated), size=n_models, p=curated_weights / curated_weights.sum()),
    )
    mu = rng.random((n_models, 24)).tolist()  # uniforms consumed by position below (lists: fast indexing)
    lo, hi = spec.image_side
    layouts = rng.integers(lo, hi + 1, size=(n_models, 2)).tolist()  # colour variants share the photo layout
    model_types = [tail[i] if t else curated[i] for i, t in zip(type_idx.tolist(), is_tail.tolist())]

    # Presence probabilities so that the share of TRAIN rows with each label hits the target.
    def _presence(target: float, eligible: list[bool]) -> float:
        share = float(np.dot(sizes, eligible)) / n
        return min(0.95, target / share) if share > 0 else 0.0

    p_sex = _presence(spec.sex_presence, [bool(t.sexes) for t in model_types])
    p_season = _presence(spec.season_presence, [bool(t.seasons) for t in model_types])
    p_age = _presence(spec.age_presence, [bool(t.ages) for t in model_types])
    p_frag = _presence(spec.fragility_presence, [bool(t.fragile) for t in model_types])

    models = []
    for m, ptype in enumerate(model_types):
        u = mu[m]
        sex = _weighted(ptype.sexes, [SEX_PRIOR[c] for c in ptype.sexes], u[0]) if ptype.sexes else ""
        season = _weighted(ptype.seasons, [SEASON_PRIOR[c] for c in ptype.seasons], u[1]) if ptype.seasons else ""
        ages = ptype.ages
        if ages and sex:
            fitting = "".join(c for c in ages if (c in "CBT") == (sex in "KGB"))
            ages = fitting or ages
        age = _weighted(ages, [AGE_PRIOR[c] for c in ages], u[2]) if ages else ""
        fragile = ptype.fragile
        if fragile == "M":
            fragile = "Y" if u[3] < 0.4 else "N"
        material = ""
        if fragile:
            pool = tx.FRAGILE_MATERIALS if fragile == "Y" else tx.STURDY_MATERIALS
            material = pool[int(u[4] * len(pool))]
        # Sellers stick to a few categories: each category draws from its own handful of brands.
        brand_slot = (_stable_hash(ptype.category) + 7 * int(u[6] * spec.brands_per_category)) % len(brands)
        brand = None if u[5] < spec.missing_brand_rate else brands[brand_slot]
        models.append(
            {
                "ptype": ptype,
                "sex": sex,
                "season": season,
                "age": age,
                "fragile": fragile,
                "material": material,
                "brand": brand,
                "has_sex": bool(sex) and u[7] < p_sex,
                "has_season": bool(season) and u[8] < p_season,
                "has_age": bool(age) and u[9] < p_age,
                "has_frag": bool(fragile) and u[10] < p_frag,
                "say_sex": bool(sex) and u[11] < spec.text_mentions_sex,
                "say_season": bool(season) and u[12] < spec.text_mentions_season,
                "say_age": bool(age) and u[13] < spec.text_mentions_age,
                "say_material": bool(material) and u[14] < spec.text_mentions_material,
                "english": u[15] < spec.english_title_rate,
                "caps": u[16] < spec.caps_title_rate,
                "emoji_title": u[17] < spec.emoji_title_rate,
                "brand_position": (1 if u[18] < 0.5 else 2) if brand and u[19] < spec.brand_in_title_rate else 0,
                "long": u[20] < spec.long_description_rate,
                "price": int(round(float(np.exp(5.5 + u[21] * 4.5)) / 10) * 10 - 1),
                "colour_offset": int(u[22] * 1000),
                "adult_mislabel": u[23] < spec.adult_mislabel_rate,
            }
        )

    model_of_product = np.repeat(np.arange(n_models), sizes)
    variant_index = np.concatenate([np.arange(s) for s in sizes])
    order = rng.permutation(n)  # scatter colour variants over the file
    model_of_product, variant_index = model_of_product[order].tolist(), variant_index[order].tolist()
    nms = _unique_nms(n, rng).tolist()
    test_mask = np.zeros(n, dtype=bool)
    test_mask[rng.choice(n, size=int(round(n * spec.test_fraction)), replace=False)] = True
    is_test = test_mask.tolist()
    pu = rng.random((n, 24)).tolist()  # product-level uniforms
    cu = rng.random((n, 24)).tolist()  # characteristics uniforms
    desc_numbers = rng.integers(2, 90, size=(n, 6)).tolist()
    filler_pool = rng.integers(0, len(tx.FILLER), size=n + 80).tolist()  # row i uses a window at i

    # Malformed characteristic cells on exactly this many train rows, cycling through the kinds.
    train_rows = np.flatnonzero(~test_mask)
    n_bad = _defect_count(spec.malformed_characteristics_rate, len(train_rows), spec)
    if n_bad and len(train_rows) >= spec.min_defects_from:
        n_bad = max(n_bad, len(ch.MALFORMED_KINDS))
    bad_rows = rng.choice(train_rows, size=min(n_bad, len(train_rows)), replace=False) if n_bad else []
    malformed = {int(r): ch.MALFORMED_KINDS[k % len(ch.MALFORMED_KINDS)] for k, r in enumerate(sorted(bad_rows))}

    form_p = [w / sum(spec.form_weights) for w in spec.form_weights]
    category_index = {c: i for i, c in enumerate(vocab_categories)}
    base_cache: dict[int, tuple[str, str]] = {}
    rows: list[dict[str, Any]] = []
    for i in range(n):
        m, v = model_of_product[i], variant_index[i]
        md, ptype = models[m], models[m]["ptype"]
        palette = im.PALETTES[md["sex"] if md["sex"] else ""]
        colour = palette[(md["colour_offset"] + v) % len(palette)]
        u = pu[i]
        if m not in base_cache:
            colour_in_title = u[16] < 0.2
            base_cache[m] = (
                _title(md, spec, u, colour=colour if colour_in_title else ""),
                _description(md, spec, u, desc_numbers[i], filler_pool[i : i + 80]),
                colour_in_title,
            )
        title, description, colour_in_title = base_cache[m]
        if v > 0 and u[0] >= spec.same_title_variant_rate and not colour_in_title:
            title = f"{title} цвет {colour}" if title else title
        if v > 0 and u[1] >= spec.identical_description_variant_rate:
            description = f"{description} Цвет: {colour}."
        # Missing / degenerate text (product level).
        r = u[2]
        if r < spec.both_missing_rate:
            title, description = (None, "") if u[3] < 0.5 else ("", None)
        elif r < spec.both_missing_rate + spec.missing_title_rate:
            title = None if u[3] < 0.5 else ""
        elif r < spec.both_missing_rate + spec.missing_title_rate + spec.short_title_rate:
            title = ("Ок", "1", "--", "A")[int(u[3] * 4)]
        if u[4] < spec.missing_description_rate and description is not None and title:
            description = None if u[5] < 0.5 else ""

        labels_raw: dict[str, Any] = {}
        c = cu[i]
        if md["has_sex"]:
            labels_raw["Пол"] = _pick_raw(ch.SEX_RAW, md["sex"], c[0])
        if md["has_age"]:
            labels_raw["Возрастные ограничения"] = _pick_raw(ch.AGE_RAW, md["age"], c[1])
        if md["has_season"]:
            labels_raw["Сезон"] = _pick_raw(ch.SEASON_RAW, md["season"], c[2])
        if md["has_frag"]:
            labels_raw["Хрупкость"] = _pick_raw(ch.FRAGILITY_RAW, md["fragile"], c[3])
        form: Any = _weighted(ch.FORMS, form_p, c[4])
        if is_test[i]:
            cell, form = None, None
        else:
            items = (
                []
                if c[5] < spec.empty_characteristics_rate
                else _characteristic_items(ptype, colour, c[6:], labels_raw)
            )
            if i in malformed:
                form = malformed[i]
                cell = ch.malformed_cell(form, items, np.random.default_rng([spec.seed, 4, i]))
            else:
                cell = ch.encode_characteristics(items, form)
        isadult = ptype.adult and not md["adult_mislabel"]
        rows.append(
            {
                "nm": nms[i],
                "split": "test" if is_test[i] else "train",
                "title": title,
                "description": description,
                "characteristics": cell,
                "brand": md["brand"],
                "price": md["price"] + 10 * v,
                "category": ptype.category,
                "sub_category": ptype.sub_category,
                "isadult": bool(isadult),
                "model_id": m,
                "variant_index": v,
                "product_type_curated": ptype.curated,
                "sex": SEX_LABELS[md["sex"]] if md["sex"] else None,
                "season": SEASON_LABELS.get(md["season"]),
                "age_restrictions": AGE_LABELS.get(md["age"]),
                "fragility": FRAGILITY_LABELS.get(md["fragile"]),
                "sex_in_characteristics": "Пол" in labels_raw and not is_test[i],
                "season_in_characteristics": "Сезон" in labels_raw and not is_test[i],
                "age_restrictions_in_characteristics": "Возрастные ограничения" in labels_raw and not is_test[i],
                "fragility_in_characteristics": "Хрупкость" in labels_raw and not is_test[i],
                "characteristics_form": form,
                "colour": colour,
                "image_season": md["season"],
                "image_sex": md["sex"],
                "image_category_index": category_index[ptype.category],
                "image_sub_category_hash": _stable_hash(ptype.sub_category),
                "image_width": layouts[m][0],
                "image_height": layouts[m][1],
                "image_layout_seed": _stable_hash(f"{spec.seed}:{m}"),
            }
        )
    return rows


def _title(md: dict[str, Any], spec: SampleSpec, u: list[float], colour: str) -> str:
    ptype: ProductType = md["ptype"]
    extras = ptype.extras if ptype.curated else tx.TAIL_EXTRAS
    extra = extras[int(u[6] * len(extras))] if extras and u[7] < 0.75 else ""
    if extras and u[17] < 0.3:  # a second, different descriptor
        second = extras[(int(u[6] * len(extras)) + 1 + int(u[18] * (len(extras) - 1))) % len(extras)]
        extra = f"{extra} {second}".strip() if second != extra else extra
    if u[19] < 0.12:  # a seller's model code
        extra = f"{extra} {chr(65 + int(u[20] * 26))}{chr(65 + int(u[21] * 26))}-{int(u[22] * 900) + 100}".strip()
    title = tx.build_title(
        ptype,
        sex=md["sex"] if md["say_sex"] else "",
        season=md["season"] if md["say_season"] else "",
        extra=extra,
        colour=f"цвет {colour}" if colour else "",
        brand=md["brand"] or "",
        brand_position=md["brand_position"],
        english=md["english"],
    )
    if md["caps"]:
        title = title.upper()
    if md["emoji_title"]:
        title = f"{tx.EMOJI[int(u[8] * len(tx.EMOJI))]} {title}"
    return title


def _description(md: dict[str, Any], spec: SampleSpec, u: list[float], numbers: list[int], filler: list[int]) -> str:
    ptype: ProductType = md["ptype"]
    noun = ptype.noun if ptype.curated else ptype.sub_category
    brand = md["brand"]
    sentences = [f"{noun} от бренда {brand}." if brand else f"{noun} отличного качества."]
    if md["say_sex"]:
        sentences.append(tx.SEX_SENTENCES[md["sex"]])
    if md["say_season"]:
        sentences.append(tx.SEASON_SENTENCES[md["season"]])
    if md["say_material"]:
        sentences.append(f"Изготовлено из {md['material']}.")
        if u[9] < 0.35:
            pool = tx.FRAGILE_SENTENCES if md["fragile"] == "Y" else tx.STURDY_SENTENCES
            sentences.append(pool[int(u[10] * len(pool))])
    if md["say_age"]:
        sentences.append(tx.AGE_SENTENCES[md["age"]])
    sentences.append(tx.dimension_sentence(int(u[11] * 100), tuple(int(x) for x in numbers)))
    k = 1 + int(u[12] * 4)
    sentences.extend(tx.FILLER[int(j)] for j in filler[:k])
    if md["long"]:
        lo, hi = spec.long_description_words
        target = lo + int(u[13] * (hi - lo))
        words = sum(len(s.split()) for s in sentences)
        j = k
        while words < target:
            sentence = tx.FILLER[int(filler[j % len(filler)])]
            sentences.append(sentence)
            words += len(sentence.split())
            j += 1
    emoji = tx.EMOJI[int(u[14] * len(tx.EMOJI))]
    style = int(u[15] * 6)
    return tx.render_description(sentences, style, emoji)


def _tables_from_rows(rows: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    # Built from the Python rows, not a DataFrame, so None stays None (never a float NaN).
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    train_table = pa.Table.from_pydict({c: [r[c] for r in train] for c in TRAIN_SCHEMA.names}, schema=TRAIN_SCHEMA)
    test_table = pa.Table.from_pydict({c: [r[c] for r in test] for c in TEST_SCHEMA.names}, schema=TEST_SCHEMA)
    return train_table, test_table


def generate_tables(spec: SampleSpec = SampleSpec()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) exactly as ``pd.read_parquet`` returns the written files; no images."""
    train_table, test_table = _tables_from_rows(_catalogue_rows(spec))
    return train_table.to_pandas(), test_table.to_pandas()


# ---------------------------------------------------------------------------------------------
# Images, files, manifest.


def _image_plan(row: dict[str, Any], mode: str, quality: int) -> im.ImagePlan:
    return im.ImagePlan(
        width=row["image_width"],
        height=row["image_height"],
        category_index=row["image_category_index"],
        sub_category_hash=row["image_sub_category_hash"],
        colour=im.COLOURS[row["colour"]],
        season=row["image_season"],
        layout_seed=row["image_layout_seed"],
        mode=mode,
        quality=quality,
    )


def _assign_image_defects(rows: list[dict[str, Any]], spec: SampleSpec) -> dict[str, Any]:
    """Which products get which image defect; disjoint sets, drawn from their own stream."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 3]))
    n = len(rows)
    order = rng.permutation(n).tolist()
    taken = 0

    def take(count: int) -> list[int]:
        nonlocal taken
        chosen = sorted(order[taken : taken + count])
        taken += len(chosen)
        return chosen

    missing = take(_defect_count(spec.missing_image_rate, n, spec))
    n_empty = _defect_count(spec.empty_image_rate, n, spec)
    if n_empty and n >= spec.min_defects_from:
        n_empty = max(n_empty, len(im.PLACEHOLDER_KINDS))
    empty = {row: im.PLACEHOLDER_KINDS[k % len(im.PLACEHOLDER_KINDS)] for k, row in enumerate(take(n_empty))}
    n_corrupt = _defect_count(spec.corrupt_image_rate, n, spec)
    if n_corrupt and n >= spec.min_defects_from:
        n_corrupt = max(n_corrupt, len(im.CORRUPT_KINDS))
    corrupt = {row: im.CORRUPT_KINDS[k % len(im.CORRUPT_KINDS)] for k, row in enumerate(take(n_corrupt))}
    duplicates = take(_defect_count(spec.duplicate_image_rate, n, spec))
    grayscale = take(_defect_count(spec.grayscale_image_rate, n, spec))
    cmyk = take(_defect_count(spec.cmyk_image_rate, n, spec))
    small_clean = take(_defect_count(spec.small_clean_image_rate, n, spec))
    normal = order[taken:]
    if duplicates and not normal:
        raise ValueError(f"SampleSpec with n_products={n} leaves no normal image to duplicate; lower the defect rates")
    # Each duplicate copies the exact bytes of a normal product's photo.
    sources = {row: normal[int(k)] for row, k in zip(duplicates, rng.integers(0, len(normal), size=len(duplicates)))}
    quality = rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1, size=n).tolist()
    n_orphans = _defect_count(spec.orphan_image_rate, n, spec)
    max_nm = max(r["nm"] for r in rows)
    orphans = (max_nm + np.cumsum(rng.integers(1, 5000, size=n_orphans))).tolist()
    return {
        "missing": set(missing),
        "empty": empty,
        "corrupt": corrupt,
        "duplicate_of": sources,
        "grayscale": set(grayscale),
        "cmyk": set(cmyk),
        "small_clean": set(small_clean),
        "quality": quality,
        "orphans": orphans,
    }


def _render_member(
    index: int, rows: list[dict[str, Any]], defects: dict[str, Any], spec: SampleSpec, noise_bank: list[np.ndarray]
) -> bytes:
    """The bytes stored as ``{nm}.jpg`` for product ``index`` (deterministic per product)."""
    source = defects["duplicate_of"].get(index, index)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 2, source]))
    row = rows[source]
    small = spec.empty_image_threshold_bytes
    if source in defects["empty"]:
        kind = defects["empty"][source]
        if kind == "logo":  # one placeholder picture for all: the same bytes under every such nm
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 8]))
        return im.render_placeholder_jpeg(kind, _image_plan(row, "RGB", 75), rng, small)
    mode = "L" if source in defects["grayscale"] else "CMYK" if source in defects["cmyk"] else "RGB"
    plan = _image_plan(row, mode, defects["quality"][source])
    if source in defects["small_clean"]:
        return im.render_small_clean_jpeg(plan, rng, small)
    data = im.render_jpeg(
        plan, rng, noise_bank, spec.image_noise_sigma, spec.empty_image_threshold_bytes + spec.normal_image_margin_bytes
    )
    if source in defects["corrupt"]:
        return im.corrupt_bytes(defects["corrupt"][source], data, rng)
    return data


def _orphan_member(k: int, spec: SampleSpec, noise_bank: list[np.ndarray]) -> bytes:
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 6, k]))
    side = spec.image_side
    plan = im.ImagePlan(
        width=int(rng.integers(side[0], side[1] + 1)),
        height=int(rng.integers(side[0], side[1] + 1)),
        category_index=int(rng.integers(0, 63)),
        sub_category_hash=int(rng.integers(0, 2**31)),
        colour=im.COLOURS["черный"],
        season="",
        layout_seed=int(rng.integers(0, 2**31)),
    )
    return im.render_jpeg(
        plan, rng, noise_bank, spec.image_noise_sigma, spec.empty_image_threshold_bytes + spec.normal_image_margin_bytes
    )


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
    info.compress_type = zipfile.ZIP_STORED  # JPEG does not deflate; storing keeps writing fast
    info.create_system = 3
    info.external_attr = 0o644 << 16
    return info


def _write_images(path: Path, rows: list[dict[str, Any]], spec: SampleSpec) -> tuple[pa.Table, dict[str, Any]]:
    defects = _assign_image_defects(rows, spec)
    noise_bank = im.make_noise_bank(spec.seed)
    members: list[tuple[str, int, int]] = []  # (member name, product index or -1, orphan index)
    for i, row in enumerate(rows):
        if i not in defects["missing"]:
            members.append((f"{row['nm']}.jpg", i, -1))
    for k, nm in enumerate(defects["orphans"]):
        members.append((f"{nm}.jpg", -1, k))
    members.sort()
    sizes: list[tuple[str, int]] = []
    with zipfile.ZipFile(path, "w") as archive:
        for name, index, orphan in members:
            data = (
                _render_member(index, rows, defects, spec, noise_bank)
                if index >= 0
                else _orphan_member(orphan, spec, noise_bank)
            )
            archive.writestr(_zip_info(name), data)
            sizes.append((name[: -len(".jpg")], len(data)))
    table = pa.Table.from_pydict(
        {"nm": [s[0] for s in sizes], "size": [s[1] for s in sizes]}, schema=IMAGE_SIZES_SCHEMA
    )

    def nms(indices: Any) -> list[str]:
        return sorted(str(rows[i]["nm"]) for i in indices)

    summary = {
        "missing": nms(defects["missing"]),
        "empty": nms(defects["empty"]),
        "corrupt": nms(defects["corrupt"]),
        "empty_kind": {str(rows[i]["nm"]): kind for i, kind in sorted(defects["empty"].items())},
        "small_clean": nms(defects["small_clean"]),
        "duplicate": sorted([str(rows[d]["nm"]), str(rows[s]["nm"])] for d, s in defects["duplicate_of"].items()),
        "grayscale": nms(defects["grayscale"]),
        "cmyk": nms(defects["cmyk"]),
        "orphan": [str(nm) for nm in defects["orphans"]],
    }
    return table, summary


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temp file in the same folder + rename, so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the sample is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def colour_variant_ground_truth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which products are colour variants of one model (the near-duplicates a matcher should find):
    `colour_variant_models` lists the nms (as strings, sorted) of every model sold in 2+ colours,
    ordered by their first nm. Products whose text or image the pipeline rejects are listed too."""
    by_model: dict[int, list[str]] = {}
    for row in rows:
        by_model.setdefault(int(row["model_id"]), []).append(str(row["nm"]))
    groups = sorted((sorted(nms) for nms in by_model.values() if len(nms) > 1), key=lambda nms: nms[0])
    return {
        "colour_variant_models": groups,
        "note": "nms of one model in several colours; ingestion ignores this, the duplicate report scores against it",
    }


def write_sample(out_dir: str | os.PathLike, spec: SampleSpec = SampleSpec()) -> dict[str, Any]:
    """Write the WB files (train, test, and with images the zip + image_df) and the manifest.

    Returns the manifest: generator version, spec, row/defect counts, defect nm lists, the ground
    truth of colour variants (``colour_variant_ground_truth``) and the sha256 + byte size of every
    file. The manifest is written last, as ``sample_manifest.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _catalogue_rows(spec)
    train_table, test_table = _tables_from_rows(rows)
    written = [TRAIN_FILE, TEST_FILE]
    _atomic_write(out / TRAIN_FILE, lambda p: pq.write_table(train_table, p))
    _atomic_write(out / TEST_FILE, lambda p: pq.write_table(test_table, p))
    counts: dict[str, Any] = {
        "products": len(rows),
        "train": train_table.num_rows,
        "test": test_table.num_rows,
        "malformed_characteristics": sum(1 for r in rows if isinstance(r["characteristics_form"], str)),
        "label_characteristics": {
            label: sum(1 for r in rows if r[f"{label}_in_characteristics"])
            for label in ("sex", "age_restrictions", "season", "fragility")
        },
    }
    image_defects: dict[str, Any] = {}
    if spec.with_images:
        holder: dict[str, Any] = {}

        def write_zip(p: Path) -> None:
            holder["table"], holder["defects"] = _write_images(p, rows, spec)

        _atomic_write(out / IMAGES_ZIP, write_zip)
        _atomic_write(out / IMAGE_SIZES_FILE, lambda p: pq.write_table(holder["table"], p))
        written += [IMAGES_ZIP, IMAGE_SIZES_FILE]
        image_defects = holder["defects"]
        counts["image_members"] = holder["table"].num_rows
        counts.update({f"{kind}_images": len(nms) for kind, nms in image_defects.items() if isinstance(nms, list)})
    manifest = {
        "ground_truth": colour_variant_ground_truth(rows),
        "generator": "wb_pipeline.sample_data",
        "generator_version": GENERATOR_VERSION,
        "synthetic": True,
        "spec": spec.to_json_dict(),
        "counts": counts,
        "image_defects": image_defects,
        "files": {name: {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size} for name in written},
    }
    text = json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True)
    _atomic_write(out / MANIFEST_FILE, lambda p: p.write_text(text + "\n", encoding="utf-8"))
    return manifest


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a written sample, or None when there is none (or it is unreadable)."""
    path = Path(out_dir) / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_current(manifest: dict[str, Any] | None, spec: SampleSpec, out: Path) -> bool:
    if not manifest or manifest.get("generator_version") != GENERATOR_VERSION:
        return False
    if manifest.get("spec") != spec.to_json_dict():
        return False
    files = manifest.get("files") or {}
    return all(
        (out / name).is_file() and (out / name).stat().st_size == info.get("bytes") for name, info in files.items()
    )


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """An inter-process lock where the OS offers one (POSIX flock); a no-op elsewhere."""
    try:
        import fcntl
    except ImportError:  # Windows: the rename below still keeps the folder consistent
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_sample(out_dir: str | os.PathLike, spec: SampleSpec = SampleSpec()) -> dict[str, Any]:
    """Write the sample into ``out_dir`` unless it already holds one made with this exact spec.

    Safe when several processes call it at once: one writes into a temp folder beside ``out_dir``
    under a file lock and renames it into place; the others wait and then reuse it. Refuses to
    replace a non-empty folder that has no sample manifest (it may hold real data).
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    if _is_current(manifest, spec, out):
        return manifest  # type: ignore[return-value]
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out.parent / f".{out.name}.lock"):
        manifest = read_manifest(out)
        if _is_current(manifest, spec, out):
            return manifest  # type: ignore[return-value]
        if out.exists() and manifest is None and any(out.iterdir()):
            raise FileExistsError(
                f"{out} is not empty and has no {MANIFEST_FILE}: refusing to replace it with a generated sample"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        os.chmod(staging, 0o755)
        try:
            manifest = write_sample(staging, spec)
            if out.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, retired / "sample")
                os.replace(staging, out)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return manifest
