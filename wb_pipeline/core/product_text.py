"""Assembles the `product_text` table from clean products with the text preprocessor."""

from __future__ import annotations

import pandas as pd

from wb_pipeline.core.text import TextPreprocessingConfig, normalize_raw_text, preprocess_text

# The notebook refills an empty preprocessed title with the first 7 words of the preprocessed description.
PREPROCESSED_TITLE_FILL_WORDS = 7


def build_product_text(clean: pd.DataFrame, config: TextPreprocessingConfig) -> pd.DataFrame:
    """nm, split, natural title/description (for transformer encoders) and preprocessed tokens.

    After preprocessing, the notebook's second fill applies: an empty preprocessed description takes
    the preprocessed title, an empty preprocessed title the first words of the description.
    """
    title = preprocess_text(clean["title"], "title", config)
    description = preprocess_text(clean["description"], "description", config)
    description = description.where(description != "", title)
    head = description.str.split().str[:PREPROCESSED_TITLE_FILL_WORDS].str.join(" ")
    title = title.where(title != "", head)
    return pd.DataFrame(
        {
            "nm": clean["nm"].to_numpy(),
            "split": clean["split"].to_numpy(),
            "title_natural": normalize_raw_text(clean["title"]).to_numpy(),
            "description_natural": normalize_raw_text(clean["description"]).to_numpy(),
            "title_preprocessed": title.to_numpy(),
            "description_preprocessed": description.to_numpy(),
        }
    )


def encoder_text(product_text: pd.DataFrame, fields: str = "title_description", form: str = "natural") -> pd.Series:
    """The exact text each product feeds to the text encoder.

    `fields`: 'title' or 'title_description' (title, then description, joined by '. ');
    `form`: 'natural' (HTML-stripped original text, what transformer encoders were trained on) or
    'preprocessed' (the notebook's token stream).
    """
    if fields not in ("title", "title_description") or form not in ("natural", "preprocessed"):
        raise ValueError(f"encoder_text: unknown fields={fields!r} or form={form!r}")
    title = product_text[f"title_{form}"].fillna("")
    if fields == "title":
        return title
    description = product_text[f"description_{form}"].fillna("")
    same = description.eq(title) | description.eq("")
    return title.where(same, title + ". " + description)
