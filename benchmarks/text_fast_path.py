"""The text fast path vs the fp32 reference, measured in one run: speed, closeness, downstream quality.

    .venv/bin/python -m benchmarks.text_fast_path            # full: 128 long texts, the bundled sample
    .venv/bin/python -m benchmarks.text_fast_path --short    # CI smoke run: 32 texts, a 400-product sample

Variants of the default e5-small text encoder (all over the same inputs):

* ``torch fp32, whole`` -- the reference: sentence-transformers on torch, the whole description
  (cut only by the 512-token window);
* ``onnx fp32`` / ``onnx int8`` (the default engine), with the whole description or with the
  description cut to a token budget (the title always whole).

Speed: texts/s on generated products whose descriptions are lengthened to ~200 words (the real WB
average; the generated sample's own descriptions are shorter), the median of ``--reps`` timings,
variants interleaved so bursts of outside load hit all alike; the speed-up is against the
reference measured in the same run. Closeness: cosine of each variant's vectors to the reference's
(whole text), min and mean. Quality: macro-F1 per label on the bundled sample (``data/sample``,
generated if missing), a logistic regression (C=1, balanced) on the text vectors under the
project's group-aware 5-fold split (``core.models.classification``: duplicate groups, rare classes
dropped) -- the same model for every variant, so the differences are the vectors'.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.paths import BENCH_DIR, MODELS_DIR

SAMPLE_DIR = BENCH_DIR.parent / "data" / "sample"
LONG_DESCRIPTION_WORDS = 200
REFERENCE = ("torch", None)
F1_LABELS = ("category", "sub_category", "sex", "season", "age_restrictions", "fragility", "isadult")


def long_products(n: int, seed: int = 7) -> tuple[list[str], list[str]]:
    """``n`` (title, description) pairs whose descriptions are generated ones joined to ~200 words."""
    from wb_pipeline.sample_data import SampleSpec, generate_tables

    train, _ = generate_tables(SampleSpec(n_products=max(4 * n, 200), seed=seed, with_images=False))
    titles = train["title"].fillna("").tolist()
    pool = train["description"].fillna("").tolist()
    descriptions = []
    for i in range(n):
        words: list[str] = []
        j = i
        while len(words) < LONG_DESCRIPTION_WORDS:  # this product's description, then its neighbours'
            words += pool[j % len(pool)].split()
            j += 1
        descriptions.append(" ".join(words[:LONG_DESCRIPTION_WORDS]))
    return titles[:n], descriptions


def joined(titles: list[str], descriptions: list[str], budget: int | None, tokenizer) -> list[str]:
    """The encoder text exactly as the pipeline builds it (``product_text.encoder_text``)."""
    from wb_pipeline.core.text.product_text import encoder_text

    frame = pd.DataFrame({"title_natural": titles, "description_natural": descriptions})
    return encoder_text(frame, "title_description", "natural", budget, tokenizer).tolist()


def build_encoders(threads: int) -> dict[str, object]:
    from wb_pipeline.core.embeddings.encoders.text import default_e5_encoder

    encoders = {}
    for engine in ("torch", "onnx", "onnx_int8"):
        encoders[engine] = default_e5_encoder(
            MODELS_DIR / "e5",
            engine=engine,
            num_threads=threads,
            onnx_cache_dir=MODELS_DIR / "onnx",
            **({"device": "cpu"} if engine == "torch" else {}),
        )
        encoders[engine].encode(["прогрев модели"] * 4)  # load / export once, outside the timings
    return encoders


def label_frame(sample: Path) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(product_text, labels, duplicate groups) of a WB-layout sample folder, as the pipeline builds them."""
    from upath import UPath

    from wb_pipeline.core.data import schema
    from wb_pipeline.core.data.characteristics import characteristics_table
    from wb_pipeline.core.data.cleaning import CleaningConfig, clean_products
    from wb_pipeline.core.data.ingestion import read_wb_table
    from wb_pipeline.core.labels.rules import derive_labels
    from wb_pipeline.core.labels.table import assemble_labels
    from wb_pipeline.core.models.classification import product_groups
    from wb_pipeline.core.text.preprocessing import TextPreprocessingConfig
    from wb_pipeline.core.text.product_text import build_product_text

    train = read_wb_table(UPath(sample) / schema.TRAIN_FILE, schema.TRAIN_REQUIRED_COLUMNS)
    test = read_wb_table(UPath(sample) / schema.TEST_FILE, schema.TEST_REQUIRED_COLUMNS)
    clean = clean_products({"train": train, "test": test}, None, CleaningConfig(require_image=False)).clean
    clean = clean.reset_index(drop=True)
    product_text = build_product_text(clean, TextPreprocessingConfig())
    in_train = clean["split"] == "train"
    chars = characteristics_table(clean.loc[in_train, "nm"], clean.loc[in_train, "characteristics"])
    labels = assemble_labels(clean, derive_labels(chars.long, clean.loc[in_train, "nm"]).labels)
    labels = clean[["nm"]].merge(labels, on="nm", how="left")
    return product_text, labels, product_groups(clean, None, "duplicates")


def macro_f1_per_label(vectors: np.ndarray, labels: pd.DataFrame, groups: np.ndarray) -> dict[str, float]:
    """Group-aware 5-fold macro-F1 of one fixed logistic regression per label (core.models.classification pieces)."""
    from sklearn.metrics import f1_score
    from threadpoolctl import threadpool_limits

    from wb_pipeline.core.model_selection.folds import group_stratified_folds
    from wb_pipeline.core.models.classification import (
        ClassificationConfig,
        LabelSkip,
        aligned_proba,
        fit_logistic,
        prepare_label,
    )

    config = ClassificationConfig()
    scores = {}
    for label in F1_LABELS:
        data = prepare_label(labels, label, {"text": vectors}, groups, config)
        if isinstance(data, LabelSkip):
            continue
        predicted = np.empty(len(data.y), dtype=object)
        with threadpool_limits(limits=config.blas_threads):
            for train, valid in group_stratified_folds(data.y, data.groups, config.n_splits, config.seed):
                model = fit_logistic(
                    [data.features["text"][train]], data.y[train], (1.0, "balanced", 1.0), config.max_iter
                )
                predicted[valid] = np.asarray(data.classes, dtype=object)[
                    aligned_proba(model, data.features["text"][valid], data.classes).argmax(axis=1)
                ]
        scores[label] = float(f1_score(data.y, predicted, labels=data.classes, average="macro", zero_division=0))
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="small sizes (CI)")
    parser.add_argument("--texts", type=int, default=None, help="long products timed (default 128, short 32)")
    parser.add_argument("--budgets", type=int, nargs="*", default=None, help="description token budgets")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per variant (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    n_texts = args.texts or (32 if args.short else 128)
    budgets = args.budgets if args.budgets is not None else ([] if args.short else [64, 96, 128, 256])
    reps = args.reps or (1 if args.short else 3)
    from wb_pipeline.defs.embeddings.assets import DEFAULT_DESCRIPTION_TOKEN_BUDGET

    default = ("onnx_int8", DEFAULT_DESCRIPTION_TOKEN_BUDGET)
    encoders = build_encoders(args.threads)
    tokenizer = encoders["onnx_int8"].budget_tokenizer
    variants = [REFERENCE, ("torch", DEFAULT_DESCRIPTION_TOKEN_BUDGET), ("onnx", None), ("onnx_int8", None)]
    variants += [(engine, b) for b in budgets for engine in ("onnx", "onnx_int8")]
    variants = list(dict.fromkeys(variants + [default]))

    # --- speed and closeness on long products --------------------------------------------------------
    titles, descriptions = long_products(n_texts)
    texts = {budget: joined(titles, descriptions, budget, tokenizer) for budget in {b for _, b in variants}}
    tokens = {b: float(np.mean([len(x) for x in encoders["onnx_int8"].tokenize(t)])) for b, t in texts.items()}
    seconds: dict[tuple, list[float]] = {v: [] for v in variants}
    vectors: dict[tuple, np.ndarray] = {}
    for _ in range(reps):
        for engine, budget in variants:
            started = time.perf_counter()
            vectors[(engine, budget)] = encoders[engine].encode(texts[budget], batch_size=args.batch_size)
            seconds[(engine, budget)].append(time.perf_counter() - started)
    reference_rate = n_texts / statistics.median(seconds[REFERENCE])

    # --- downstream quality on the bundled sample ---------------------------------------------------
    if args.short:
        from wb_pipeline.sample_data import SampleSpec, write_sample

        sample = BENCH_DIR / "out" / "text-fast-path-sample-400"
        if not (sample / "sample_manifest.json").is_file():
            write_sample(sample, SampleSpec(n_products=400, seed=3, with_images=False))
    else:
        from wb_pipeline.sample_data import ensure_sample

        ensure_sample(SAMPLE_DIR)
        sample = SAMPLE_DIR
    product_text, labels, groups = label_frame(sample)
    f1_variants = (
        [REFERENCE, default]
        if args.short
        else [REFERENCE, ("onnx_int8", None)]
        + [("onnx_int8", b) for b in budgets]
        + [("onnx", DEFAULT_DESCRIPTION_TOKEN_BUDGET)]
    )
    f1_variants = list(dict.fromkeys(f1_variants + [default]))
    from wb_pipeline.core.text.product_text import encoder_text

    f1: dict[tuple, dict[str, float]] = {}
    sample_tokens: dict[tuple, float] = {}
    for engine, budget in f1_variants:
        sample_texts = encoder_text(
            product_text, "title_description", "natural", budget, tokenizer if budget is not None else None
        ).tolist()
        f1[(engine, budget)] = macro_f1_per_label(
            encoders[engine].encode(sample_texts, batch_size=args.batch_size), labels, groups
        )
        sample_tokens[(engine, budget)] = float(np.mean([len(x) for x in encoders["onnx_int8"].tokenize(sample_texts)]))

    # --- tables ------------------------------------------------------------------------------------
    def name(variant: tuple) -> str:
        engine, budget = variant
        label = {"torch": "torch fp32", "onnx": "onnx fp32", "onnx_int8": "onnx int8"}[engine]
        return f"{label}, {'whole description' if budget is None else f'description ≤ {budget} tok'}" + (
            " (default)" if variant == default else " (reference)" if variant == REFERENCE else ""
        )

    rows = []
    for variant in variants:
        rate = n_texts / statistics.median(seconds[variant])
        cos = np.sum(vectors[variant] * vectors[REFERENCE], axis=1)
        rows.append(
            {
                "variant": name(variant),
                "tokens/text": round(tokens[variant[1]], 1),
                "texts/s": round(rate, 1),
                "speed-up": f"{rate / reference_rate:.2f}x",
                "min cos": round(float(cos.min()), 4),
                "mean cos": round(float(cos.mean()), 4),
            }
        )
    print(
        f"\nSpeed and closeness: {n_texts} generated products, title + ~{LONG_DESCRIPTION_WORDS}-word description, "
        f"{args.threads} threads, batch {args.batch_size}, median of {reps}; cosine vs the reference's vectors"
    )
    print(pd.DataFrame(rows).to_markdown(index=False))

    quality = []
    for variant in f1_variants:
        scores = f1[variant]
        quality.append(
            {
                "variant": name(variant),
                "tokens/text": round(sample_tokens[variant], 1),
                **{k: round(v, 3) for k, v in scores.items()},
                "mean macro-F1": round(float(np.mean(list(scores.values()))), 4),
            }
        )
    print(
        f"\nDownstream macro-F1 on {sample} ({len(labels)} products): logistic regression on the text "
        f"vectors, group-aware 5-fold"
    )
    print(pd.DataFrame(quality).to_markdown(index=False))
    reference_f1 = float(np.mean(list(f1[REFERENCE].values())))
    default_f1 = float(np.mean(list(f1[default].values())))
    worst = max(abs(f1[default][k] - f1[REFERENCE][k]) for k in f1[REFERENCE])
    print(
        f"\nmean macro-F1: fp32 reference {reference_f1:.4f}, fast default {default_f1:.4f}, "
        f"difference {default_f1 - reference_f1:+.4f} (largest per-label |difference| {worst:.4f})"
    )
    default_rate = n_texts / statistics.median(seconds[default])
    print(
        f"fast default: {default_rate:.1f} texts/s = {default_rate / reference_rate:.2f}x the fp32 reference "
        f"({reference_rate:.1f} texts/s) in this run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
