"""The one way to predict labels for products: `predict_products` (no dagster import).

`test_predictions`, `drop_predictions` and any other caller (a service answering one product at a
time) go through it, so the features a saved model reads are assembled in one place:

- text and image vectors from the embedding tables (the encoders' cached vectors);
- the joint (combined) vector projected by the SAVED joint model from those two, where both exist —
  the same projection and concatenation the `joint_embeddings` asset applies;
- the tabular columns of the late-fusion meta-model (`core.models.fusion.tabular_features`: price, brand
  share of the catalogue, number of characteristics), with the characteristics of train products that
  the `product_characteristics` table does not hold yet parsed by the same parser.

Per label the model is the report's best by held-out macro-F1 (or one chosen model). A product that
lacks a vector that model reads (e.g. no image vector, hence no joint vector either) is predicted by
the next-best saved model whose inputs it has, and the row says so; when no saved model fits, or the
product never got past cleaning, the row has no prediction and a reason. So every product has one row
per label, never a silent gap.

A product's vector and probabilities are bit-identical whether it is predicted alone (a service's card,
whatever its BLAS setting), in a drop or with the whole test split: the joint projection runs on blocks
of exactly `BLOCK_ROWS` rows (the last block padded with zeros: BLAS picks its kernel by the number of
rows), the label models' regressions multiply each row on its own (`logistic_proba_by_row`: a row of a
BLAS matrix product also changes with its position in the block), and everything on one BLAS thread
(more threads split the sums differently).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController
from upath import UPath

from wb_pipeline.core.data.characteristics import characteristics_table
from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.models import contrastive
from wb_pipeline.core.models.classification import (
    ALL_MODELS,
    MODEL_BLOCKS,
    UNIMODAL_MODELS,
    LabelModels,
    load_label_models,
)
from wb_pipeline.core.models.classification.stacking import _tabular_block
from wb_pipeline.core.models.fusion import BrandCounts, tabular_features

COLUMNS = ["nm", "label", "predicted", "probability", "model", "status", "reason"]
PREDICTED, FALLBACK, NOT_PREDICTED, REJECTED = "predicted", "fallback", "not_predicted", "rejected"
BLOCK_ROWS = 64


@functools.cache
def _blas_libraries():
    """The process's BLAS libraries (threadpoolctl), found once."""
    return ThreadpoolController().select(user_api="blas")


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block: its kernels split a product's sums differently with more
    threads (measured: a 64-row block's probabilities changed in the last bits between 1 and 2 threads),
    so the prediction path fixes the count, as it fixes the rows of a block. Cheap when already one."""
    libraries = _blas_libraries()
    if all(library.num_threads == 1 for library in libraries.lib_controllers):
        yield
        return
    with libraries.limit(limits=1):
        yield


def in_fixed_blocks(compute: Callable[..., np.ndarray], *row_arrays: np.ndarray, pad: bool = True) -> np.ndarray:
    """`compute(*blocks)` over blocks of exactly `BLOCK_ROWS` rows of the row-aligned `row_arrays`
    (the last block zero-padded, the padding's output dropped), concatenated, on one BLAS thread. A
    row's result then depends neither on how many other rows it came with nor on the caller's threads.
    `pad=False` leaves the last block short: for a `compute` whose rows are independent by construction
    (each row its own vector-matrix product, as the label models predict), where padding only costs."""
    n = len(row_arrays[0])
    parts = []
    with one_blas_thread():
        for start in range(0, n, BLOCK_ROWS):
            blocks = []
            for array in row_arrays:
                block = np.asarray(array[start : start + BLOCK_ROWS])
                if pad and len(block) < BLOCK_ROWS:
                    padded = np.zeros((BLOCK_ROWS, *block.shape[1:]), dtype=block.dtype)
                    if block.dtype == object:
                        padded[:] = ""
                    padded[: len(block)] = block
                    block = padded
                blocks.append(block)
            parts.append(np.asarray(compute(*blocks))[: min(BLOCK_ROWS, n - start)])
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def joint_embedding_rows(joint_model, nm: Sequence[str], text_vectors: np.ndarray, image_vectors: np.ndarray):
    """(the `joint_embeddings` rows of these products, each one's own-pair cosine), projected by the
    saved joint model in fixed blocks: a product's row is the same whether its shard or the whole
    catalogue is projected."""
    dim = joint_model.output_dim  # of each head's vector; the product vector follows them

    def project(text_block: np.ndarray, image_block: np.ndarray) -> np.ndarray:
        return np.hstack(
            [
                joint_model.project_text(text_block),
                joint_model.project_image(image_block),
                joint_model.product_vectors(text_block, image_block),
            ]
        )

    if len(nm) == 0:
        stacked = np.zeros((0, 2 * dim + joint_model.product_dim), np.float32)
    else:
        stacked = in_fixed_blocks(project, np.asarray(text_vectors), np.asarray(image_vectors))
    text_joint, image_joint = stacked[:, :dim], stacked[:, dim : 2 * dim]
    frame = contrastive.joint_embedding_frame(nm, text_joint, image_joint, stacked[:, 2 * dim :])
    return frame, (text_joint * image_joint).sum(axis=1)


def product_features(
    nm: Sequence[str], text: EmbeddingTable, image: EmbeddingTable, joint_model=None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(block -> matrix, block -> has-it mask), row-aligned with `nm`: the cached text and image
    vectors, and the joint (combined) vector projected by the SAVED joint model where both exist.
    Rows without a vector are zeros and masked out."""
    nm = [str(x) for x in nm]
    features, available = {}, {}
    for block, table in (("text", text), ("image", image)):
        position = table.positions(nm)
        has = position >= 0
        matrix = np.zeros((len(nm), table.dim if len(table) else 0), np.float32)
        matrix[has] = table.vectors[position[has]]
        features[block], available[block] = matrix, has
    if joint_model is not None:
        both = available["text"] & available["image"]
        joint = None
        if both.any():
            joint = in_fixed_blocks(joint_model.product_vectors, features["text"][both], features["image"][both])
        matrix = np.zeros((len(nm), 0 if joint is None else joint.shape[1]), np.float32)
        if joint is not None:
            matrix[both] = joint
        features["joint"], available["joint"] = matrix, both
    return features, available


def model_inputs(models: LabelModels, model: str) -> frozenset[str]:
    """The vector blocks (text, image, joint) a saved model reads."""
    if model in models.base:
        return frozenset(MODEL_BLOCKS[model])
    if model == "mean_probability":
        return frozenset(b for m in UNIMODAL_MODELS for b in MODEL_BLOCKS[m])
    if model == "late_fusion":
        return frozenset(b for m in models.fusion_inputs for b in MODEL_BLOCKS[m])
    raise ValueError(f"{models.label}: unknown model {model!r}")


def usable_models(models: LabelModels) -> list[str]:
    return [
        m
        for m in ALL_MODELS
        if m in models.base or m == "mean_probability" or (m == "late_fusion" and models.late_fusion is not None)
    ]


def model_ranking(report: pd.DataFrame, label: str, models: LabelModels, chosen: str = "best") -> list[str]:
    """The chosen model (the report's best when `chosen="best"`) then the other saved models by
    held-out macro-F1: the order in which a product missing a modality falls back."""
    own = report[report["label"] == label]
    if own.empty:
        raise ValueError(f"predictions: label {label!r} is not in the classification report")
    first = str(own["best_model"].iloc[0]) if chosen == "best" else chosen
    usable = usable_models(models)
    if first not in usable:
        raise ValueError(f"predictions: model {first!r} of label {label!r} is not saved (saved: {usable})")
    ranked = own[own["model"].isin(usable)].sort_values("macro_f1", ascending=False)["model"].tolist()
    return [
        first,
        *[m for m in dict.fromkeys(ranked) if m != first],
        *[m for m in usable if m not in ranked and m != first],
    ]


def label_rankings(
    report: pd.DataFrame, label_models: Mapping[str, LabelModels], chosen: str = "best"
) -> dict[str, list[str]]:
    """`model_ranking` of every label: what `predict_with_features` reads per label. A caller predicting
    many times with the same models (a service) computes it once and passes it in."""
    return {label: model_ranking(report, label, models, chosen) for label, models in label_models.items()}


def load_saved_models(models_root: UPath, labels: Sequence[str]) -> dict[str, LabelModels]:
    """The saved final models of each label, from `<models_root>/<label>/` (loaded without unpickling).
    `models_root` is the classification models folder (`StorageLayout.classification_models`)."""
    return {label: load_label_models(models_root / label, label) for label in labels}


def _predict_label(
    models: LabelModels,
    model: str,
    features: Mapping[str, np.ndarray],
    tabular: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class [n], its probability [n]) of `model` for row-aligned features and tabular rows."""
    blocks = sorted(features)
    rows = [features[b] for b in blocks]
    if model == "late_fusion" and models.reads_tabular and tabular is not None:
        rows += list(tabular)

    def proba(*matrices):
        block_tabular = (matrices[len(blocks)], matrices[len(blocks) + 1]) if len(matrices) > len(blocks) else None
        return models.predict_proba(model, dict(zip(blocks, matrices[: len(blocks)])), block_tabular)

    # the regressions multiply row by row (`logistic_proba_by_row`), the rest is per row: no padding needed
    probabilities = in_fixed_blocks(proba, *rows, pad=False)
    best = np.argmax(probabilities, axis=1)
    return np.asarray(models.classes, dtype=object)[best], probabilities[np.arange(len(best)), best]


def predict_with_features(
    products: pd.DataFrame,
    features: Mapping[str, np.ndarray],
    available: Mapping[str, np.ndarray],
    label_models: Mapping[str, LabelModels],
    report: pd.DataFrame,
    tabular: pd.DataFrame | None,
    rejected: pd.DataFrame | None = None,
    chosen: str = "best",
    rankings: Mapping[str, list[str]] | None = None,
) -> pd.DataFrame:
    """One row per (product, label): `COLUMNS`, from features already assembled (`predict_products`
    assembles them; call this one only with `product_features`' output).

    `products`: nm of every product (clean or not), in order; `features`: block -> matrix row-aligned
    with `products` (rows of products without that block are ignored); `available`: block -> bool mask,
    row-aligned; `rejected`: nm, reason, detail of the products that cleaning rejected (their rows say
    why and carry no prediction); `rankings`: `label_rankings(report, label_models, chosen)` when
    already computed."""
    nm = products["nm"].astype(str).to_numpy(dtype=object)
    n = len(nm)
    for block, mask in available.items():
        if len(mask) != n:
            raise ValueError(f"predictions: mask of {block} has {len(mask)} rows for {n} products")
    why_rejected = {}
    if rejected is not None and len(rejected):
        for row in rejected.drop_duplicates("nm").itertuples():
            why_rejected[str(row.nm)] = f"rejected at cleaning: {row.reason}" + (
                f" ({row.detail})" if isinstance(row.detail, str) and row.detail else ""
            )
    blocks = sorted(available)
    pattern = np.array(["|".join(b for b in blocks if available[b][i]) for i in range(n)], dtype=object)
    is_rejected = np.array([x in why_rejected for x in nm], bool)
    # the tabular rows of the products, aligned once (each model reads them row by row)
    aligned = _tabular_block(tabular, nm) if tabular is not None else None
    columns = {name: [] for name in COLUMNS}

    def add(rows, label, predicted, probability, model, status, reason) -> None:
        count = len(rows)
        for name, value in (
            ("nm", nm[rows]),
            ("label", [label] * count),
            ("predicted", predicted if isinstance(predicted, np.ndarray) else [predicted] * count),
            ("probability", probability if isinstance(probability, np.ndarray) else [probability] * count),
            ("model", [model] * count),
            ("status", [status] * count),
            ("reason", reason if isinstance(reason, list) else [reason] * count),
        ):
            columns[name].append(value)

    groups = [(key, np.flatnonzero((pattern == key) & ~is_rejected)) for key in pd.unique(pattern[~is_rejected])]
    for label, models in label_models.items():
        ranking = rankings[label] if rankings is not None else model_ranking(report, label, models, chosen)
        first, first_needs = ranking[0], model_inputs(models, ranking[0])
        if is_rejected.any():
            rows = np.flatnonzero(is_rejected)
            add(rows, label, None, np.nan, None, REJECTED, [why_rejected[x] for x in nm[rows]])
        for key, rows in groups:
            have = frozenset(key.split("|")) if key else frozenset()
            model = next((m for m in ranking if model_inputs(models, m) <= have), None)
            missing = ", ".join(sorted(first_needs - have))
            if model is None:
                reason = (
                    f"no {missing or 'input'} vector, and no saved model of {label} works without it "
                    f"(saved: {', '.join(ranking)})"
                )
                add(rows, label, None, np.nan, None, NOT_PREDICTED, reason)
                continue
            part_features = {b: np.asarray(features[b])[rows] for b in have}
            part_tabular = None if aligned is None else (aligned[0][rows], aligned[1][rows])
            predicted, probability = _predict_label(models, model, part_features, part_tabular)
            if model == first:
                add(rows, label, predicted, probability, model, PREDICTED, "")
            else:
                reason = (
                    f"no {missing} vector: the chosen model {first} reads "
                    f"{', '.join(sorted(first_needs))}; predicted by {model} instead"
                )
                add(rows, label, predicted, probability, model, FALLBACK, reason)
    if not columns["nm"]:
        return pd.DataFrame(columns=COLUMNS)
    merged = {name: np.concatenate([np.asarray(p, dtype=object) for p in parts]) for name, parts in columns.items()}
    merged["probability"] = merged["probability"].astype(np.float64)
    # by product (in `products` order), then label; stable, so equal keys keep the order they were added in
    order = {x: i for i, x in enumerate(nm)}
    by = np.lexsort((merged["label"], np.fromiter((order[x] for x in merged["nm"]), np.int64, len(merged["nm"]))))
    # text columns holding a None (no prediction) stay object columns, the others are inferred (str)
    return pd.DataFrame(
        {
            name: pd.Series(values[by], dtype=object) if any(v is None for v in values) else values[by]
            for name, values in merged.items()
        }
    )


def with_unparsed_characteristics(
    products: pd.DataFrame, catalogue: pd.DataFrame, characteristics: pd.DataFrame | None
) -> pd.DataFrame | None:
    """`characteristics` plus the parsed characteristics of the train products of `products` it does
    not hold yet (a drop the labels group has not seen): the same parser as `product_characteristics`,
    which parses train products only."""
    if "characteristics" not in catalogue:
        return characteristics
    nm = set(products["nm"].astype(str))
    own = catalogue[catalogue["nm"].astype(str).isin(nm)]
    if "split" in own:
        own = own[own["split"] == "train"]
    if characteristics is not None and len(characteristics):
        own = own[~own["nm"].astype(str).isin(set(characteristics["nm"].astype(str)))]
    if own.empty:
        return characteristics
    parsed = characteristics_table(own["nm"], own["characteristics"]).long
    return parsed if characteristics is None else pd.concat([characteristics, parsed], ignore_index=True)


def predict_products(
    products: pd.DataFrame,
    text: EmbeddingTable,
    image: EmbeddingTable,
    joint_model,
    label_models: Mapping[str, LabelModels],
    report: pd.DataFrame,
    catalogue: pd.DataFrame,
    characteristics: pd.DataFrame | None,
    clean_nm: set[str] | None = None,
    rejected: pd.DataFrame | None = None,
    chosen: str = "best",
    rankings: Mapping[str, list[str]] | None = None,
    catalogue_brands: BrandCounts | None = None,
) -> pd.DataFrame:
    """THE prediction path: for every product of `products` (column `nm`, in order) and every label of
    `label_models` (`load_saved_models`), the predicted class and its probability (`COLUMNS`).

    `text` / `image`: the embedding tables; `joint_model`: the saved joint model (`core.models.contrastive.
    load_joint_model`; None = no joint block, so only models without it can predict); `report`: the
    `classification_report` table (the best model per label, the fallback order); `catalogue`: the
    clean products (nm, split, brand, price, characteristics: the tabular features' source, the
    brand share is over all of it); `characteristics`: the long `product_characteristics` table;
    `clean_nm`: the products allowed to use their vectors (None = all) — a product outside it never
    reads a vector (its nm may have one from another batch); `rejected`: nm, reason, detail of the
    products that cleaning rejected; `chosen`: "best" or one model for every label; `rankings`: the
    models' order per label when the caller computed it once (`label_rankings`); `catalogue_brands`: the
    whole catalogue's `fusion.brand_counts` when `catalogue` holds only the products to predict (a service
    scoring one card against a large catalogue)."""
    products = pd.DataFrame({"nm": products["nm"].astype(str).reset_index(drop=True)})
    with one_blas_thread():
        features, available = product_features(products["nm"], text, image, joint_model)
        if clean_nm is not None:
            is_clean = products["nm"].isin(set(map(str, clean_nm))).to_numpy()
            available = {block: mask & is_clean for block, mask in available.items()}
        characteristics = with_unparsed_characteristics(products, catalogue, characteristics)
        tabular = tabular_features(products["nm"], catalogue, characteristics, catalogue_brands)
        return predict_with_features(
            products, features, available, label_models, report, tabular, rejected, chosen, rankings
        )
