"""Group `search`: a nearest-neighbour index over the product vectors, similar products, duplicate
groups and the duplicate-detection report.

`product_index`'s value is the index's product table (`nm`, `position`, `vector_hash`, `title`)
with the build folder (faiss index + products + manifest, under `<storage>/search/index/`) in its
`index_folder` column: what `python -m wb_pipeline.search` reads.
"""

import dataclasses
import json
import time

import dagster as dg
import numpy as np
import pandas as pd
import psutil

from wb_pipeline.core.data import images, schema, storage
from wb_pipeline.core.data.ingestion import SchemaError, read_wb_table
from wb_pipeline.core.embeddings.vectors import EmbeddingTable, stored_dim
from wb_pipeline.core.evaluation.figures import png_markdown
from wb_pipeline.core.model_selection import folds
from wb_pipeline.core.models import contrastive
from wb_pipeline.core.models.clustering import ClusteringConfig
from wb_pipeline.core.search import duplicates as dup
from wb_pipeline.core.search import report, variants
from wb_pipeline.core.search.contact_sheet import contact_sheet_png
from wb_pipeline.core.search.index import IndexConfig, iter_neighbours, neighbour_count
from wb_pipeline.core.search.spaces import (
    AUTO_SPACE,
    SPACES,
    choose_index_space,
    space_vectors,
    stored_space_vectors,
    uses_joint_model,
)
from wb_pipeline.core.search.store import load_build, update_index
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.resources import WBRawData, WBStorage

ProductIndexSettings = config_class(IndexConfig, "ProductIndexSettings", defaults={"space": AUTO_SPACE})
DuplicateSettings = config_class(dup.DuplicateConfig, "DuplicateSettings")
BLOCK_PRODUCTS = 16_384  # products searched and written at a time by `similar_products`
SAMPLE_MANIFEST_FILE = "sample_manifest.json"  # wb_pipeline.sample_data's ground truth, when the raw dir is a sample


def latest_metadata(context: dg.AssetExecutionContext, asset_name: str) -> dict:
    """The metadata values of the latest materialization of `asset_name` ({} if none)."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset_name))
    materialization = event.asset_materialization if event is not None else None
    return {k: v.value for k, v in materialization.metadata.items()} if materialization is not None else {}


def index_folder(product_index: pd.DataFrame) -> str:
    """The build folder recorded in the `product_index` table."""
    folders = product_index["index_folder"].dropna().unique() if "index_folder" in product_index else []
    if len(folders) != 1:
        raise ValueError(f"product_index: expected one index folder in its table, found {list(folders)}")
    return str(folders[0])


def by_nm(frame: pd.DataFrame, nm: np.ndarray) -> pd.DataFrame:
    """The rows of `frame` (first per nm) in the order of `nm` (all-missing rows where absent)."""
    unique = frame.drop_duplicates("nm")
    unique = unique.set_axis(pd.Index(unique["nm"].astype(str).to_numpy()), axis=0)
    return unique.reindex(pd.Index(np.asarray(nm, dtype=object).astype(str)))


def titles_for(nm: np.ndarray, clean_products: pd.DataFrame) -> np.ndarray:
    return by_nm(clean_products[["nm", "title"]], nm)["title"].to_numpy(dtype=object)


def _rss_mib() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


# After product_clusters (an ordering edge, not an input): an "auto" index reads its latest equal-k evidence.
# The vector tables are deps, read from storage: only the chosen space's columns are loaded.
@dg.asset(
    group_name="search",
    kinds={"faiss", "parquet"},
    code_version="3",
    deps=["product_clusters", "joint_embeddings", "text_embeddings", "image_embeddings", "clean_products"],
)
def product_index(
    context: dg.AssetExecutionContext,
    contrastive_model: pd.DataFrame,
    pipeline_storage: WBStorage,
    config: ProductIndexSettings,
) -> dg.MaterializeResult:
    """A faiss nearest-neighbour index over one space (`space`: "auto" by default = the joint space, or
    the early concatenation where the clustering report shows it recovers the known classes better at
    equal k (`product_clusters` metadata; metadata `space_reason` says why); or pinned: joint combined,
    joint text / image, text, image or early concatenation), exact below `exact_below` products,
    HNSW above while it fits `memory_budget_mib`, an inverted file of compressed codes beyond (trained
    on a seeded sample of `train_sample` vectors), saved in faiss's own format under
    `<storage>/search/index/<build id>/` with the products' `nm` order and a manifest beside it. A drop
    of new products is added to the previous build when every indexed product kept its vector (else
    rebuilt; metadata says which and why).
    Metadata: size, build seconds, recall@10 of the ANN vs exact search on sampled queries, memory."""
    core_config = to_core(IndexConfig, config)
    space_reason = "pinned by config"
    if core_config.space == AUTO_SPACE:
        clusters_meta = latest_metadata(context, "product_clusters")
        space, space_reason = choose_index_space(
            dict(clusters_meta.get("space_mean_equal_k_ami") or {}), ClusteringConfig().space_choice_margin
        )
        core_config = dataclasses.replace(core_config, space=space)
    layout = pipeline_storage.layout
    text_path, image_path = layout.asset_file("text_embeddings"), layout.asset_file("image_embeddings")
    rss_before = _rss_mib()
    nm, vectors = stored_space_vectors(core_config.space, text_path, image_path, layout.asset_file("joint_embeddings"))
    previous = latest_metadata(context, "product_index").get("index_folder")
    text_meta, image_meta = latest_metadata(context, "text_embeddings"), latest_metadata(context, "image_embeddings")
    image_fingerprint = str(image_meta.get("encoder_fingerprint", "unknown"))
    info = {
        "joint_model": contrastive.model_folder(contrastive_model) if uses_joint_model(core_config.space) else None,
        "encoders": {"text": str(text_meta.get("encoder_fingerprint", "unknown")), "image": image_fingerprint},
        "encoder_dims": {"text": stored_dim(text_path), "image": stored_dim(image_path)},
        "image_decode": {
            "channel_order": str(image_meta.get("channel_order", "RGB")),
            "draft": "-draft" in image_fingerprint,
        },
    }
    titles = storage.read_rows_where(layout.asset_file("clean_products"), "nm", nm, ["nm", "title"])
    build, stats = update_index(
        pipeline_storage.layout.search_index,
        previous,
        nm,
        vectors,
        titles_for(nm, titles),
        core_config,
        info,
        log=context.log.warning,
    )
    value = build.products.assign(
        position=np.arange(len(build.products), dtype=np.int64), index_folder=str(build.folder)
    )
    recall_key = f"recall_at_{core_config.recall_k}"
    return dg.MaterializeResult(
        value=value[["nm", "position", "vector_hash", "title", "index_folder"]],
        metadata={
            "dagster/row_count": len(value),
            "size": build.index.size,
            "space": core_config.space,
            "space_reason": space_reason,
            "kind": build.index.kind,
            "dim": build.index.dim,
            "library": f"{build.manifest['library']} {build.manifest['library_version']}",
            "build_mode": stats.mode,
            "build_reason": stats.reason,
            "added": stats.added,
            "build_seconds": round(stats.seconds, 3),
            recall_key: None if np.isnan(stats.recall_at_k) else round(stats.recall_at_k, 4),
            "recall_queries": min(core_config.recall_queries, build.index.size) if build.index.kind != "exact" else 0,
            "recall_seconds": round(stats.recall_seconds, 3),
            "index_mib": round(build.index.memory_bytes() / 2**20, 2),
            "process_rss_mib": _rss_mib(),
            "process_rss_before_mib": rss_before,
            "hnsw": dg.MetadataValue.json(
                {
                    "M": core_config.hnsw_m,
                    "ef_construction": core_config.ef_construction,
                    "ef_search": core_config.ef_search,
                }
            ),
            "memory_budget_mib": core_config.memory_budget_mib,
            "ivf": dg.MetadataValue.json(
                {key: build.manifest["params"].get(key) for key in ("ivf_codes", "ivf_lists")}
                | {"nprobe": core_config.nprobe}
                if build.index.kind == "ivf"
                else {}
            ),
            "index_folder": dg.MetadataValue.path(str(build.folder)),
            "joint_model": info["joint_model"] or "-",
        },
    )


class SimilarProductsSettings(dg.Config):
    """`k` neighbours per product (itself excluded); `threads` for faiss's batch search."""

    k: int = 10
    threads: int = 2


@dg.asset(group_name="search", kinds={"faiss", "parquet"}, code_version="2")
def similar_products(
    product_index: pd.DataFrame, pipeline_storage: WBStorage, config: SimilarProductsSettings
) -> dg.MaterializeResult:
    """Top-k neighbours of every product in the index's space: `nm`, `neighbour_nm`, `rank` (1 =
    most similar), `similarity` (cosine); the product itself is never its own neighbour. Searched
    `BLOCK_PRODUCTS` products at a time and written block by block: memory follows the index and a
    block, not the catalogue times k."""
    if config.k < 1:
        raise ValueError(f"similar_products: k must be >= 1, got {config.k}")
    build = load_build(index_folder(product_index))
    nm = build.products["nm"].to_numpy(dtype=object)
    k = neighbour_count(build.index, config.k)
    first_and_last = np.zeros(2)
    preview: list[pd.DataFrame] = []

    def blocks():
        for rows, sims, positions in iter_neighbours(build.index, config.k, config.threads, BLOCK_PRODUCTS):
            keep = (positions >= 0).ravel()
            frame = pd.DataFrame(
                {
                    "nm": np.repeat(nm[rows], k)[keep],
                    "neighbour_nm": nm[np.where(positions >= 0, positions, 0).ravel()][keep],
                    "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), len(rows))[keep],
                    "similarity": sims.ravel()[keep].astype(np.float32),
                }
            )
            if k:
                first_and_last[:] += sims[:, 0].sum(), sims[:, -1].sum()
            if not preview:
                preview.append(frame.head(3 * k))
            yield frame

    started = time.perf_counter()
    rows = storage.write_parquet_stream(blocks(), pipeline_storage.layout.asset_file("similar_products"))
    seconds = time.perf_counter() - started
    titles = dict(zip(build.products["nm"], build.products["title"]))
    shown = preview[0].assign(
        title=lambda f: f["nm"].map(titles), neighbour_title=lambda f: f["neighbour_nm"].map(titles)
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "k": k,
            "space": build.manifest["space"],
            "products": len(nm),
            "seconds": round(seconds, 3),
            "mean_similarity_rank_1": float(first_and_last[0] / len(nm)) if k else None,
            f"mean_similarity_rank_{k}": float(first_and_last[1] / len(nm)) if k else None,
            "preview": metadata.table(shown.round({"similarity": 4})),
        },
    )


def modality_vectors(
    source: str, text_embeddings: EmbeddingTable, image_embeddings: EmbeddingTable, joint_embeddings: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nm, text vectors, image vectors) row-aligned with `text_embeddings`: the encoders' own
    vectors (`encoders`) or their joint-space projections (`joint`)."""
    nm = np.asarray(text_embeddings.nm, dtype=object)
    if source == "encoders":
        return nm, text_embeddings.vectors, image_embeddings.subset(nm).vectors
    _, text_joint = space_vectors("joint_text", text_embeddings, image_embeddings, joint_embeddings)
    _, image_joint = space_vectors("joint_image", text_embeddings, image_embeddings, joint_embeddings)
    return nm, text_joint, image_joint


def group_photos(
    groups: list[int], frame: pd.DataFrame, image_index: pd.DataFrame, raw_data: WBRawData, per_group: int = 6
) -> list[tuple[str, list]]:
    """(label, photos) per shown group, read from the raw zips (an unreadable photo: None)."""
    members = image_index.drop_duplicates("nm").set_index("nm")[["batch", "member"]]
    rows = []
    wanted = frame.loc[frame["group_id"].isin(groups)].groupby("group_id")["nm"].apply(list)
    by_batch: dict[str, list[str]] = {}
    for nms in wanted:
        for nm in nms[:per_group]:
            if nm in members.index:
                by_batch.setdefault(str(members.at[nm, "batch"]), []).append(nm)
    photos: dict[str, object] = {}
    for batch, nms in by_batch.items():
        with (raw_data.folder(batch) / schema.IMAGES_ZIP).open("rb") as handle, images.open_zip(handle) as zf:
            for nm in nms:
                try:
                    data = images.read_member(zf, str(members.at[nm, "member"]), 64 * 1024 * 1024)
                    photos[nm] = images.decode_image(data, images.ImageConfig(), min_side=96)
                except (images.ImageDecodeError, KeyError, OSError):
                    photos[nm] = None
    for group in groups:
        nms = wanted.get(group, [])
        rows.append((f"group {group}\n{len(nms)} products", [photos.get(nm) for nm in nms[:per_group]]))
    return rows


@dg.asset(group_name="search", kinds={"faiss", "parquet"}, code_version="1")
def duplicate_groups(
    context: dg.AssetExecutionContext,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
    joint_embeddings: pd.DataFrame,
    clean_products: pd.DataFrame,
    image_index: pd.DataFrame,
    raw_data: WBRawData,
    config: DuplicateSettings,
) -> dg.MaterializeResult:
    """Products that are the same item: each product's nearest neighbours by text and by image are
    candidates; a pair matches when its text OR image cosine reaches that modality's threshold (a
    text shared by more than `max_title_products` products is generic and matches nothing); a
    product left without a match keeps its best candidate when both cosines reach the floors
    (Shopee-style); the connected components of the matches are the groups. One row per product:
    `nm`, `group_id`, `group_size` (1 = no duplicate found). Metadata: group sizes, a sample of
    groups with titles and a contact sheet of their photos."""
    core_config = to_core(dup.DuplicateConfig, config)
    nm, text_vectors, image_vectors = modality_vectors(
        core_config.vectors, text_embeddings, image_embeddings, joint_embeddings
    )
    started = time.perf_counter()
    pairs = dup.candidate_pairs(text_vectors, image_vectors, core_config.candidates, core_config.index_config())
    groups, edges = dup.group_products(pairs, len(nm), core_config)
    seconds = time.perf_counter() - started
    frame = dup.groups_frame(nm, groups)
    strong = dup.match_edges(
        pairs,
        len(nm),
        core_config.text_threshold,
        core_config.image_threshold,
        max_title_products=core_config.max_title_products,
    )
    generic = dup.generic_text(pairs, len(nm), core_config.text_threshold, core_config.max_title_products)
    shown_groups = dup.sample_groups(frame, core_config.sample_groups, core_config.seed)
    titles = titles_for(nm, clean_products)
    sample = frame.assign(title=titles).loc[frame["group_id"].isin(shown_groups)]
    sample = sample.sort_values(["group_id", "nm"]).groupby("group_id").head(6)
    result_metadata = {
        "dagster/row_count": len(frame),
        "products": len(frame),
        "groups_with_duplicates": int((frame.drop_duplicates("group_id")["group_size"] > 1).sum()),
        "products_in_groups": int((frame["group_size"] > 1).sum()),
        "largest_group": int(frame["group_size"].max()) if len(frame) else 0,
        "candidate_pairs": len(pairs),
        "matches": int(edges.sum()),
        "matches_by_threshold": int(strong.sum()),
        "matches_by_floor_fallback": int(edges.sum() - (edges & strong).sum()),
        "products_with_a_generic_text": int(generic.sum()),
        "seconds": round(seconds, 3),
        "config": dg.MetadataValue.json({k: getattr(core_config, k) for k in report.SETTINGS}),
        "group_sizes": metadata.table(
            frame.drop_duplicates("group_id")["group_size"]
            .value_counts()
            .sort_index()
            .rename_axis("group_size")
            .reset_index(name="groups")
        ),
        "sample_groups": metadata.table(sample[["group_id", "group_size", "nm", "title"]], max_rows=60),
    }
    if shown_groups:
        try:
            sheet = contact_sheet_png(group_photos(shown_groups, frame, image_index, raw_data))
            result_metadata["contact_sheet"] = dg.MetadataValue.md(png_markdown(sheet, "duplicate groups"))
        except (OSError, ValueError) as error:  # the raw zip moved: the groups are still right
            context.log.warning(f"duplicate_groups: no contact sheet ({error})")
    return dg.MaterializeResult(value=frame, metadata=result_metadata)


class DuplicateReportSettings(dg.Config):
    """Threshold grids of the sweep (2.0 = that modality off), the neighbours per product for
    purity, and which vector sources the sweep compares; which titles count as known duplicates
    (`max_title_products`, see `core.model_selection.folds.specific_keys`); the colour-variant matcher's
    settings (`core.search.variants.VariantConfig`; its exact-duplicate ceiling is the
    `duplicate_groups` image threshold, its neighbours at most `duplicate_groups`' candidates) and
    its sweep grids."""

    text_grid: list[float] = [0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.985, 0.99, 0.995, 2.0]
    image_grid: list[float] = [0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 2.0]
    floor_text_grid: list[float] = [0.9, 0.95, 0.97, 0.98, 2.0]
    floor_image_grid: list[float] = [0.85, 0.9, 0.95, 0.97, 2.0]
    vector_sources: list[str] = ["encoders", "joint"]
    purity_k: int = 10
    threads: int = 2
    max_title_products: int = folds.MAX_TITLE_PRODUCTS
    variant_neighbours: int = variants.VariantConfig().neighbours
    variant_text_floor: float = variants.VariantConfig().text_floor
    variant_neighbours_grid: list[int] = [1, 2, 3, 4, 5, 7, 10]
    variant_text_grid: list[float] = [-1.0, 0.8, 0.85, 0.9, 0.95]


def read_sample_ground_truth(raw_data: WBRawData) -> dict[str, str] | None:
    """nm → colour-variant model id from the generated sample's manifest (None for real data)."""
    path = raw_data.path(SAMPLE_MANIFEST_FILE)
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    models = (manifest.get("ground_truth") or {}).get("colour_variant_models")
    if models is None:
        return None
    return {str(nm): f"model-{m}" for m, group in enumerate(models) for nm in group}


def read_variant_truth(raw_data: WBRawData) -> tuple[dict[str, str] | None, dict]:
    """nm → colour-variant model id, and where it came from: the raw folder's optional
    `colour_variants.parquet` (a real catalogue's ground truth) when present, else the generated
    sample's manifest, else none. An unreadable or malformed file is reported, never fatal (the
    report is then made without variant rows, the error under `problem`)."""
    path = raw_data.path(schema.COLOUR_VARIANTS_FILE)
    problem = None
    try:
        if path.exists():
            table = read_wb_table(path, schema.COLOUR_VARIANTS_REQUIRED_COLUMNS)
            models, counts = variants.models_from_table(table)
            return models, {"source": schema.COLOUR_VARIANTS_FILE, **counts}
    except (SchemaError, OSError, ValueError) as error:
        problem = f"{schema.COLOUR_VARIANTS_FILE} unusable: {error}"
    models = read_sample_ground_truth(raw_data)
    if models is not None:
        return models, {
            "source": SAMPLE_MANIFEST_FILE,
            "products": len(models),
            **({"problem": problem} if problem else {}),
        }
    return None, {
        "source": "none (no usable colour_variants.parquet, not a generated sample)",
        **({"problem": problem} if problem else {}),
    }


@dg.asset(group_name="search", kinds={"pandas"}, code_version="2")
def duplicate_report(
    context: dg.AssetExecutionContext,
    duplicate_groups: pd.DataFrame,
    similar_products: pd.DataFrame,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
    joint_embeddings: pd.DataFrame,
    clean_products: pd.DataFrame,
    image_index: pd.DataFrame,
    product_labels: pd.DataFrame,
    raw_data: WBRawData,
    config: DuplicateReportSettings,
) -> dg.MaterializeResult:
    """How good the duplicate groups are, and how to set their thresholds. Known duplicates: the
    same specific normalised title (one at most `max_title_products` products carry) or the same
    image bytes (`core.model_selection.folds.duplicate_groups`), and where known the colour variants of one
    model: the raw folder's optional `colour_variants.parquet` (nm, model_code), else on the
    generated sample its manifest's ground truth. Rows (`section`): `configured` — the
    `duplicate_groups` asset against each truth (pairwise precision / recall / F1 of its groups,
    Shopee's per-product F1, and the match edges alone); `sweep` — the same for a grid of text ×
    image thresholds, for the encoders' and the joint vectors; `floors` — the fallback floors at the
    configured thresholds; `purity` — the share of each product's top-k neighbours with its
    category / sub_category, per space; `variants` / `variant_sweep` — "same model, other colour":
    the colour-variant matcher (each photo among the other's few nearest, yet not the same photo;
    text allowed to differ; `core.search.variants`) against the variant truth, separate from exact
    duplicates."""
    dup_config = latest_metadata(context, "duplicate_groups").get("config") or {}
    defaults = dup.DuplicateConfig()
    settings = {k: dup_config.get(k, getattr(defaults, k)) for k in report.SETTINGS}
    nm = np.asarray(text_embeddings.nm, dtype=object)
    groups = by_nm(duplicate_groups, nm)["group_id"].to_numpy()
    if pd.isna(groups).any():
        raise ValueError("duplicate_report: duplicate_groups lacks products of text_embeddings")
    variant_model, variant_source = read_variant_truth(raw_data)
    if "problem" in variant_source:
        context.log.warning(f"duplicate_report: colour variants: {variant_source['problem']}")
    truths = report.known_duplicates(nm, clean_products, image_index, variant_model, config.max_title_products)
    variant_config = variants.VariantConfig(
        config.variant_neighbours, float(settings["image_threshold"]), config.variant_text_floor
    )
    too_many = [
        k for k in [variant_config.neighbours, *config.variant_neighbours_grid] if k > int(settings["candidates"])
    ]
    if too_many:
        raise ValueError(
            f"duplicate_report: variant neighbours {too_many} exceed the {settings['candidates']} candidates "
            "per product of duplicate_groups; a variant must be among them"
        )
    index_config = IndexConfig(exact_below=defaults.exact_below, threads=config.threads, recall_queries=0)
    pairs_by_source = {}
    for source in dict.fromkeys([settings["vectors"], *config.vector_sources]):
        _, text_vectors, image_vectors = modality_vectors(source, text_embeddings, image_embeddings, joint_embeddings)
        pairs_by_source[source] = dup.candidate_pairs(
            text_vectors, image_vectors, int(settings["candidates"]), index_config
        )
    spaces = {space: space_vectors(space, text_embeddings, image_embeddings, joint_embeddings)[1] for space in SPACES}
    table = report.duplicate_report(
        nm,
        groups.astype(np.int64),
        pairs_by_source,
        truths,
        settings,
        report.ReportGrids(
            config.text_grid,
            config.image_grid,
            config.floor_text_grid,
            config.floor_image_grid,
            config.variant_neighbours_grid,
            config.variant_text_grid,
        ),
        spaces,
        by_nm(product_labels, nm),
        similar_products,
        str(latest_metadata(context, "product_index").get("space", IndexConfig().space)),
        config.purity_k,
        index_config,
        variant_config,
    )
    result_metadata = _report_metadata(table, truths, settings)
    result_metadata["variant_truth"] = dg.MetadataValue.json(variant_source)
    result_metadata.update(_variant_metadata(table, settings["vectors"]))
    return dg.MaterializeResult(value=table, metadata=result_metadata)


def _variant_metadata(table: pd.DataFrame, configured_vectors: str) -> dict:
    """The "same model, other colour" rows: the variant matcher's pairs and groups per vector source,
    the best of its sweep, and the configured source's pair F1 as a number."""
    rows = table.loc[table["section"] == "variants"] if "section" in table else table.iloc[:0]
    if rows.empty:
        return {}
    scores = ["precision", "recall", "f1", "true_pairs", "predicted_pairs", "correct_pairs"]
    shown = rows[
        ["vectors", "level", "neighbours", "exact_image_threshold", "variant_text_floor", *scores, "candidate_recall"]
    ].round(4)
    result = {"same_model_other_colour": metadata.table(shown)}
    sweep = table.loc[table["section"] == "variant_sweep"]
    if not sweep.empty:
        best = sweep.sort_values(["vectors", "f1"], ascending=[True, False]).groupby("vectors").head(1)
        result["variant_sweep_best"] = metadata.table(
            best[["vectors", "neighbours", "variant_text_floor", *scores]].round(4)
        )
    pairs = rows.loc[(rows["vectors"] == configured_vectors) & (rows["level"] == "match edges"), "f1"]
    if len(pairs) and pd.notna(pairs.iloc[0]):
        result["f1_same_model_other_colour"] = float(pairs.iloc[0])
    return result


def _report_metadata(table: pd.DataFrame, truths: dict[str, np.ndarray], settings: dict) -> dict:
    scores = ["precision", "recall", "f1", "product_f1", "product_f1_dup", "groups", "largest_group"]
    configured = table.loc[
        table["section"] == "configured",
        ["truth", "level", *scores, "candidate_recall", "true_pairs", "predicted_pairs"],
    ]
    sweep = table.loc[table["section"] == "sweep"]
    best = (
        sweep.sort_values(["truth", "vectors", "f1"], ascending=[True, True, False])
        .groupby(["truth", "vectors"], as_index=False)
        .head(1)
    )
    floors = table.loc[table["section"] == "floors"]
    purity = table.loc[table["section"] == "purity", ["space", "label", "gallery", "purity", "neighbours_counted"]]
    main = configured.loc[configured["level"] == "groups"].set_index("truth")
    result = {
        "dagster/row_count": len(table),
        "truths": dg.MetadataValue.json(
            {
                name: {
                    "products_with_a_duplicate": int((np.bincount(t)[t] > 1).sum()),
                    "true_pairs": float((np.bincount(t) * (np.bincount(t) - 1) / 2).sum()),
                }
                for name, t in truths.items()
            }
        ),
        "configured_thresholds": dg.MetadataValue.json(settings),
        "configured": metadata.table(configured.round(4)),
        "best_of_sweep": metadata.table(
            best[["truth", "vectors", "text_threshold", "image_threshold", *scores]].round(4)
        ),
        "floors": metadata.table(floors[["truth", "text_floor", "image_floor", *scores]].round(4), max_rows=100),
        "purity": metadata.table(purity.round(4)),
    }
    for truth in main.index:
        result[f"f1_{truth}"] = float(main.at[truth, "f1"]) if pd.notna(main.at[truth, "f1"]) else None
    return result
