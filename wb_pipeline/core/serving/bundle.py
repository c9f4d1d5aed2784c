"""Everything one materialization serves, loaded once, answering one card at a time.

`ServingBundle.load` reads the storage dir the way the assets left it (the asset tables, the saved
classifiers and joint model, the index build, the duplicate groups); `predict` goes through THE
prediction path (`core.models.prediction.predict_products`) with the card's vectors encoded exactly
as `text_embeddings` / `image_embeddings` encode a product; `similar` searches the same index
(`core.search.query.Searcher`) and applies today's duplicate thresholds (`core.search.duplicates`).

A bundle is immutable once loaded: the service swaps a whole new bundle in when a newer
materialization is complete (`materialization_stamp`, `incomplete_reason`), so no request sees half of
one materialization and half of another.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from wb_pipeline.core.data import images, storage
from wb_pipeline.core.data.cleaning import CleaningConfig
from wb_pipeline.core.embeddings.vectors import EmbeddingTable, read_embedding_table
from wb_pipeline.core.models import contrastive, prediction
from wb_pipeline.core.models.fusion import BrandCounts, brand_counts
from wb_pipeline.core.search.duplicates import DuplicateConfig, new_product_matches
from wb_pipeline.core.search.query import Searcher
from wb_pipeline.core.search.spaces import product_vector, query_vector, uses_joint_model
from wb_pipeline.core.serving.cards import (
    CardError,
    ProductCard,
    card_characteristics,
    card_encoder_text,
    clean_card,
    decode_photo,
)
from wb_pipeline.core.text.product_text import TextInputs

# The asset files a served materialization is made of (their mtimes and sizes are its stamp).
SERVED_ASSETS = (
    "clean_products",
    "product_characteristics",
    "text_embeddings",
    "image_embeddings",
    "contrastive_model",
    "classification_report",
    "test_predictions",
    "product_index",
    "duplicate_groups",
)
CATALOGUE_COLUMNS = ["nm", "split", "title", "brand", "price"]


class NotServable(RuntimeError):
    """Nothing (complete) to serve under the storage dir; the message says what is missing."""


def materialization_stamp(layout: storage.StorageLayout) -> tuple:
    """(asset, mtime ns, size) of each served asset file and the classifiers' training manifest: cheap
    (a few `stat` calls), and it changes whenever a run rewrites any of them."""
    parts = []
    for path in [*(layout.asset_file(a) for a in SERVED_ASSETS), layout.classification_models / MANIFEST]:
        try:
            info = path.stat()
            parts.append((path.name, int(getattr(info, "st_mtime_ns", 0) or info.st_mtime * 1e9), info.st_size))
        except (OSError, AttributeError):
            parts.append((path.name, None, None))
    return tuple(parts)


MANIFEST = "training_manifest.json"


def incomplete_reason(layout: storage.StorageLayout, stamp: tuple) -> str | None:
    """Why the materialization of `stamp` cannot be served (None when it can): an asset is missing, or a
    run is between its steps — the classifiers newer than the predictions made with them, the joint
    model newer than the classifiers or the index (each step writes after the ones it reads)."""
    times = {name.removesuffix(".parquet"): mtime for name, mtime, _ in stamp}
    missing = [a for a in SERVED_ASSETS if times.get(a) is None]
    if missing:
        return (
            f"nothing complete is materialized under {layout.base_dir}: no {', '.join(missing)} "
            "(run `make run`, or materialize the classification and search groups)"
        )
    order = [
        ("contrastive_model", "classification_report"),
        ("classification_report", "test_predictions"),
        ("text_embeddings", "product_index"),
        ("image_embeddings", "duplicate_groups"),
    ]
    for earlier, later in order:
        if times[earlier] > times[later]:
            return f"a run is under way: {earlier} is newer than {later} (served once the run has written both)"
    return None


def _numpy_backed(frame: pd.DataFrame) -> pd.DataFrame:
    """The same values with text columns as numpy object arrays (not Arrow-backed strings)."""
    return frame.astype({c: object for c in frame.columns if pd.api.types.is_string_dtype(frame[c].dtype)})


def _file_time(path) -> str | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    except (OSError, AttributeError):
        return None


@dataclass
class ServingBundle:
    """One complete materialization, loaded (see the module docstring). Build with `load`."""

    layout: storage.StorageLayout
    stamp: tuple
    catalogue: pd.DataFrame  # clean products: nm, split, title, brand, price (the tabular features' source)
    characteristics: pd.DataFrame  # the long product_characteristics table
    report: pd.DataFrame
    label_models: dict
    joint_model: object
    searcher: Searcher
    text_vectors: EmbeddingTable  # the catalogue's encoder vectors (the duplicate rule's similarities)
    image_vectors: EmbeddingTable
    groups: pd.DataFrame  # duplicate_groups: nm, group_id, group_size
    text_encoder: object
    image_encoder: object
    text_inputs: TextInputs
    image_config: images.ImageConfig
    min_decode_side: int | None
    cleaning: CleaningConfig = CleaningConfig()
    duplicates: DuplicateConfig = DuplicateConfig()
    info: dict = field(default_factory=dict)
    rankings: dict = field(default_factory=dict)  # prediction.label_rankings: the models' order per label
    brands: BrandCounts | None = None  # the catalogue's brand counts (the tabular features' brand share)
    catalogue_rows: dict = field(default_factory=dict)  # nm -> row of `catalogue`
    _pool: ThreadPoolExecutor | None = None

    @classmethod
    def load(
        cls,
        layout: storage.StorageLayout,
        searcher: Searcher,
        text_encoder,
        image_encoder,
        text_inputs: TextInputs = TextInputs(),
        image_config: images.ImageConfig = images.ImageConfig(),
        draft_decode: bool = True,
        cleaning: CleaningConfig = CleaningConfig(),
        duplicates: DuplicateConfig = DuplicateConfig(),
        stamp: tuple | None = None,
    ) -> ServingBundle:
        """Read everything `predict` and `similar` need; NotServable when it is missing or incomplete.
        `searcher`: over the latest index build (`wb_pipeline.search.open_searcher`); the encoders: the
        code location's (`text_encoder` with the product prompt); `text_inputs`, `image_config`,
        `draft_decode`: how the embedding assets feed them."""
        stamp = materialization_stamp(layout) if stamp is None else stamp
        problem = incomplete_reason(layout, stamp)
        if problem:
            raise NotServable(problem)
        try:
            read = lambda asset, columns=None: storage.read_parquet(layout.asset_file(asset), columns)  # noqa: E731
            catalogue = read("clean_products")
            catalogue = catalogue[[c for c in CATALOGUE_COLUMNS if c in catalogue]].astype({"nm": str})
            report = read("classification_report")
            joint_folder = contrastive.model_folder(read("contrastive_model"))
            joint_model, joint_info = contrastive.load_joint_model(storage.as_upath(joint_folder))
            labels = list(report["label"].unique())
            label_models = prediction.load_saved_models(layout.classification_models, labels)
            bundle = cls(
                layout=layout,
                stamp=stamp,
                catalogue=catalogue.reset_index(drop=True),
                characteristics=read("product_characteristics"),
                report=report,
                label_models=label_models,
                joint_model=joint_model,
                searcher=searcher,
                text_vectors=read_embedding_table(layout.asset_file("text_embeddings")),
                image_vectors=read_embedding_table(layout.asset_file("image_embeddings")),
                groups=read("duplicate_groups", ["nm", "group_id", "group_size"]).astype({"nm": str}),
                text_encoder=text_encoder,
                image_encoder=image_encoder,
                text_inputs=text_inputs,
                image_config=image_config,
                min_decode_side=getattr(image_encoder, "min_decode_side", None) if draft_decode else None,
                cleaning=cleaning,
                duplicates=duplicates,
            )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise NotServable(f"the materialization under {layout.base_dir} cannot be loaded: {error}") from error
        bundle.image_vectors = bundle.image_vectors.subset(bundle.text_vectors.nm.tolist())
        # numpy-backed columns: per-request filtering of Arrow-backed strings costs ~10x more (measured)
        bundle.catalogue, bundle.report, bundle.groups = (
            _numpy_backed(bundle.catalogue),
            _numpy_backed(bundle.report),
            _numpy_backed(bundle.groups),
        )
        manifest_path = layout.classification_models / MANIFEST
        manifest_bytes = manifest_path.read_bytes() if manifest_path.exists() else b""
        index = searcher.build.manifest
        bundle.info = {
            "storage": str(layout.base_dir),
            "catalogue_products": len(catalogue),
            "labels": labels,
            "best_models": {label: str(report.loc[report["label"] == label, "best_model"].iloc[0]) for label in labels},
            "classifiers": {
                "fingerprint": hashlib.blake2b(manifest_bytes, digest_size=8).hexdigest(),
                "trained_at": _file_time(manifest_path),
                "batches": json.loads(manifest_bytes or b"{}").get("batches"),
            },
            "joint_model": {
                "fingerprint": storage.as_upath(joint_folder).name,
                "format": joint_info.get("format_version"),
            },
            "index": {
                "build_id": index.get("build_id"),
                "space": index.get("space"),
                "kind": index.get("kind"),
                "size": index.get("size"),
                "built_at": _file_time(storage.as_upath(searcher.build.folder) / "manifest.json"),
            },
            "encoders": {
                "text": getattr(text_encoder, "fingerprint", None),
                "image": getattr(image_encoder, "fingerprint", None),
                "index_text": (index.get("encoders") or {}).get("text"),
                "index_image": (index.get("encoders") or {}).get("image"),
            },
            "assets": {a: _file_time(layout.asset_file(a)) for a in SERVED_ASSETS},
        }
        bundle.rankings = prediction.label_rankings(bundle.report, bundle.label_models)
        bundle.brands = brand_counts(bundle.catalogue)
        bundle.catalogue_rows = {nm: i for i, nm in enumerate(bundle.catalogue["nm"])}
        bundle._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photo")
        return bundle

    # --- the card's vectors -------------------------------------------------------------------------

    def _image_vector(self, photo: bytes) -> np.ndarray:
        decoded = decode_photo(photo, self.image_config, self.min_decode_side)
        batch = self.image_encoder.preprocess(decoded)[None]
        return np.asarray(self.image_encoder.encode_preprocessed(batch), np.float32)

    def card_vectors(self, card: ProductCard) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(text vector [1, d] or None, image vector [1, d] or None) of the card, as the embedding
        assets compute them for a product; the photo is decoded and encoded in a second thread while
        the text is encoded."""
        pending = self._pool.submit(self._image_vector, card.photo) if card.photo else None
        try:
            text_vector = None
            if card.title is not None or card.description is not None:
                clean = clean_card(card, self.cleaning)
                text = card_encoder_text(clean, self.text_encoder, self.text_inputs)
                text_vector = np.asarray(self.text_encoder.encode([text]), np.float32)
        finally:
            image_vector = pending.result() if pending is not None else None
        return text_vector, image_vector

    # --- endpoints -------------------------------------------------------------------------------

    def predict(self, card: ProductCard) -> pd.DataFrame:
        """One row per label (`prediction.COLUMNS`) for the card, through `predict_products`: the
        report's best saved model per label (a card without a photo falls back, as a product without
        an image vector does). A card naming a catalogue product's `nm` replaces that product's row
        (an edit); any other card is one more catalogue product (the brand share counts it)."""
        text_vector, image_vector = self.card_vectors(card)
        return self.predict_vectors(card, text_vector, image_vector)

    def predict_vectors(self, card: ProductCard, text_vector, image_vector) -> pd.DataFrame:
        nm = np.array([card.nm], dtype=object)
        empty = np.zeros((0, 1), np.float32)
        text = EmbeddingTable(
            nm=nm if text_vector is not None else nm[:0], vectors=text_vector if text_vector is not None else empty
        )
        image = EmbeddingTable(
            nm=nm if image_vector is not None else nm[:0], vectors=image_vector if image_vector is not None else empty
        )
        row = pd.DataFrame(  # the tabular features' source: nm, brand, price
            {
                "nm": [card.nm],
                "split": ["card"],  # not "train": predict_products must not re-parse; parsed below
                "brand": pd.Series([card.brand], dtype=object),
                "price": pd.Series([card.price], dtype="float64"),
            }
        )
        # the catalogue with the card: its own row replaces a catalogue product it names (an edit)
        brands = self.brands.plus(row)
        edited = self.catalogue_rows.get(card.nm)
        if edited is not None:
            brands = brands.plus(self.catalogue.iloc[[edited]], sign=-1)
        return prediction.predict_products(
            pd.DataFrame({"nm": [card.nm]}),
            text,
            image,
            self.joint_model,
            self.label_models,
            self.report,
            row,
            card_characteristics(card),
            rankings=self.rankings,
            catalogue_brands=brands,
        )

    def similar(self, card: ProductCard, top: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(nearest catalogue products: nm, score, title; the catalogue products the card would be grouped
        with as a duplicate: nm, title, group_id, text_sim, image_sim, matched). The card's vector in the
        index's space is the one a catalogue product with its text and photo has; with one modality,
        that modality's query vector."""
        text_vector, image_vector = self.card_vectors(card)
        return self.similar_vectors(card, text_vector, image_vector, top)

    def similar_vectors(self, card: ProductCard, text_vector, image_vector, top: int = 10):
        searcher, space = self.searcher, self.searcher.space
        if text_vector is not None and image_vector is not None:
            vector = product_vector(
                space,
                text_vector,
                image_vector,
                searcher.joint_model if uses_joint_model(space) else None,
                lambda t, i: prediction.in_fixed_blocks(searcher.joint_model.product_vectors, t, i),
            )
        else:
            try:
                vector = query_vector(
                    space,
                    text_vector=text_vector,
                    image_vector=image_vector,
                    joint_model=searcher.joint_model,
                    **searcher._dims(),
                )
            except ValueError as error:  # QueryError: a modality the index's space cannot take
                raise CardError(str(error)) from None
        neighbours = searcher.top(vector, top + 1)
        neighbours = neighbours[neighbours["nm"].astype(str) != card.nm].head(top).reset_index(drop=True)
        return neighbours, self.duplicate_group(card, text_vector, image_vector)

    def duplicate_group(self, card: ProductCard, text_vector, image_vector) -> pd.DataFrame:
        """The catalogue products the card would share a duplicate group with under `self.duplicates`
        (the encoders' vectors; `new_product_matches`): the whole groups of the products it matches."""
        catalogue_nm = self.text_vectors.nm
        keep = catalogue_nm.astype(str) != card.nm
        k = self.duplicates.candidates
        sims = {}
        candidates = []
        for name, vector, table in (
            ("text", text_vector, self.text_vectors),
            ("image", image_vector, self.image_vectors),
        ):
            if vector is None:
                sims[name] = None
                continue
            scores = table.vectors @ np.asarray(vector, np.float32).ravel()
            scores[~keep] = -np.inf
            sims[name] = scores
            count = min(k, int(keep.sum()))
            if count:
                candidates.append(np.argpartition(-scores, count - 1)[:count])
        rows = np.unique(np.concatenate(candidates)) if candidates else np.zeros(0, np.int64)
        rows = rows[keep[rows]]
        text_sim = sims["text"][rows] if sims["text"] is not None else np.full(len(rows), -1.0, np.float32)
        image_sim = sims["image"][rows] if sims["image"] is not None else np.full(len(rows), -1.0, np.float32)
        matched = new_product_matches(text_sim, image_sim, self.duplicates)
        direct = pd.DataFrame(
            {
                "nm": catalogue_nm[rows[matched]].astype(str),
                "text_sim": text_sim[matched].astype(float),
                "image_sim": image_sim[matched].astype(float),
            }
        )
        if direct.empty:
            return pd.DataFrame(columns=["nm", "title", "group_id", "matched", "text_sim", "image_sim"])
        group_ids = set(self.groups.loc[self.groups["nm"].isin(set(direct["nm"])), "group_id"])
        members = self.groups.loc[self.groups["group_id"].isin(group_ids), ["nm", "group_id"]]
        members = members[members["nm"] != card.nm]
        titles = self.catalogue.set_index("nm")["title"]
        out = members.merge(direct, on="nm", how="left")
        out["matched"] = out["text_sim"].notna()
        out["title"] = out["nm"].map(titles)
        out = out.sort_values(["matched", "group_id", "nm"], ascending=[False, True, True])
        return out[["nm", "title", "group_id", "matched", "text_sim", "image_sim"]].reset_index(drop=True)
