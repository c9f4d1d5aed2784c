"""The duplicate-detection report as one table (what the `duplicate_report` asset holds).

Rows by `section`:

- `configured`: the duplicate groups as built, against each truth — pairwise precision / recall /
  F1 of the groups, Shopee's per-product F1, the ceiling set by the candidates (`candidate_recall`),
  and the match edges alone (`level = "match edges"`);
- `sweep`: the same for every (text threshold, image threshold) of the grids, per vector source,
  with the floor fallback off;
- `floors`: the floor fallback at the configured thresholds, for every pair of floors;
- `purity`: per space, the share of each labelled product's k nearest labelled products with its
  label (`gallery = "labelled products"`), and for the index's own `similar_products` the share of
  neighbour pairs whose labels are both known and equal;
- `variants` (only where colour variants are known): "the same model in another colour", the
  variant matcher of `variants` at its configured thresholds against the `colour_variants` truth,
  per vector source, as matched pairs (`level = "match edges"`) and their components (`groups`);
- `variant_sweep`: the matched pairs for every (neighbours, text floor) of the variant grids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wb_pipeline.core.model_selection import folds
from wb_pipeline.core.models import contrastive
from wb_pipeline.core.search import duplicates as dup
from wb_pipeline.core.search import scoring, variants
from wb_pipeline.core.search.index import IndexConfig, knn

SETTINGS = (
    "vectors",
    "candidates",
    "text_threshold",
    "image_threshold",
    "text_floor",
    "image_floor",
    "max_title_products",
)


@dataclass(frozen=True)
class ReportGrids:
    text: Sequence[float]
    image: Sequence[float]
    text_floor: Sequence[float]
    image_floor: Sequence[float]
    variant_neighbours: Sequence[int] = ()
    variant_text_floor: Sequence[float] = ()


def known_duplicates(
    nm: np.ndarray,
    products: pd.DataFrame,
    image_index: pd.DataFrame,
    variant_model: Mapping[str, str] | None = None,
    max_title_products: int = folds.MAX_TITLE_PRODUCTS,
) -> dict[str, np.ndarray]:
    """Truth group ids per product: `same_title_or_image` always (a specific title, see
    `core.model_selection.folds.specific_keys`, or identical image bytes); with an nm → model map (a generated
    sample's manifest, or a catalogue's colour_variants.parquet) also `colour_variants` and
    `any_known` (either)."""
    keys = contrastive.product_keys(nm, products, image_index, max_title_products)
    truths = {"same_title_or_image": folds.duplicate_groups(keys["title_key"], keys["image_key"])}
    if variant_model is not None:
        model = pd.Series(np.asarray(nm, dtype=object)).astype(str).map(variant_model).to_numpy(dtype=object)
        truths["colour_variants"] = scoring.truth_from_labels(model)
        truths["any_known"] = folds.duplicate_groups(keys["title_key"], keys["image_key"], model)
    return truths


def _groups_of(pairs: pd.DataFrame, n: int, edges: np.ndarray) -> np.ndarray:
    return dup.components(n, pairs["i"].to_numpy()[edges], pairs["j"].to_numpy()[edges])


def configured_rows(
    groups: np.ndarray, pairs: pd.DataFrame, truths: Mapping[str, np.ndarray], settings: Mapping
) -> list[dict]:
    n = len(groups)
    edges = dup.match_edges(
        pairs,
        n,
        settings["text_threshold"],
        settings["image_threshold"],
        settings["text_floor"],
        settings["image_floor"],
        settings.get("max_title_products"),
    )
    rows = []
    for truth_name, truth in truths.items():
        common = {
            "section": "configured",
            "truth": truth_name,
            **{k: settings.get(k) for k in SETTINGS if k != "candidates"},
        }
        rows.append(
            {
                **common,
                "level": "groups",
                **scoring.group_scores(groups, truth),
                "candidate_recall": scoring.candidate_recall(pairs, truth),
            }
        )
        rows.append(
            {
                **common,
                "level": "match edges",
                **scoring.edge_scores(pairs["i"].to_numpy()[edges], pairs["j"].to_numpy()[edges], truth),
            }
        )
    return rows


def floor_rows(
    pairs: pd.DataFrame,
    n: int,
    truths: Mapping[str, np.ndarray],
    settings: Mapping,
    text_floors: Sequence[float],
    image_floors: Sequence[float],
) -> list[dict]:
    rows = []
    for text_floor in text_floors:
        for image_floor in image_floors:
            edges = dup.match_edges(
                pairs,
                n,
                settings["text_threshold"],
                settings["image_threshold"],
                text_floor,
                image_floor,
                settings.get("max_title_products"),
            )
            groups = _groups_of(pairs, n, edges)
            for truth_name, truth in truths.items():
                rows.append(
                    {
                        "section": "floors",
                        "level": "groups",
                        "truth": truth_name,
                        "vectors": settings["vectors"],
                        "text_threshold": settings["text_threshold"],
                        "image_threshold": settings["image_threshold"],
                        "text_floor": text_floor,
                        "image_floor": image_floor,
                        **scoring.group_scores(groups, truth),
                    }
                )
    return rows


def similar_products_purity(nm: np.ndarray, labels: np.ndarray, similar: pd.DataFrame) -> dict[str, float]:
    """Over `similar` (nm, neighbour_nm): the share of pairs with both labels known that agree."""
    position_of = pd.Series(np.arange(len(nm)), index=pd.Index(np.asarray(nm, dtype=object).astype(str)))
    query = position_of.reindex(similar["nm"].astype(str)).to_numpy(dtype=float)
    neighbour = position_of.reindex(similar["neighbour_nm"].astype(str)).to_numpy(dtype=float)
    ok = ~(np.isnan(query) | np.isnan(neighbour))
    q, nb = query[ok].astype(np.int64), neighbour[ok].astype(np.int64)
    both = pd.notna(labels[q]) & pd.notna(labels[nb])
    counted = int(both.sum())
    return {
        "purity": float((labels[q][both] == labels[nb][both]).sum() / counted) if counted else float("nan"),
        "neighbours_counted": counted,
        "queries": int(len(np.unique(q[both]))),
    }


def purity_rows(
    spaces: Mapping[str, np.ndarray],
    labels: pd.DataFrame,
    k: int,
    config: IndexConfig,
    nm: np.ndarray,
    similar: pd.DataFrame,
    index_space: str,
) -> list[dict]:
    rows = []
    for label in ("category", "sub_category"):
        if label not in labels:
            continue
        values = labels[label].astype(object).to_numpy()
        known = pd.notna(values)
        if known.sum() < 2:
            continue
        for space, vectors in spaces.items():
            _, positions = knn(vectors[known], k, config)
            rows.append(
                {
                    "section": "purity",
                    "space": space,
                    "label": label,
                    "gallery": "labelled products",
                    **scoring.neighbour_purity(positions, values[known]),
                }
            )
        if len(similar):
            rows.append(
                {
                    "section": "purity",
                    "space": f"{index_space} (similar_products)",
                    "label": label,
                    "gallery": "whole catalogue, labelled pairs",
                    **similar_products_purity(nm, values, similar),
                }
            )
    return rows


def variant_rows(
    pairs_by_source: Mapping[str, pd.DataFrame],
    n: int,
    truth: np.ndarray,
    config: variants.VariantConfig,
    grids: ReportGrids,
) -> list[dict]:
    """The `variants` and `variant_sweep` sections against the colour-variant `truth`."""
    rows = []
    for source, pairs in pairs_by_source.items():
        common = {"truth": "colour_variants", "vectors": source}
        rows.extend(
            {"section": "variants", **common, **row} for row in variants.variant_scores(pairs, n, truth, config)
        )
        if grids.variant_neighbours and grids.variant_text_floor:
            sweep = variants.variant_sweep(
                pairs, n, truth, grids.variant_neighbours, grids.variant_text_floor, config.exact_image_threshold
            )
            rows.extend({"section": "variant_sweep", **common, **row} for row in sweep.to_dict("records"))
    return rows


def duplicate_report(
    nm: np.ndarray,
    groups: np.ndarray,
    pairs_by_source: Mapping[str, pd.DataFrame],
    truths: Mapping[str, np.ndarray],
    settings: Mapping,
    grids: ReportGrids,
    spaces: Mapping[str, np.ndarray],
    labels: pd.DataFrame,
    similar: pd.DataFrame,
    index_space: str,
    purity_k: int,
    index_config: IndexConfig,
    variant_config: variants.VariantConfig | None = None,
) -> pd.DataFrame:
    """The report table (module docstring). `groups` are the built duplicate groups (row-aligned
    with `nm`), made from `pairs_by_source[settings["vectors"]]` with `settings`' thresholds;
    `labels` holds `category` / `sub_category` row-aligned with `nm`. The variant sections are
    there when `truths` has `colour_variants` (with `variant_config`, default `VariantConfig()`)."""
    n = len(nm)
    pairs = pairs_by_source[settings["vectors"]]
    rows = configured_rows(groups, pairs, truths, settings)
    for source, source_pairs in pairs_by_source.items():
        sweep = scoring.threshold_sweep(
            source_pairs, n, truths, grids.text, grids.image, dup.OFF, dup.OFF, settings.get("max_title_products")
        )
        rows.extend(
            {
                "section": "sweep",
                "level": "groups",
                "vectors": source,
                "text_floor": dup.OFF,
                "image_floor": dup.OFF,
                **row,
            }
            for row in sweep.to_dict("records")
        )
    rows.extend(floor_rows(pairs, n, truths, settings, grids.text_floor, grids.image_floor))
    rows.extend(purity_rows(spaces, labels, purity_k, index_config, nm, similar, index_space))
    if "colour_variants" in truths:
        rows.extend(
            variant_rows(
                pairs_by_source, n, truths["colour_variants"], variant_config or variants.VariantConfig(), grids
            )
        )
    return pd.DataFrame(rows)
