"""Group `clustering`: products clustered in four spaces (text, image, early concatenation, joint),
compared in one table with the seed's metrics and a 2-D picture."""

import time

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.evaluation import figures
from wb_pipeline.core.models import clustering
from wb_pipeline.core.models.clustering import ClusteringConfig
from wb_pipeline.core.models.contrastive import product_keys
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core
from wb_pipeline.defs.progress import progress_logger

ClusteringSettings = config_class(ClusteringConfig, "ClusteringSettings")


WIDE_COLUMNS = [
    "space",
    "algorithm",
    "k_choice",
    "n_clusters",
    "noise_fraction",
    "silhouette",
    "same_text_rate",
    "same_image_rate",
    "category_ami",
    "category_v_measure",
    "category_homogeneity",
    "category_completeness",
    "category_ari",
    "category_nmi",
    "category_accuracy",
    "sub_category_ami",
    "sub_category_v_measure",
]
SCATTER_CAPTION = (
    "*What to look for:* one row per space, coloured by KMeans (silhouette k), HDBSCAN (grey = noise) and the "
    "known category (grey = unknown, train rows). A good space shows compact islands whose category colours "
    "do not mix; the map is a 2-D PCA of the very points the clusters were found in."
)
SILHOUETTE_CAPTION = (
    "*What to look for:* the peak of each line is the silhouette-chosen k (ringed); the other markers are the "
    "silhouette at k = the number of known classes. A flat line means the space has no preferred k; compare "
    "spaces by AMI at equal k (the table `decides`), not by their silhouette k."
)


@dg.multi_asset(
    group_name="clustering",
    outs={
        "product_clusters": dg.AssetOut(
            kinds={"pandas"},
            code_version="3",
            description="Per product (`nm`): `cluster`, the KMeans (silhouette k) cluster in the chosen space "
            "(metadata `space` and `space_reason`: the space that recovers the known classes best at equal k, "
            "else the joint space; config `space` pins one), then a cluster id per `{space}_{algorithm}` (spaces "
            "text, image, early_concat, joint; algorithms kmeans (silhouette k), kmeans_k_category / "
            "kmeans_k_sub_category (k = the number of known classes), hdbscan; -1 = HDBSCAN noise).",
        ),
        "clustering_report": dg.AssetOut(
            kinds={"pandas"},
            code_version="2",
            description="One row per (space, algorithm): how k was chosen, clusters, noise share, silhouette, "
            "same-text / same-image cohesion, and AMI/NMI/ARI/V-measure/homogeneity/completeness/accuracy vs "
            "the known category and sub_category. Metadata leads with `decides`: every space at equal k.",
        ),
    },
)
def product_clusters_and_report(
    context: dg.AssetExecutionContext,
    text_embeddings: EmbeddingTable,
    image_embeddings: EmbeddingTable,
    joint_embeddings: pd.DataFrame,
    product_labels: pd.DataFrame,
    clean_products: pd.DataFrame,
    image_index: pd.DataFrame,
    config: ClusteringSettings,
):
    """PCA (128) → UMAP once per space, then KMeans (silhouette k and k = known classes per target) and
    HDBSCAN on it; metrics against the known labels on the rows that have them (test products)."""
    core_config = to_core(ClusteringConfig, config)
    started = time.perf_counter()
    spaces = clustering.clustering_spaces(text_embeddings, image_embeddings, joint_embeddings)
    nm = list(text_embeddings.nm)
    targets = clustering.known_targets(product_labels, nm)
    equal_k = clustering.known_class_counts(targets)
    clusterings = clustering.cluster_spaces(
        spaces,
        core_config,
        log=context.log.info,
        equal_k=equal_k,
        progress=progress_logger(context, "clustering", "spaces clustered"),
    )
    keys = product_keys(nm, clean_products, image_index)
    report = clustering.clustering_report(
        clusterings,
        targets,
        {"text": keys["text_key"].to_numpy(), "image": keys["image_key"].to_numpy()},
        core_config,
    )
    space, space_reason, space_scores = clustering.choose_space(report, list(targets), core_config)
    context.log.info(f"product_clusters: space {space!r} ({space_reason})")
    clusters = pd.DataFrame(
        {
            "nm": np.asarray(nm, dtype=object),
            "cluster": clusterings[space].labels[clustering.KMEANS_FAMILY],
            **clustering.cluster_columns(clusterings),
        }
    )
    points = {space: result.scatter for space, result in clusterings.items()}
    colourings = {
        space: {
            "kmeans": result.labels["kmeans"],
            "hdbscan": result.labels["hdbscan"],
            "category": targets.get("category", np.full(len(nm), None, dtype=object)),
        }
        for space, result in clusterings.items()
    }
    chosen_k = {space: int(len(set(result.labels["kmeans"]))) for space, result in clusterings.items()}
    silhouette_png = figures.silhouette_by_k_png(
        {space: result.k_scores for space, result in clusterings.items()},
        chosen_k,
        marks={
            f"k = {target} classes ({k})": clustering.equal_k_silhouettes(report, target)
            for target, k in equal_k.items()
        },
    )
    seconds = time.perf_counter() - started
    yield dg.Output(
        clusters,
        output_name="product_clusters",
        metadata={
            "dagster/row_count": len(clusters),
            "space": space,
            "space_reason": space_reason,
            "space_mean_equal_k_ami": dg.MetadataValue.json({k: round(v, 4) for k, v in space_scores.items()}),
            "kmeans_k": dg.MetadataValue.json({"silhouette": chosen_k, "known_classes": equal_k}),
            "preview": metadata.preview(clusters),
        },
    )
    yield dg.Output(
        report,
        output_name="clustering_report",
        metadata={
            "dagster/row_count": len(report),
            "decides": metadata.table(clustering.lead_table(report, clustering.KNOWN_TARGETS).round(4)),
            "silhouette_by_k": dg.MetadataValue.md(
                figures.png_markdown(silhouette_png, "silhouette by k per space", SILHOUETTE_CAPTION)
            ),
            "scatter": dg.MetadataValue.md(
                figures.png_markdown(
                    figures.scatter_grid_png(points, colourings),
                    "2-D map per space, coloured by cluster and by category",
                    SCATTER_CAPTION,
                )
            ),
            "comparison": metadata.table(report[[c for c in WIDE_COLUMNS if c in report.columns]].round(4)),
            "seconds": round(seconds, 2),
            "labelled_rows": dg.MetadataValue.json({t: int(pd.notna(v).sum()) for t, v in targets.items()}),
        },
    )
