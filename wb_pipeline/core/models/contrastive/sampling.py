"""What the trainer is fed: each product's duplicate keys (`product_keys`), a train / validation split by
duplicate GROUPS, and batches with no duplicate text or image inside (`DuplicateFreeBatchSampler`):
two products with the same title would be each other's false negatives under the CLIP loss."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from wb_pipeline.core.model_selection.folds import (
    MAX_TITLE_PRODUCTS,
    specific_keys,
)


def _key_codes(keys: Sequence[Any]) -> np.ndarray:
    """Integer code per key; missing or empty keys get -1 (they link nothing)."""
    series = pd.Series(list(keys), dtype=object)
    series = series.where(series.notna() & series.astype(str).ne(""), None)
    codes, _ = pd.factorize(series, use_na_sentinel=True)
    return codes


def group_split(groups: np.ndarray, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): whole groups on one side (sklearn `GroupShuffleSplit`)."""
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        raise ValueError(
            f"group_split: {len(groups)} rows form {len(np.unique(groups))} duplicate group(s); "
            "need at least 2 to hold some out for validation"
        )
    splitter = GroupShuffleSplit(n_splits=1, test_size=validation_fraction, random_state=seed)
    train, validation = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(train), np.sort(validation)


class DuplicateFreeBatchSampler:
    """Batches of row indices in which no two rows share a text key or an image key.

    Each epoch is a fresh seeded shuffle, filled greedily: a row that clashes with the batch being
    built waits in a small deferred queue and goes into the next batch it fits. Every row appears
    exactly once per epoch; only the last batches may be short."""

    def __init__(self, text_keys: Sequence[Any], image_keys: Sequence[Any], batch_size: int, seed: int = 0):
        if len(text_keys) != len(image_keys):
            raise ValueError(f"DuplicateFreeBatchSampler: {len(text_keys)} text keys but {len(image_keys)} image keys")
        if batch_size < 1:
            raise ValueError("DuplicateFreeBatchSampler: batch_size must be positive")
        self.text_codes = _key_codes(text_keys)
        self.image_codes = _key_codes(image_keys)
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.text_codes)

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.text_codes))
        stream = iter(order.tolist())
        deferred: list[int] = []
        exhausted = False
        while deferred or not exhausted:
            batch: list[int] = []
            texts: set[int] = set()
            images: set[int] = set()

            def fits(row: int) -> bool:
                t, i = self.text_codes[row], self.image_codes[row]
                return (t < 0 or t not in texts) and (i < 0 or i not in images)

            def take(row: int) -> None:
                batch.append(row)
                if self.text_codes[row] >= 0:
                    texts.add(self.text_codes[row])
                if self.image_codes[row] >= 0:
                    images.add(self.image_codes[row])

            waiting = []
            for row in deferred:
                if len(batch) < self.batch_size and fits(row):
                    take(row)
                else:
                    waiting.append(row)
            deferred = waiting
            while len(batch) < self.batch_size and not exhausted:
                row = next(stream, None)
                if row is None:
                    exhausted = True
                elif fits(row):
                    take(row)
                else:
                    deferred.append(row)
            if batch:
                yield np.asarray(batch, dtype=np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.epoch(0)


def training_rows(n_rows: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted positions of the products a joint model is fitted on: all `n_rows`, or a seeded uniform
    sample of `max_rows` of them when there are more (`max_rows` 0: no limit)."""
    if max_rows < 0:
        raise ValueError(f"max_training_pairs must be >= 0, got {max_rows}")
    if max_rows == 0 or n_rows <= max_rows:
        return np.arange(n_rows, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_rows, replace=False)).astype(np.int64)


def product_keys(
    nm: Sequence[str], products: pd.DataFrame, image_index: pd.DataFrame, max_title_products: int = MAX_TITLE_PRODUCTS
) -> pd.DataFrame:
    """Duplicate keys per product, in the order of `nm`:

    - `title_key`: the title lower-cased with whitespace collapsed (same title → near-duplicate text);
    - `text_key`: the same normalisation of title + description (the seed's "identical title and
      description");
    - `image_key`: the image's content hash (identical image bytes).

    A title (or title + description) that more than `max_title_products` of these products share is
    generic, not a duplicate key, and is missing here (`core.model_selection.folds.specific_keys`).
    `products` needs nm, title, description; `image_index` nm, content_hash. A product missing from
    either gets missing keys (which link nothing) — never an error, never a dropped row."""
    ids = pd.DataFrame({"nm": pd.Series(list(nm), dtype=object).astype(str)})
    text = products[["nm", "title", "description"]].drop_duplicates("nm").astype({"nm": str})
    images = image_index[["nm", "content_hash"]].drop_duplicates("nm").astype({"nm": str})
    frame = ids.merge(text, on="nm", how="left").merge(images, on="nm", how="left")

    def normalise(values: pd.Series) -> pd.Series:
        cleaned = values.astype("string").str.lower().str.split().str.join(" ")
        return cleaned.where(cleaned.fillna("").ne(""))

    title = normalise(frame["title"])
    full_text = normalise(frame["title"].fillna("").astype(str) + " " + frame["description"].fillna("").astype(str))
    return pd.DataFrame(
        {
            "nm": frame["nm"].to_numpy(dtype=object),
            "title_key": specific_keys(title.to_numpy(dtype=object, na_value=None), max_title_products),
            "text_key": specific_keys(full_text.to_numpy(dtype=object, na_value=None), max_title_products),
            "image_key": frame["content_hash"].astype("string").to_numpy(dtype=object, na_value=None),
        },
        dtype=object,
    )
