"""Colour variants: "the same model in another colour", a relation of its own beside exact duplicates.

An exact duplicate is the same item listed again: the same photo or the same text (the duplicate
graph of `duplicates`, cosines of 0.99). A colour variant is the same model in another colour: its
photo shows the same shape but not the same pixels, so its image cosine is high yet below the
exact-duplicate level, and its text may differ (the colour words, or a title made only of colour and
fabric fields). How high "high" is depends on the catalogue: where every photo is a garment on the
same backdrop, unrelated products reach the cosines that variants reach elsewhere. So the image
criterion is relative — the two photos are among each other's few nearest photos — and the
variant matcher is its own rule over the same candidate pairs (each product's nearest neighbours by
text and by image):

    variant pair  <=>  image_rank <= neighbours          (mutual: each among the other's nearest)
                       AND image cosine < exact_image_threshold   (not the same photo)
                       AND text cosine >= text_floor     (about the same kind of product)

Pairs are scored against known variants (a model id per product) as pairs (`scoring.edge_scores`:
precision / recall / F1 of the matched pairs themselves) and as the connected components of the
matched pairs (`scoring.group_scores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wb_pipeline.core.search import scoring
from wb_pipeline.core.search.duplicates import OFF, components


@dataclass(frozen=True)
class VariantConfig:
    """Settings of the colour-variant matcher (see the module docstring). Chosen from principle,
    then checked on the bundled sample AND the real Mango set's colour_variants.parquet; the best
    of neither (the report's `variant_sweep` shows both).

    `neighbours`: a model comes in a handful of colours (up to 5, the same handful as
    `core.model_selection.folds.MAX_TITLE_PRODUCTS`), so each variant's other colours are among its 4 nearest
    photos, and it among theirs. `exact_image_threshold`: at or above it the photo is the same one
    (the duplicate graph's image threshold), an exact duplicate rather than a variant. `text_floor`:
    the texts say about the same thing: multilingual-e5's cosines crowd into [0.7, 1] (its model
    card: a low InfoNCE temperature), and 0.9, the upper part of that band, lets other colour words
    through but not another kind of product. -1 turns the text condition off."""

    neighbours: int = 4
    exact_image_threshold: float = 0.99
    text_floor: float = 0.9

    def __post_init__(self) -> None:
        if (
            isinstance(self.neighbours, bool)
            or not isinstance(self.neighbours, (int, np.integer))
            or self.neighbours < 1
        ):
            raise ValueError(f"VariantConfig.neighbours must be an integer >= 1, got {self.neighbours!r}")
        for name in ("exact_image_threshold", "text_floor"):
            value = getattr(self, name)
            if not -1.0 <= value <= OFF:
                raise ValueError(f"VariantConfig.{name} must be a cosine in [-1, 1] (or 2 = off), got {value}")


def variant_edges(pairs: pd.DataFrame, config: VariantConfig) -> np.ndarray:
    """Boolean mask over candidate `pairs` (columns image_rank, text_sim, image_sim, from
    `duplicates.candidate_pairs` with at least `config.neighbours` candidates): the variant matches."""
    return (
        (pairs["image_rank"].to_numpy() <= config.neighbours)
        & (pairs["image_sim"].to_numpy() < config.exact_image_threshold)
        & (pairs["text_sim"].to_numpy() >= config.text_floor)
    )


def variant_scores(pairs: pd.DataFrame, n: int, truth: np.ndarray, config: VariantConfig) -> list[dict]:
    """Scores of the matcher against `truth` (group id per product: one per model, singletons
    allowed): one row for the matched pairs (`level` 'match edges') and one for their connected
    components (`level` 'groups'), with the candidates' ceiling on recall."""
    edges = variant_edges(pairs, config)
    i, j = pairs["i"].to_numpy()[edges], pairs["j"].to_numpy()[edges]
    settings = {
        "neighbours": config.neighbours,
        "exact_image_threshold": config.exact_image_threshold,
        "variant_text_floor": config.text_floor,
    }
    return [
        {
            **settings,
            "level": "match edges",
            **scoring.edge_scores(i, j, truth),
            "candidate_recall": scoring.candidate_recall(pairs, truth),
        },
        {**settings, "level": "groups", **scoring.group_scores(components(n, i, j), truth)},
    ]


def variant_sweep(
    pairs: pd.DataFrame,
    n: int,
    truth: np.ndarray,
    neighbours_grid: Sequence[int],
    text_grid: Sequence[float],
    exact_image_threshold: float,
) -> pd.DataFrame:
    """`variant_scores` (match edges only) for every (neighbours, text floor) of the grids."""
    rows = []
    for neighbours in neighbours_grid:
        for text_floor in text_grid:
            config = VariantConfig(int(neighbours), exact_image_threshold, float(text_floor))
            rows.append(variant_scores(pairs, n, truth, config)[0])
    return pd.DataFrame(rows)


def variant_truth(nm: Sequence, model_of: Mapping[str, str]) -> np.ndarray:
    """Group id per product from an nm → model map (a product without a model: a group of its own)."""
    model = pd.Series(np.asarray(nm, dtype=object)).astype(str).map(model_of).to_numpy(dtype=object)
    return scoring.truth_from_labels(model)


def models_from_table(table: pd.DataFrame) -> tuple[dict[str, str], dict[str, int]]:
    """nm → model id from a colour-variants table (columns nm, model_code; nm already normalised to
    str), and what was left out: rows without an nm or a model code, and every row of an nm listed
    under two different models (ambiguous, so it is known as nothing). Never raises on bad rows."""
    frame = pd.DataFrame({"nm": table["nm"].astype(object), "model": table["model_code"].astype("string")})
    frame["model"] = frame["model"].str.strip()
    missing = frame["nm"].isna() | frame["model"].isna() | frame["model"].eq("").fillna(False)
    valid = frame.loc[~missing].drop_duplicates()
    models_per_nm = valid.groupby("nm")["model"].nunique()
    conflicting = models_per_nm.index[models_per_nm > 1]
    kept = valid.loc[~valid["nm"].isin(conflicting)]
    counts = {
        "rows": len(frame),
        "products": int(kept["nm"].nunique()),
        "models_with_several_products": int((kept["model"].value_counts() > 1).sum()),
        "rows_without_nm_or_model": int(missing.sum()),
        "products_with_conflicting_models": len(conflicting),
    }
    return dict(zip(kept["nm"].astype(str), kept["model"].astype(str))), counts
