"""Group `clustering`: products clustered in four spaces (text, image, early concatenation, joint),
compared in one table with the seed's metrics and a 2-D picture."""


import time

import dagster as dg
import numpy as np
import pandas as pd

from wb_pipeline.core import clustering
from wb_pipeline.core.clustering import ClusteringConfig
from wb_pipeline.core.contrastive import joint_matrix, product_keys
from wb_pipeline.core.embeddings import EmbeddingTable
from wb_pipeline.core.joint_space_figures import png_markdown, scatter_grid_png
from wb_pipeline.defs import metadata
from wb_pipeline.defs.config import config_class, to_core

ClusteringSettings = config_class(ClusteringConfig, "ClusteringSettings")
LABEL_TARGETS = ("category", "sub_category")


def clustering_spaces(text_embeddings: EmbeddingTable, image_embeddings: EmbeddingTable,
                      joint_embeddings: pd.DataFrame) -> dict[str, np.ndarray]:
    """The four spaces, row-aligned with `text_embeddings.nm`; early concatenation weighs the two
    unit vectors equally (scaled by 1/√2 to stay unit-norm)."""
    try:
        images = image_embeddings.subset(text_embeddings.nm)
        joint = joint_embeddings.set_index("nm").loc[list(text_embeddings.nm)].reset_index()
    except KeyError as error:
        raise ValueError(f"clustering: embeddings cover different products: {error}") from error
    return {
        "text": text_embeddings.vectors,
        "image": images.vectors,
        "early_concat": np.hstack([text_embeddings.vectors, images.vectors]) / np.sqrt(2.0),
        "joint": joint_matrix(joint, "combined_joint"),
    }


@dg.multi_asset(
    group_name="clustering",
    outs={
        "product_clusters": dg.AssetOut(
            kinds={"pandas"}, code_version="1",
            description="Per product (`nm`): a cluster id per `{space}_{algorithm}` (spaces text, image, "
            "early_concat, joint; algorithms kmeans, hdbscan; -1 = HDBSCAN noise).",
        ),
        "clustering_report": dg.AssetOut(
            kinds={"pandas"}, code_version="1",
            description="One row per (space, algorithm): clusters, noise share, silhouette, same-text / "
            "same-image cohesion, and AMI/NMI/ARI/V-measure/homogeneity/completeness/accuracy vs the known "
            "category and sub_category.",
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
    """PCA (128) → UMAP, then KMeans (k fixed or by silhouette) and HDBSCAN in every space; metrics
    against the known labels on the rows that have them (test products)."""
    core_config = to_core(ClusteringConfig, config)
    started = time.perf_counter()
    spaces = clustering_spaces(text_embeddings, image_embeddings, joint_embeddings)
    clusterings = clustering.cluster_spaces(spaces, core_config, log=context.log.info)
    nm = list(text_embeddings.nm)
    labels = product_labels.drop_duplicates("nm").set_index("nm").reindex(nm)
    targets = {t: labels[t].astype(object).to_numpy() for t in LABEL_TARGETS if t in labels.columns}
    keys = product_keys(nm, clean_products, image_index)
    report = clustering.clustering_report(
        clusterings, targets, {"text": keys["text_key"].to_numpy(), "image": keys["image_key"].to_numpy()},
        core_config,
    )
    clusters = pd.DataFrame({"nm": np.asarray(nm, dtype=object), **clustering.cluster_columns(clusterings)})
    points = {space: clustering.scatter_2d(result.pca, core_config) for space, result in clusterings.items()}
    colourings = {space: {"kmeans": result.labels["kmeans"], "hdbscan": result.labels["hdbscan"],
                          "category": targets.get("category", np.full(len(nm), None, dtype=object))}
                  for space, result in clusterings.items()}
    seconds = time.perf_counter() - started
    chosen_k = {space: int(len(set(result.labels["kmeans"]))) for space, result in clusterings.items()}
    yield dg.Output(
        clusters,
        output_name="product_clusters",
        metadata={"dagster/row_count": len(clusters), "kmeans_k": dg.MetadataValue.json(chosen_k),
                  "preview": metadata.preview(clusters)},
    )
    shown = ["space", "algorithm", "n_clusters", "noise_fraction", "silhouette", "same_text_rate",
             "same_image_rate", "category_ami", "category_v_measure", "category_homogeneity",
             "category_completeness", "category_ari", "category_nmi", "category_accuracy",
             "sub_category_ami", "sub_category_v_measure"]
    yield dg.Output(
        report,
        output_name="clustering_report",
        metadata={
            "dagster/row_count": len(report),
            "comparison": metadata.table(report[[c for c in shown if c in report.columns]].round(4)),
            "scatter": dg.MetadataValue.md(png_markdown(scatter_grid_png(points, colourings),
                                                        "2-D map per space, coloured by cluster and by category")),
            "silhouette_by_k": dg.MetadataValue.json(
                {space: {str(k): round(v, 4) for k, v in result.k_scores.items()}
                 for space, result in clusterings.items()}),
            "seconds": round(seconds, 2),
            "labelled_rows": dg.MetadataValue.json({t: int(pd.notna(v).sum()) for t, v in targets.items()}),
        },
    )
