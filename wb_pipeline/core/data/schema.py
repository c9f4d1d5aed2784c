"""The Wildberries (WB school) data layout and the label vocabularies.

Single source of truth for file names, required columns and label values; every other module
imports these names instead of spelling the strings again.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

TRAIN_FILE = "wb_school_train.parquet"
TEST_FILE = "wb_school_test.parquet"
IMAGES_ZIP = "wb_school_horizcv_images.zip"
IMAGE_SIZES_FILE = "image_df.parquet"
# Optional: which products are one model sold in several colours (ground truth for the duplicate
# report's "same model, other colour" row); a real catalogue may ship it, the WB dump does not.
COLOUR_VARIANTS_FILE = "colour_variants.parquet"

# Columns each file must carry (extra columns are kept). `nm` is always normalised to str.
TRAIN_REQUIRED_COLUMNS = ("nm", "title", "description", "characteristics")
TEST_REQUIRED_COLUMNS = ("nm", "title", "description")
IMAGE_SIZES_REQUIRED_COLUMNS = ("nm", "size")
COLOUR_VARIANTS_REQUIRED_COLUMNS = ("nm", "model_code")  # product_type and others are kept, unused

# Label columns the test file may carry (WB's root subject, subject, adult flag).
TEST_LABEL_COLUMNS = ("category", "sub_category", "isadult")

# Characteristic name in the WB dump -> derived label column.
CHARACTERISTIC_LABELS = {
    "Пол": "sex",
    "Возрастные ограничения": "age_restrictions",
    "Сезон": "season",
    "Хрупкость": "fragility",
}
DERIVED_LABEL_COLUMNS = tuple(CHARACTERISTIC_LABELS.values())

SPLITS = ("train", "test")


@lru_cache(maxsize=1)
def label_vocabularies() -> dict[str, tuple[str, ...]]:
    """The real WB label vocabularies (63 categories, 690 sub-categories, sex 5, age 5, ...)."""
    text = resources.files("wb_pipeline.resources").joinpath("label_sets.json").read_text("utf-8")
    return {name: tuple(values) for name, values in json.loads(text).items()}
