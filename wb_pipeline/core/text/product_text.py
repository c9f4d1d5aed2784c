"""Assembles the `product_text` table from clean products with the text preprocessor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from wb_pipeline.core.embeddings.encoders.text_inputs import truncate_to_tokens
from wb_pipeline.core.text.preprocessing import TextPreprocessingConfig, normalize_raw_text, preprocess_and_normalize

# The notebook refills an empty preprocessed title with the first 7 words of the preprocessed description.
PREPROCESSED_TITLE_FILL_WORDS = 7

# Chosen by measurement (benchmarks/text_fast_path.py, 2 cores, int8 engine, title + ~200-word
# description): 64 / 96 / 128 / 192 tokens -> ~116 / 76 / 58 / 37 texts/s (whole: ~12, fp32 torch
# reference ~8); macro-F1 on the bundled sample within +-0.01 of the reference for each. 96 is the
# largest budget that reaches the ~60-80 texts/s the 128k-product target needs.
DEFAULT_DESCRIPTION_TOKEN_BUDGET = 96


def build_product_text(
    clean: pd.DataFrame, config: TextPreprocessingConfig, natural_only: bool = False
) -> pd.DataFrame:
    """nm, split, natural title/description (for transformer encoders) and preprocessed tokens.

    After preprocessing, the notebook's second fill applies: an empty preprocessed description takes
    the preprocessed title, an empty preprocessed title the first words of the description.
    `natural_only`: the natural columns alone (`normalize_raw_text`, the same values), for a caller that
    feeds the natural form to an encoder and needs no tokens (a service's card).
    """
    if natural_only:  # both columns through one call (its fixed cost is most of a card's)
        natural = normalize_raw_text(pd.concat([clean["title"], clean["description"]], ignore_index=True))
        return pd.DataFrame(
            {
                "nm": clean["nm"].to_numpy(),
                "split": clean["split"].to_numpy(),
                "title_natural": natural[: len(clean)].reset_index(drop=True),
                "description_natural": natural[len(clean) :].reset_index(drop=True),
            }
        )
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
    if description_token_budget is not None and tokenizer is None:
        raise ValueError("encoder_text: description_token_budget needs the encoder's tokenizer")
    # plain string operations per product: a one-card call pays no column-kernel overhead
    titles = title.tolist()
    descriptions = product_text[f"description_{form}"].fillna("").tolist()
    same = [d == t or not d for t, d in zip(titles, descriptions)]  # the whole description: title or empty
    if description_token_budget is not None:
        descriptions = truncate_to_tokens(descriptions, tokenizer, description_token_budget)
        same = [s or not d for s, d in zip(same, descriptions)]
    joined = [t if s else f"{t}. {d}" for t, d, s in zip(titles, descriptions, same)]
    return pd.Series(joined, index=title.index, dtype=title.dtype, name=title.name)


@dataclass(frozen=True)
class TextInputs:
    """How the text encoder is fed (the `text_embedding_settings` resource, with the preprocessing of
    `product_text`): which fields, in which form, the description's token budget."""

    fields: str = "title_description"
    form: str = "natural"
    description_token_budget: int | None = DEFAULT_DESCRIPTION_TOKEN_BUDGET
    preprocessing: TextPreprocessingConfig = TextPreprocessingConfig()


def encoder_input(product_text: pd.DataFrame, encoder: Any, inputs: TextInputs) -> tuple[pd.Series, int | None]:
    """(the exact text `encoder` embeds for each product, the description token budget applied).

    `encoder_text` with the description cut to `inputs.description_token_budget` tokens as counted by
    the encoder's own counter (its `budget_tokenizer`). The budget applies to `fields="title_description"`
    only, and only with a counter: an encoder without one (USE, open_clip) gets the whole description
    and the budget returned is None, so the caller can say so. `text_embeddings` and a service's card
    both call this, so a card's vector is a catalogue product's."""
    budget = inputs.description_token_budget if inputs.fields == "title_description" else None
    tokenizer = getattr(encoder, "budget_tokenizer", None) if budget is not None else None
    if tokenizer is None:
        budget = None
    return encoder_text(product_text, inputs.fields, inputs.form, budget, tokenizer), budget
