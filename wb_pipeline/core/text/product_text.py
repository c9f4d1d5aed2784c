"""Assembles the `product_text` table from clean products with the text preprocessor."""

from __future__ import annotations

from typing import Any

import pandas as pd

from wb_pipeline.core.embeddings.encoders.text_inputs import truncate_to_tokens
from wb_pipeline.core.text.preprocessing import TextPreprocessingConfig, preprocess_and_normalize

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


def encoder_text(
    product_text: pd.DataFrame,
    fields: str = "title_description",
    form: str = "natural",
    description_token_budget: int | None = None,
    tokenizer: Any = None,
) -> pd.Series:
    """The exact text each product feeds to the text encoder.

    `fields`: 'title' or 'title_description' (title, then description, joined by '. ');
    `form`: 'natural' (HTML-stripped original text, what transformer encoders were trained on) or
    'preprocessed' (the notebook's token stream).
    `description_token_budget`: with 'title_description', keep only the first that many tokens of
    the description (counted by `tokenizer`, a `tokenizers.Tokenizer` without truncation, e.g. an
    encoder's `budget_tokenizer`); the title is always kept whole. None keeps the whole description
    (the encoder's own max_seq_length still cuts the joined text). The cut text is what embedding
    caches hash, so a different budget never reuses vectors of another one.

    Raises:
        ValueError: on an unknown `fields` / `form`, a negative budget, or a budget without a tokenizer.
    """
    if fields not in ("title", "title_description") or form not in ("natural", "preprocessed"):
        raise ValueError(f"encoder_text: unknown fields={fields!r} or form={form!r}")
    if description_token_budget is not None and description_token_budget < 0:
        raise ValueError(f"encoder_text: description_token_budget must be >= 0 or None, got {description_token_budget}")
    title = product_text[f"title_{form}"].fillna("")
    if fields == "title":
        return title
    description = product_text[f"description_{form}"].fillna("")
    same = description.eq(title) | description.eq("")
    if description_token_budget is not None:
        if tokenizer is None:
            raise ValueError("encoder_text: description_token_budget needs the encoder's tokenizer")
        description = pd.Series(
            truncate_to_tokens(description.tolist(), tokenizer, description_token_budget),
            index=description.index,
            dtype=description.dtype,
        )
        same |= description.eq("")
    return title.where(same, title + ". " + description)
