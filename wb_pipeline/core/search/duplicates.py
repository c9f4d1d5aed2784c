"""Duplicate groups: a thresholded text + image neighbour graph, then connected components.

The Shopee product-matching recipe (winning solutions, F1 ≈ 0.79 on real marketplace duplicates):
candidates are each product's nearest neighbours in the text space and in the image space; a
candidate pair is a match when EITHER modality is similar enough (per-modality thresholds); and a
product that matched nothing keeps its single best candidate when both modalities agree at least
weakly (the per-modality floors), so near-misses are not lost while unique products stay alone.
Matches are the edges of a graph; its connected components are the groups (singletons allowed).

Similarities are cosine (unit vectors). `DuplicateConfig.vectors` selects the encoders' own
vectors (default) or their joint-space projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from wb_pipeline.core.model_selection.folds import MAX_TITLE_PRODUCTS
from wb_pipeline.core.search.index import IndexConfig, knn

OFF = 2.0  # a threshold no cosine reaches: the rule is switched off


@dataclass(frozen=True)
class DuplicateConfig:
    """Thresholds and candidates of the duplicate graph (cosine similarities).

    Defaults were chosen from the duplicate report's threshold sweep on the bundled sample AND the
    real Flipkart set (docs/results.md, "Search and duplicate groups"): a value good on both, not the best of either.
    `candidates`: neighbours per product and modality that are considered at all.
    `text_floor` / `image_floor`: a product without any match keeps its best candidate (by mean
    similarity) when its text similarity >= text_floor AND its image similarity >= image_floor;
    set either to 2.0 to switch the fallback off.
    `max_title_products`: a text that more products than this share (text cosine >= text_threshold,
    the product itself counted) is generic — a category word, a title made of colour and fabric
    fields — and vouches for nothing: such a product matches by its image only (no text match, no
    floor fallback). The same handful as `core.model_selection.folds.MAX_TITLE_PRODUCTS` (seen among the
    `candidates` text neighbours, so it must stay below them to be seen)."""

    vectors: Literal["encoders", "joint"] = "encoders"
    candidates: int = 20
    text_threshold: float = 0.99
    image_threshold: float = 0.99
    text_floor: float = 0.97
    image_floor: float = 0.95
    exact_below: int = 20_000  # kNN exact below this many products, HNSW above (like the index)
    threads: int = 2
    sample_groups: int = 8  # groups shown in the metadata (table + contact sheet)
    seed: int = 0
    max_title_products: int = MAX_TITLE_PRODUCTS

    def __post_init__(self) -> None:
        if self.vectors not in ("encoders", "joint"):
            raise ValueError(f"DuplicateConfig.vectors must be 'encoders' or 'joint', got {self.vectors!r}")
        if self.candidates < 1:
            raise ValueError(f"DuplicateConfig.candidates must be >= 1, got {self.candidates}")
        if self.max_title_products < 1:
            raise ValueError(f"DuplicateConfig.max_title_products must be >= 1, got {self.max_title_products}")
        for name in ("text_threshold", "image_threshold", "text_floor", "image_floor"):
            value = getattr(self, name)
            if not -1.0 <= value <= OFF:
                raise ValueError(f"DuplicateConfig.{name} must be a cosine in [-1, 1] (or 2 = off), got {value}")

    def index_config(self) -> IndexConfig:
        return IndexConfig(exact_below=self.exact_below, threads=self.threads, recall_queries=0)


def candidate_pairs(
    text_vectors: np.ndarray, image_vectors: np.ndarray, k: int, index_config: IndexConfig = IndexConfig()
) -> pd.DataFrame:
    """Every pair (i < j) that is among the k nearest neighbours of either product in either
    modality, with both similarities: columns `i`, `j`, `text_sim`, `image_sim` (float32), and
    `image_rank` (int32): the larger of j's rank among i's image neighbours and i's among j's
    (1 = each other's nearest photo; k + 1 = not within the k of one of them)."""
    n = len(text_vectors)
    if len(image_vectors) != n:
        raise ValueError(f"candidate_pairs: {n} text vectors but {len(image_vectors)} image vectors")
    if n < 2:
        return pd.DataFrame(
            {
                "i": np.zeros(0, np.int64),
                "j": np.zeros(0, np.int64),
                "text_sim": np.zeros(0, np.float32),
                "image_sim": np.zeros(0, np.float32),
                "image_rank": np.zeros(0, np.int32),
            }
        )
    k = min(k, n - 1)
    blocks = []
    for vectors in (text_vectors, image_vectors):
        _, positions = knn(vectors, k, index_config)
        rows = np.repeat(np.arange(n, dtype=np.int64), positions.shape[1])
        blocks.append(np.stack([rows, positions.ravel()], axis=1))
    image_positions = positions
    pairs = np.concatenate(blocks)
    pairs = pairs[(pairs[:, 1] >= 0) & (pairs[:, 0] != pairs[:, 1])]
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    i, j = pairs[:, 0], pairs[:, 1]
    text_vectors = np.asarray(text_vectors, np.float32)
    image_vectors = np.asarray(image_vectors, np.float32)
    return pd.DataFrame(
        {
            "i": i,
            "j": j,
            "text_sim": np.einsum("ij,ij->i", text_vectors[i], text_vectors[j]).astype(np.float32),
            "image_sim": np.einsum("ij,ij->i", image_vectors[i], image_vectors[j]).astype(np.float32),
            "image_rank": mutual_rank(image_positions, i, j),
        }
    )


def mutual_rank(positions: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Per pair (i, j): the larger of j's rank in row i of `positions` (each row's neighbours,
    nearest first, -1 = none) and i's rank in row j; `positions.shape[1] + 1` where either is absent."""
    n, k = positions.shape
    valid = positions >= 0
    keys = (np.repeat(np.arange(n, dtype=np.int64), k) * n + np.where(valid, positions, 0).ravel())[valid.ravel()]
    ranks = np.tile(np.arange(1, k + 1, dtype=np.int32), n)[valid.ravel()]
    order = np.argsort(keys, kind="stable")
    keys, ranks = keys[order], ranks[order]

    def lookup(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        wanted = np.asarray(a, np.int64) * n + np.asarray(b, np.int64)
        at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
        found = (keys[at] == wanted) if len(keys) else np.zeros(len(wanted), bool)
        return np.where(found, ranks[at] if len(keys) else 0, k + 1).astype(np.int32)

    return np.maximum(lookup(i, j), lookup(j, i))


def generic_text(pairs: pd.DataFrame, n: int, text_threshold: float, max_title_products: int) -> np.ndarray:
    """Per product: whether more than `max_title_products` products (itself counted) share its text,
    i.e. it has more text twins (candidate pairs with text cosine >= text_threshold) than that minus 1."""
    twins = pairs["text_sim"].to_numpy() >= text_threshold
    counts = np.bincount(pairs["i"].to_numpy()[twins], minlength=n) + np.bincount(
        pairs["j"].to_numpy()[twins], minlength=n
    )
    return counts + 1 > max_title_products


def match_edges(
    pairs: pd.DataFrame,
    n: int,
    text_threshold: float,
    image_threshold: float,
    text_floor: float = OFF,
    image_floor: float = OFF,
    max_title_products: int | None = None,
) -> np.ndarray:
    """Boolean mask over `pairs`: the matches (see the module docstring). With `max_title_products`,
    a product whose text is generic (`generic_text`) matches by its image only."""
    text_sim, image_sim = pairs["text_sim"].to_numpy(), pairs["image_sim"].to_numpy()
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    text_vouches = np.ones(len(pairs), bool)
    if max_title_products is not None and len(pairs):
        generic = generic_text(pairs, n, text_threshold, max_title_products)
        text_vouches = ~(generic[i] | generic[j])
    strong = ((text_sim >= text_threshold) & text_vouches) | (image_sim >= image_threshold)
    if text_floor >= OFF or image_floor >= OFF or len(pairs) == 0:
        return strong
    matched = np.zeros(n, bool)
    matched[i[strong]] = True
    matched[j[strong]] = True
    eligible = (text_sim >= text_floor) & (image_sim >= image_floor) & ~strong & text_vouches
    keep = strong.copy()
    if eligible.any():
        # Each lonely product's best eligible candidate (by mean similarity), seen from either end.
        score = (text_sim + image_sim) / 2.0
        candidates = np.concatenate([np.flatnonzero(eligible)] * 2)
        ends = np.concatenate([i[eligible], j[eligible]])
        lonely = ~matched[ends]
        frame = pd.DataFrame({"end": ends[lonely], "pair": candidates[lonely], "score": score[candidates[lonely]]})
        if len(frame):
            best = frame.sort_values(["end", "score", "pair"], ascending=[True, False, True]).drop_duplicates("end")
            keep[best["pair"].to_numpy()] = True
    return keep


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Group id per product: connected components of the edges (i, j), numbered by first appearance."""
    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(i), np.int8), (np.asarray(i), np.asarray(j))), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    renumbered, _ = pd.factorize(labels)
    return renumbered.astype(np.int64)


def group_products(pairs: pd.DataFrame, n: int, config: DuplicateConfig) -> tuple[np.ndarray, np.ndarray]:
    """(group id per product, the edge mask over `pairs`) under `config`'s thresholds."""
    edges = match_edges(
        pairs,
        n,
        config.text_threshold,
        config.image_threshold,
        config.text_floor,
        config.image_floor,
        config.max_title_products,
    )
    return components(n, pairs["i"].to_numpy()[edges], pairs["j"].to_numpy()[edges]), edges


def groups_frame(nm: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """The `duplicate_groups` table: `nm`, `group_id`, `group_size` (1 = no duplicate found)."""
    sizes = np.bincount(groups, minlength=int(groups.max()) + 1 if len(groups) else 0)
    return pd.DataFrame(
        {
            "nm": np.asarray(nm, dtype=object),
            "group_id": groups.astype(np.int64),
            "group_size": sizes[groups].astype(np.int64),
        }
    )


def sample_groups(frame: pd.DataFrame, count: int, seed: int) -> list[int]:
    """Group ids to show: the two largest groups, then random groups of size >= 2 (seeded)."""
    multi = frame.loc[frame["group_size"] > 1].drop_duplicates("group_id")
    if multi.empty or count <= 0:
        return []
    largest = multi.sort_values(["group_size", "group_id"], ascending=[False, True])["group_id"].head(2).tolist()
    rest = multi.loc[~multi["group_id"].isin(largest), "group_id"].to_numpy()
    rng = np.random.default_rng(seed)
    picked = rng.choice(rest, size=min(max(count - len(largest), 0), len(rest)), replace=False) if len(rest) else []
    return largest + sorted(int(g) for g in picked)


def new_product_matches(text_sim: np.ndarray, image_sim: np.ndarray, config: DuplicateConfig) -> np.ndarray:
    """Which catalogue products one NEW product would be joined to by the duplicate graph of `config`.

    `text_sim` / `image_sim`: its cosine to each of its candidates (row-aligned; the union of its
    `config.candidates` nearest catalogue products by text and by image; -1 where a modality is
    missing). The rule of `match_edges`, seen from the new product: a match by either modality's
    threshold (by text only when its text is not generic, i.e. no more than `max_title_products`
    products, itself counted, share it); without any, its single best candidate (mean similarity)
    when both reach the floors. (A lonely catalogue product whose own best candidate would become the
    new product is not looked at: that edge needs the catalogue's whole graph.)"""
    text_sim = np.asarray(text_sim, np.float32)
    image_sim = np.asarray(image_sim, np.float32)
    n = len(text_sim)
    pairs = pd.DataFrame(
        {
            "i": np.zeros(n, np.int64),
            "j": np.arange(1, n + 1, dtype=np.int64),
            "text_sim": text_sim,
            "image_sim": image_sim,
        }
    )
    strong = match_edges(
        pairs, n + 1, config.text_threshold, config.image_threshold, max_title_products=config.max_title_products
    )
    if strong.any() or n == 0 or config.text_floor >= OFF or config.image_floor >= OFF:
        return strong
    generic = generic_text(pairs, n + 1, config.text_threshold, config.max_title_products)[0]
    eligible = (text_sim >= config.text_floor) & (image_sim >= config.image_floor) & (not generic)
    keep = np.zeros(n, bool)
    if eligible.any():
        score = np.where(eligible, (text_sim + image_sim) / 2.0, -np.inf)
        keep[int(np.argmax(score))] = True
    return keep
