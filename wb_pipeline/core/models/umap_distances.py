"""The exact distance matrix UMAP builds for small data, computed in one compiled loop.

Below 4,096 rows UMAP skips its approximate neighbour search and builds the full pairwise distance
matrix with `sklearn.metrics.pairwise_distances(X, metric=<numba euclidean>)`: sklearn then calls the
compiled metric once per pair FROM PYTHON (n²/2 calls: ~5 s CPU for 2,900 rows, over half of a whole
UMAP fit). This module runs the same metric (`umap.distances.euclidean`, same float32 in/out) inside
one numba loop: bit-identical matrix (checked by the tests), passed to UMAP as `metric="precomputed"`.
Imported lazily: numba compiles on first use (cached in NUMBA_CACHE_DIR).
"""

from __future__ import annotations

import numba
import numpy as np
from umap.distances import euclidean

UMAP_SMALL_DATA_ROWS = 4096  # UMAP's own threshold for the exact (all pairs) path


@numba.njit(cache=True)
def _pairwise_euclidean(points):
    n = points.shape[0]
    out = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(i + 1, n):
            distance = euclidean(points[i], points[j])
            out[i, j] = distance
            out[j, i] = distance
    return out


def euclidean_distance_matrix(points: np.ndarray) -> np.ndarray:
    """[n, n] float32 Euclidean distances, identical to what UMAP computes for itself on small data."""
    return _pairwise_euclidean(np.ascontiguousarray(points, dtype=np.float32))
