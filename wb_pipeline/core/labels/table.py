"""The `product_labels` table: labels derived from characteristics plus the labels a file carries."""

from __future__ import annotations

import numpy as np
import pandas as pd

from wb_pipeline.core.data import schema


def file_labels(clean: pd.DataFrame) -> pd.DataFrame:
    """Label columns carried by the input files (`category`, `sub_category`, `isadult`), as categoricals.

    Values are kept as given (a real catalogue may have categories the known vocabulary lacks;
    the `product_labels` check reports those); booleans become 'True'/'False' like the vocabulary.
    """
    out = pd.DataFrame({"nm": clean["nm"].to_numpy()})
    for column in schema.TEST_LABEL_COLUMNS:
        if column not in clean.columns:
            continue
        values = clean[column]
        if pd.api.types.is_bool_dtype(values):
            as_text = values.map({True: "True", False: "False"})
        else:
            # map each distinct value once (bools inside an object column also become 'True'/'False')
            distinct = pd.unique(values.dropna())
            mapping = {
                v: (str(bool(v)) if isinstance(v, (bool, np.bool_)) else str(v).strip() or None) for v in distinct
            }
            as_text = values.map(mapping)
        out[column] = pd.Categorical(as_text.to_numpy(dtype=object))
    return out


def assemble_labels(clean: pd.DataFrame, derived: pd.DataFrame) -> pd.DataFrame:
    """One row per clean product: nm, split, the derived labels (train rows) and the file labels."""
    base = clean[["nm", "split"]].reset_index(drop=True)
    merged = base.merge(derived, on="nm", how="left").merge(file_labels(clean), on="nm", how="left")
    vocab = schema.label_vocabularies()
    for column in schema.DERIVED_LABEL_COLUMNS:
        merged[column] = pd.Categorical(merged[column], categories=list(vocab[column]))
    return merged


def values_outside_vocabulary(labels: pd.DataFrame) -> pd.DataFrame:
    """label, value, count of label values not in the known WB vocabulary."""
    vocab = schema.label_vocabularies()
    rows = []
    for column in labels.columns:
        if column not in vocab:
            continue
        values = labels[column].dropna().astype(str)
        outside = values[~values.isin(vocab[column])].value_counts()
        rows += [{"label": column, "value": value, "count": int(count)} for value, count in outside.items()]
    return pd.DataFrame(rows, columns=["label", "value", "count"])
