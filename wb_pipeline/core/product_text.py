"""Assembles the `product_text` table from clean products with the text preprocessor."""

from __future__ import annotations

import pandas as pd

from wb_pipeline.core.text import TextPreprocessingConfig, preprocess_and_normalize

# The notebook refills an empty preprocessed title with the first 7 words of the preprocessed description.
PREPROCESSED_TITLE_FILL_WORDS = 7


def build_product_text(clean: pd.DataFrame, config: TextPreprocessingConfig) -> pd.DataFrame:
    """nm, split, natural title/description (for transformer encoders) and preprocessed tokens.

    After preprocessing, the notebook's second fill applies: an empty preprocessed description takes
    the preprocessed title, an empty preprocessed title the first words of the description.
    """
    title, title_natural = preprocess_and_normalize(clean["title"], "title", config)
    description, description_natural = preprocess_and_normalize(clean["description"], "description", config)
    description = description.where(description != "", title)
    empty_title = title == ""
    # Only the (few) rows with an empty title need the description's first words.
    head = description[empty_title].str.split().str[:PREPROCESSED_TITLE_FILL_WORDS].str.join(" ")
    title = title.where(~empty_title, head)
    texts = {
        "title_natural": title_natural,
        "description_natural": description_natural,
        "title_preprocessed": title,
        "description_preprocessed": description,
    }
    # The text columns keep their Arrow storage: a round trip through numpy object arrays costs
    # more than the preprocessing of a short column.
    return pd.DataFrame(
        {
            "nm": clean["nm"].to_numpy(),
            "split": clean["split"].to_numpy(),
            **{name: column.reset_index(drop=True) for name, column in texts.items()},
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
