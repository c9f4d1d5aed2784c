"""Cross-modal retrieval metrics: rank of the true partner, Recall@k and median rank, both directions.

Pure numpy. Row i of the query matrix is paired with row i of the gallery matrix. The rank of a
query's partner is 1 + the number of gallery rows scoring STRICTLY higher, so an exact tie (an
identical duplicate image or text elsewhere in the gallery) never pushes the true partner down:
duplicates are indistinguishable by content, and punishing the model for them would be noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def partner_ranks(queries: np.ndarray, gallery: np.ndarray, block_rows: int = 2048) -> np.ndarray:
    """1-based rank of gallery row i among all gallery rows for query row i (dot-product scores).

    Scores are computed in blocks of `block_rows` queries, so memory stays at block_rows × n.
    Raises ValueError when the two matrices do not have the same shape [n, dim] or n == 0.
    """
    queries = np.asarray(queries, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    if queries.ndim != 2 or queries.shape != gallery.shape:
        raise ValueError(f"partner_ranks: queries {queries.shape} and gallery {gallery.shape} must both be [n, dim]")
    if len(queries) == 0:
        raise ValueError("partner_ranks: no pairs to rank")
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), block_rows):
        stop = min(start + block_rows, len(queries))
        scores = queries[start:stop] @ gallery.T
        true_scores = scores[np.arange(stop - start), np.arange(start, stop)]
        ranks[start:stop] = 1 + (scores > true_scores[:, None]).sum(axis=1)
    return ranks


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose partner is within the top `k`."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("recall_at_k: no ranks")
    return float((ranks <= k).mean())


def retrieval_metrics(
    text_vectors: np.ndarray, image_vectors: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, dict[str, float]]:
    """Recall@k and median rank for text→image and image→text retrieval of paired rows.

    Returns {"text_to_image": {"recall_at_1": ..., "median_rank": ...}, "image_to_text": {...}}.
    """
    result = {}
    for direction, (queries, gallery) in {
        "text_to_image": (text_vectors, image_vectors),
        "image_to_text": (image_vectors, text_vectors),
    }.items():
        ranks = partner_ranks(queries, gallery)
        row = {f"recall_at_{k}": recall_at_k(ranks, k) for k in ks}
        row["median_rank"] = float(np.median(ranks))
        result[direction] = row
    return result


def chance_metrics(n_pairs: int, ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """What a random ranking scores on `n_pairs` pairs: Recall@k = k/n, median rank (n+1)/2.

    The dimension-agnostic baseline: raw text and image vectors live in spaces of different size,
    so there is no raw cross-modal similarity to compare against."""
    if n_pairs <= 0:
        raise ValueError("chance_metrics: n_pairs must be positive")
    row = {f"recall_at_{k}": min(k, n_pairs) / n_pairs for k in ks}
    row["median_rank"] = (n_pairs + 1) / 2
    return {"text_to_image": dict(row), "image_to_text": dict(row)}
