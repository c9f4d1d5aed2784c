"""`python -m wb_pipeline.evaluate STORAGE_DIR [--name NAME]`: the quality table of a finished run.

`make eval RAW_DIR=/path/to/wb_layout_folder` runs the full graph into `storage/eval/<name>/` (its own
storage and Dagster instance, nothing mixed with the main run), then this command, which reads the
run's assets, cross-validates retrieval on its embeddings, prints one table per concern and writes
them beside the run as `quality.md` and `quality.json`. It fails only when an output is missing,
never on a score.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from wb_pipeline.cli_args import int_at_least
from wb_pipeline.core.data import cleaning, images, storage
from wb_pipeline.core.data.ingestion import one_line
from wb_pipeline.core.embeddings.vectors import read_embedding_table
from wb_pipeline.core.evaluation import report, training_seeds
from wb_pipeline.core.evaluation.retrieval import cross_validated_retrieval, summarise_retrieval
from wb_pipeline.core.models import clustering, contrastive

REQUIRED_ASSETS = (
    "text_embeddings",
    "image_embeddings",
    "joint_embeddings",
    "product_labels",
    "clean_products",
    "rejected_products",
    "image_index",
    "raw_products_train",
    "raw_products_test",
    "classification_report",
    "clustering_report",
    "contrastive_model",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wb_pipeline.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("storage_dir", help="the run's WB_PIPELINE_STORAGE_DIR")
    parser.add_argument("--name", default=None, help="title of the report (default: the folder name)")
    parser.add_argument(
        "--folds", type=int_at_least(2), default=5, help="group folds of the retrieval cross-validation"
    )
    parser.add_argument(
        "--cluster-seeds",
        type=int_at_least(0),
        default=5,
        help="UMAP/KMeans seeds of the equal-k clustering comparison (0 = skip it; each seed "
        "reduces every space once more)",
    )
    parser.add_argument(
        "--train-seeds",
        type=int_at_least(1),
        default=3,
        help="training seeds of the joint space in that comparison: the run's model and N - 1 "
        "retrained on all pairs with the run's config and another seed (1 = the run's only)",
    )
    args = parser.parse_args(argv)
    root = storage.as_upath(args.storage_dir)
    assets = storage.StorageLayout(args.storage_dir).assets
    missing = [name for name in REQUIRED_ASSETS if not (assets / f"{name}.parquet").exists()]
    if missing:
        print(f"evaluate: {assets} lacks {', '.join(missing)} — did the run finish?", file=sys.stderr)
        return 2
    read = lambda name: storage.read_parquet(assets / f"{name}.parquet")  # noqa: E731
    started = time.perf_counter()
    try:
        text = read_embedding_table(assets / "text_embeddings.parquet")
        image = read_embedding_table(assets / "image_embeddings.parquet").subset(text.nm)
        clean = read("clean_products")
        keys = contrastive.product_keys(text.nm, clean, read("image_index"))
        raw = [read("raw_products_train"), read("raw_products_test")]
    except (OSError, ValueError, KeyError) as error:  # ArrowInvalid is a ValueError; KeyError: a missing column
        print(f"evaluate: the run's assets under {assets} are not readable: {one_line(error)}", file=sys.stderr)
        return 2
    try:
        folds = cross_validated_retrieval(
            text.vectors, image.vectors, keys["title_key"].tolist(), keys["image_key"].tolist(), n_splits=args.folds
        )
    except ValueError as error:  # fewer duplicate groups than folds
        print(f"evaluate: --folds {args.folds}: {one_line(error)}", file=sys.stderr)
        return 2
    seeds = clustering_over_seeds(
        text,
        image,
        keys,
        read("joint_embeddings"),
        read("product_labels"),
        read("contrastive_model"),
        args.cluster_seeds,
        args.train_seeds,
    )
    n_input = sum(len(frame) for frame in raw)
    tables = report.quality_tables(
        read("classification_report"),
        summarise_retrieval(folds),
        read("clustering_report"),
        read("rejected_products"),
        n_input,
        seeds,
    )
    notes = {
        "storage": str(root),
        "input products": n_input,
        "clean products": len(clean),
        "paired products (text + image)": len(text),
        "retrieval folds": args.folds,
        "clustering seeds": args.cluster_seeds,
        "joint-space training seeds": max(1, args.train_seeds),
        **input_value_notes(raw, assets / "image_members.parquet"),
        "evaluation seconds": round(time.perf_counter() - started, 1),
    }
    title = f"Quality of the run on {args.name or root.name}"
    markdown = report.to_markdown(title, tables, notes)
    storage.atomic_write_bytes(root / "quality.md", markdown.encode("utf-8"))
    storage.atomic_write_bytes(root / "quality.json", report.to_json(tables, notes).encode("utf-8"))
    print(markdown)
    print(f"written: {root / 'quality.md'} and {root / 'quality.json'}")
    return 0


def input_value_notes(raw_tables: list, image_members_path) -> dict[str, str]:
    """What the run set to missing or never read, counted by reason: the input prices that are not usable
    numbers (`core.data.cleaning.checked_prices`) and the zip members that are not a plain `{nm}.jpg`
    (`core.data.images.member_name_rejection`, from the run's `image_members` table)."""
    prices = [cleaning.checked_prices(frame["price"])[1] for frame in raw_tables if "price" in frame.columns]
    price_reasons = pd.concat(prices).dropna() if prices else pd.Series(dtype=object)
    notes = {"input prices set to missing": _counted(price_reasons)}
    if image_members_path.exists():
        members = storage.read_parquet(image_members_path, columns=["member"])["member"]
        notes["zip members never read (not a plain {nm}.jpg)"] = _counted(
            members.map(images.member_name_rejection).dropna()
        )
    return notes


def _counted(reasons: pd.Series) -> str:
    """'0', or '3 (price_not_a_number 2, price_negative 1)'."""
    if not len(reasons):
        return "0"
    return f"{len(reasons)} ({', '.join(f'{reason} {n}' for reason, n in reasons.value_counts().items())})"


def clustering_over_seeds(
    text, image, keys, joint_embeddings, product_labels, contrastive_model, n_seeds: int, n_train_seeds: int
):
    """The run's four spaces re-clustered at equal k under seeds 0..n-1 (the run's own is seed 0), and the
    joint space retrained under `n_train_seeds` - 1 other training seeds with the run's saved config."""
    if n_seeds <= 0:
        return None
    spaces = clustering.clustering_spaces(text, image, joint_embeddings)
    targets = clustering.known_targets(product_labels, text.nm)
    model, info = contrastive.load_joint_model(storage.as_upath(contrastive.model_folder(contrastive_model)))
    config = contrastive.config_from_json(info["config"])
    others = [config.seed + i for i in range(1, max(1, n_train_seeds))]
    images = image.subset(text.nm)
    share = float(model.product_text_share) if model.has_product_space else None
    retrained = training_seeds.retrained_joint_vectors(
        text.vectors, images.vectors, keys["title_key"].tolist(), keys["image_key"].tolist(), config, others, share
    )
    return training_seeds.equal_k_over_training_seeds(
        spaces, config.seed, retrained, targets, clustering.CLUSTERING_RECIPES, range(n_seeds)
    )


if __name__ == "__main__":
    raise SystemExit(main())
