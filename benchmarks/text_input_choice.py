"""Which text should feed the text encoder? Measured, not guessed.

For each candidate input (title only / title + description, natural or the notebook's preprocessed
tokens) this embeds the products of a generated sample with the default offline encoder, trains a
logistic regression per label on the embeddings and reports macro-F1 under a stratified,
group-aware 5-fold split (products sharing a title stay in one fold), plus encoding throughput.

    python -m benchmarks.text_input_choice [--n-products 1500] [--short]

Quality numbers on a synthetic sample are a sanity check of the choice, not a claim about real data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedGroupKFold

from benchmarks.paths import MODELS_DIR
from wb_pipeline.core.data.characteristics import characteristics_table
from wb_pipeline.core.data.cleaning import CleaningConfig, clean_products
from wb_pipeline.core.embeddings.encoders.text import default_e5_encoder
from wb_pipeline.core.labels.rules import derive_labels
from wb_pipeline.core.labels.table import assemble_labels
from wb_pipeline.core.text.preprocessing import TextPreprocessingConfig
from wb_pipeline.core.text.product_text import build_product_text, encoder_text
from wb_pipeline.sample_data import SampleSpec, generate_tables

CANDIDATES = [
    ("title", "natural"),
    ("title_description", "natural"),
    ("title", "preprocessed"),
    ("title_description", "preprocessed"),
]
LABELS = ("category", "sex", "season")
MIN_CLASS_COUNT = 5


def group_cv_macro_f1(vectors: np.ndarray, labels: pd.Series, groups: pd.Series, seed: int = 0) -> float:
    known = labels.notna().to_numpy()
    y = labels[known].astype(str)
    keep = y.map(y.value_counts()) >= MIN_CLASS_COUNT
    x, y, g = vectors[known][keep.to_numpy()], y[keep].to_numpy(), groups[known][keep.to_numpy()].to_numpy()
    predictions = np.empty_like(y)
    for train, valid in StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed).split(x, y, g):
        model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x[train], y[train])
        predictions[valid] = model.predict(x[valid])
    return float(f1_score(y, predictions, average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-products", type=int, default=1500)
    parser.add_argument("--short", action="store_true", help="300 products")
    parser.add_argument("--models-dir", default=str(MODELS_DIR))
    args = parser.parse_args()
    n = 300 if args.short else args.n_products
    train, test = generate_tables(SampleSpec(n_products=n, seed=3, with_images=False))
    train["nm"], test["nm"] = train["nm"].astype(str), test["nm"].astype(str)
    clean = clean_products({"train": train, "test": test}, None, CleaningConfig(require_image=False)).clean
    product_text = build_product_text(clean, TextPreprocessingConfig())
    chars = characteristics_table(
        clean.loc[clean["split"] == "train", "nm"], clean.loc[clean["split"] == "train", "characteristics"]
    )
    labels = assemble_labels(clean, derive_labels(chars.long, clean.loc[clean["split"] == "train", "nm"]).labels)
    groups = product_text["title_natural"].str.lower()
    encoder = default_e5_encoder(args.models_dir + "/e5")
    encoder.encode(["прогрев модели"] * 8)
    rows = []
    for fields, form in CANDIDATES:
        texts = encoder_text(product_text, fields, form).tolist()
        started = time.perf_counter()
        vectors = encoder.encode(texts)
        seconds = time.perf_counter() - started
        row = {"input": f"{fields} ({form})", "texts/s": round(len(texts) / seconds, 1)}
        for label in LABELS:
            row[f"{label} macro-F1"] = round(group_cv_macro_f1(vectors, labels[label], groups), 3)
        rows.append(row)
        print(row, flush=True)
    print(f"\n{len(clean)} generated products; logistic regression, StratifiedGroupKFold(5) grouped by title")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
