"""Group-aware, stratified cross-validation folds (seed §"Схема валидации").

Products that share an identical title or an identical image (same content hash) are near
duplicates: if one sits in the training part and its twin in the validation part, the score
measures memorisation. So products are grouped into the connected components of the relation
"same title OR same image" (transitively: A~B by title and B~C by image puts A, B, C together)
and whole groups are assigned to folds by scikit-learn's `StratifiedGroupKFold`.
A stricter alternative (REFERENCE §6) holds out whole brands.

Only a SPECIFIC title is a duplicate key (`specific_keys`): a title that many different products
carry — a bare category word, a template, a title made only of colour / fabric / collection fields
(one real catalogue: 379 titles for 6,000 products, one of them on 434) — says nothing about two
products being the same item, and as a key it would glue hundreds of products into one "group".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

GroupBy = Literal["duplicates", "brand"]
Folds = list[tuple[np.ndarray, np.ndarray]]

# A title shared by more products than this is generic, not a duplicate key. What makes a real
# duplicate title is one seller listing one item again, or one model in a handful of colours or
# sizes under the same title: a handful, i.e. 5 (a model in more colours than that usually names
# the colour in its title; identical images still link its copies through the image key).
MAX_TITLE_PRODUCTS = 5


def specific_keys(keys: Sequence | pd.Series, max_products: int = MAX_TITLE_PRODUCTS) -> np.ndarray:
    """`keys` (one value per row, e.g. a normalised title) as an object array in which every value
    shared by more than `max_products` rows is missing (None): such an identity is generic and
    links nothing in `duplicate_groups`. Missing values (None / NaN / "") stay missing; the other
    values are kept as they are. `max_products=1` keeps no link at all."""
    if isinstance(max_products, bool) or not isinstance(max_products, (int, np.integer)) or max_products < 1:
        raise ValueError(f"specific_keys: max_products must be an integer >= 1, got {max_products!r}")
    values = pd.Series(np.asarray(keys, dtype=object)).replace("", None)
    counts = values.map(values.value_counts(dropna=True))
    specific = (values.notna() & (counts <= max_products)).to_numpy()
    out = np.full(len(values), None, dtype=object)
    out[specific] = values.to_numpy(dtype=object)[specific]
    return out


def duplicate_groups(*keys: Sequence | pd.Series) -> np.ndarray:
    """Group id per row: connected components of "rows share a value in any of `keys`".

    Each key is a column of the same length (e.g. normalised title, image content hash); a
    missing value (None/NaN/empty string) links nothing. Rows are nodes, each distinct key value
    is a node, every row is joined to its values; the components are the groups (0..n_groups-1,
    numbered in order of first appearance so the result is deterministic).
    """
    if not keys:
        raise ValueError("duplicate_groups needs at least one key column")
    n_rows = len(keys[0])
    if any(len(key) != n_rows for key in keys):
        raise ValueError(f"duplicate_groups: key columns differ in length {[len(k) for k in keys]}")
    rows, nodes = [], []
    offset = n_rows
    for key in keys:
        values = pd.Series(np.asarray(key, dtype=object)).replace("", None)
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        present = codes >= 0
        rows.append(np.flatnonzero(present))
        nodes.append(codes[present] + offset)
        offset += len(uniques)
    row_index, node_index = np.concatenate(rows), np.concatenate(nodes)
    graph = coo_matrix((np.ones(len(row_index), dtype=np.int8), (row_index, node_index)), shape=(offset, offset))
    _, component = connected_components(graph, directed=False)
    # Renumber by first appearance among the rows (stable, independent of key-node numbering).
    first_seen, _ = pd.factorize(component[:n_rows])
    return first_seen.astype(np.int64)


def brand_groups(brands: Sequence | pd.Series) -> np.ndarray:
    """Group id per row = its brand; a product without a brand is a group of its own."""
    values = pd.Series(np.asarray(brands, dtype=object)).replace("", None)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    missing = codes < 0
    codes[missing] = len(uniques) + np.arange(int(missing.sum()))
    return codes.astype(np.int64)


def group_stratified_folds(y: Sequence, groups: Sequence[int], n_splits: int, seed: int) -> Folds:
    """(train indices, valid indices) per fold from `StratifiedGroupKFold(shuffle=True)`.

    Raises ValueError (naming the counts) when there are fewer groups than folds, since some
    fold would then be empty.
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    if n_groups < n_splits:
        raise ValueError(f"only {n_groups} distinct groups for {n_splits} folds")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(train, valid) for train, valid in splitter.split(np.zeros(len(y)), y, groups)]
