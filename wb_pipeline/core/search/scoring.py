"""The duplicate-detection report: predicted groups against known duplicates, a threshold sweep, and
neighbour purity.

Scores, for predicted groups vs true groups (both: a group id per product, singletons allowed):

- pairwise precision / recall / F1 over the pairs of products put in one group (counted from the
  contingency table, never by listing pairs, so a large group costs nothing);
- `product_f1`: the Shopee competition's metric — per product, the F1 of its predicted group vs
  its true group (both including itself), averaged over all products; `product_f1_dup` averages
  only over products that have a known duplicate (Shopee's test set had only such products).

Edge-level scores (the matches themselves, before connected components chain them) are given too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from wb_pipeline.core.search.duplicates import OFF, components, match_edges


def _pairs(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    return float((counts * (counts - 1) / 2).sum())


def group_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pairwise precision / recall / F1 and the per-product (Shopee) F1 of `predicted` vs `truth`."""
    predicted, truth = np.asarray(predicted, np.int64), np.asarray(truth, np.int64)
    if len(predicted) != len(truth):
        raise ValueError(f"group_scores: {len(predicted)} predicted vs {len(truth)} true group ids")
    frame = pd.DataFrame({"p": predicted, "t": truth})
    cells = frame.groupby(["p", "t"]).size()
    predicted_sizes = frame.groupby("p").size()
    true_sizes = frame.groupby("t").size()
    tp = _pairs(cells.to_numpy())
    predicted_pairs, true_pairs = _pairs(predicted_sizes.to_numpy()), _pairs(true_sizes.to_numpy())
    precision = tp / predicted_pairs if predicted_pairs else float("nan")
    recall = tp / true_pairs if true_pairs else float("nan")
    f1 = 2 * tp / (predicted_pairs + true_pairs) if predicted_pairs + true_pairs else float("nan")
    overlap = cells.reindex(pd.MultiIndex.from_arrays([predicted, truth])).to_numpy(np.float64)
    size_p = predicted_sizes.reindex(predicted).to_numpy(np.float64)
    size_t = true_sizes.reindex(truth).to_numpy(np.float64)
    per_product = 2 * overlap / (size_p + size_t)
    has_duplicate = size_t > 1
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "product_f1": float(per_product.mean()) if len(per_product) else float("nan"),
        "product_f1_dup": float(per_product[has_duplicate].mean()) if has_duplicate.any() else float("nan"),
        "true_pairs": true_pairs,
        "predicted_pairs": predicted_pairs,
        "correct_pairs": tp,
        "groups": int((predicted_sizes > 1).sum()),
        "grouped_products": int(size_p[size_p > 1].size),
        "largest_group": int(predicted_sizes.max()) if len(predicted_sizes) else 0,
    }


def edge_scores(i: np.ndarray, j: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision of the match edges themselves, and the share of true pairs they cover directly."""
    truth = np.asarray(truth, np.int64)
    correct = float((truth[np.asarray(i)] == truth[np.asarray(j)]).sum())
    true_pairs = _pairs(np.bincount(truth)) if len(truth) else 0.0
    edges = float(len(i))
    precision = correct / edges if edges else float("nan")
    recall = correct / true_pairs if true_pairs else float("nan")
    f1 = 2 * correct / (edges + true_pairs) if edges + true_pairs else float("nan")
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_pairs": true_pairs,
        "predicted_pairs": edges,
        "correct_pairs": correct,
    }


def truth_from_labels(labels: Sequence) -> np.ndarray:
    """Group ids from a known group label per product (missing: a group of its own)."""
    values = pd.Series(np.asarray(labels, dtype=object)).replace("", None)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    missing = codes < 0
    codes[missing] = len(uniques) + np.arange(int(missing.sum()))
    return codes.astype(np.int64)


def candidate_recall(pairs: pd.DataFrame, truth: np.ndarray) -> float:
    """Share of the true pairs that are candidates at all (the ceiling on the graph's recall)."""
    truth = np.asarray(truth, np.int64)
    true_pairs = _pairs(np.bincount(truth)) if len(truth) else 0.0
    if not true_pairs:
        return float("nan")
    same = truth[pairs["i"].to_numpy()] == truth[pairs["j"].to_numpy()]
    return float(same.sum() / true_pairs)


def threshold_sweep(
    pairs: pd.DataFrame,
    n: int,
    truths: Mapping[str, np.ndarray],
    text_grid: Sequence[float],
    image_grid: Sequence[float],
    text_floor: float,
    image_floor: float,
    max_title_products: int | None = None,
) -> pd.DataFrame:
    """Scores of the connected components for every (text threshold, image threshold) in the grids
    (2.0 = that modality off), against every truth. The fallback floors apply where they are below
    the thresholds (a floor is never above its threshold); `max_title_products` as in `match_edges`."""
    rows = []
    for text_threshold in text_grid:
        for image_threshold in image_grid:
            edges = match_edges(
                pairs,
                n,
                text_threshold,
                image_threshold,
                min(text_floor, text_threshold) if text_floor < OFF else OFF,
                min(image_floor, image_threshold) if image_floor < OFF else OFF,
                max_title_products,
            )
            groups = components(n, pairs["i"].to_numpy()[edges], pairs["j"].to_numpy()[edges])
            for truth_name, truth in truths.items():
                rows.append(
                    {
                        "truth": truth_name,
                        "text_threshold": float(text_threshold),
                        "image_threshold": float(image_threshold),
                        **group_scores(groups, truth),
                    }
                )
    return pd.DataFrame(rows)


def neighbour_purity(positions: np.ndarray, labels: Sequence, query_rows: np.ndarray | None = None) -> dict[str, float]:
    """Share of the neighbours (`positions[r]`, -1 = none) whose label equals the query's, over
    query rows and neighbours with a known label; plus how many labelled neighbours were counted."""
    labels = pd.Series(np.asarray(labels, dtype=object))
    codes, _ = pd.factorize(labels, use_na_sentinel=True)
    rows = np.arange(len(positions)) if query_rows is None else np.asarray(query_rows)
    positions = np.asarray(positions)[rows]
    query = codes[rows][:, None]
    valid = positions >= 0
    neighbour = np.where(valid, codes[np.where(valid, positions, 0)], -1)
    known = valid & (neighbour >= 0) & (query >= 0)
    counted = int(known.sum())
    return {
        "purity": float((neighbour == query)[known].sum() / counted) if counted else float("nan"),
        "neighbours_counted": counted,
        "queries": int((known.any(axis=1)).sum()),
    }
