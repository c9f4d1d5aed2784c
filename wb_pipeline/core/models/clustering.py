"""Product clustering in several embedding spaces, with the seed's metrics.

Per space (text, image, early concatenation, joint): PCA (128) then UMAP (seeded, one job, so the
result is reproducible), then KMeans and HDBSCAN, all on that ONE reduction (the 2-D picture too).
KMeans runs at the k chosen by silhouette over candidates (or a fixed k) AND at k = the number of
known classes of each target (`kmeans_k_<target>`): spaces compared at their own silhouette k can
differ in k, which hides how well each keeps the classes; the equal-k rows compare like with like.
Metrics (seed §"Кластеризация"): silhouette in the reduced space; against known labels
(`category` / `sub_category` of test rows) AMI, NMI, ARI, homogeneity, completeness, V-measure and
clustering accuracy (Hungarian matching of clusters to classes); and the share of duplicate pairs
(identical title+description, or identical image) that land in one cluster.

HDBSCAN's noise (label -1) counts as one more cluster in the label metrics (an honest penalty for
leaving products unclustered) and is left out of the silhouette; `noise_fraction` is reported.

Just over 500 lines on purpose: the reduction, the two clusterings, their metrics and the equal-k space
choice share one recipe object and are only used together by the clustering step and `make eval`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.decomposition import PCA

if TYPE_CHECKING:
    from wb_pipeline.core.embeddings.vectors import EmbeddingTable

NOISE = -1
SCATTER_METHODS = ("clustering_space", "umap", "pca")
KNOWN_TARGETS = ("category", "sub_category")  # label columns clusters are scored against (test rows)
UNIMODAL_SPACES = ("text", "image")  # what the joint space has to keep up with
CONCAT_SPACE = "early_concat"  # the plain concatenation of the two encoders' vectors: the other yardstick
DEFAULT_SPACE = "joint"
CLUSTERING_SPACES = ("text", "image", CONCAT_SPACE, DEFAULT_SPACE)  # what `clustering_spaces` builds
KMEANS_FAMILY = "kmeans"  # "kmeans" (silhouette or fixed k) and "kmeans_k_<target>" (k = known classes)


def equal_k_algorithm(target: str) -> str:
    """The algorithm name of KMeans at k = the number of known `target` classes."""
    return f"{KMEANS_FAMILY}_k_{target}"


@dataclass(frozen=True)
class ClusteringConfig:
    """Reduction, algorithms and metric settings (defaults: the seed's PCA-128, then UMAP)."""

    pca_components: int = 128
    reduction: Literal["pca_umap", "pca"] = "pca_umap"
    umap_components: int = 10
    umap_neighbors: int = 15
    umap_min_dist: float = 0.0  # packed neighbourhoods suit density clustering
    # below 4,096 rows: compute UMAP's exact distance matrix in one compiled loop (identical result);
    # False = UMAP's own path (sklearn calling the numba metric once per pair from Python)
    umap_precomputed_distances: bool = True
    kmeans_k: int = 0  # 0: choose by silhouette among kmeans_k_candidates
    kmeans_k_candidates: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    kmeans_n_init: int = 4
    hdbscan_min_cluster_size: int = 10
    hdbscan_min_samples: int = 0  # 0: HDBSCAN's default (= min_cluster_size)
    silhouette_sample_size: int = 5000  # silhouette is O(n²); sampled above this many rows
    # the 2-D picture: "clustering_space" = PCA of the points the clusters were found in (no extra fit);
    # "umap" = one more 2-D UMAP of the PCA output per space (the seed's picture, ~1 UMAP fit more per space);
    # "pca" = the first two PCA components.
    scatter_method: Literal["clustering_space", "umap", "pca"] = "clustering_space"
    seed: int = 0
    # Above this many products, every reduction and clustering is FITTED on a seeded random sample of this
    # many and the other products are assigned to it (PCA / UMAP transform, KMeans predict, HDBSCAN: the
    # cluster of the nearest sampled product): the fit's memory and time stop growing with the catalogue.
    # 0 = always fit on every product.
    fit_sample_size: int = 50_000
    # The space whose clusters `product_clusters` hands on (its `cluster` column): "auto" = the space that
    # recovers the known classes best at equal k (mean AMI over the known targets), the joint space when
    # no class is known; or one space pinned by name.
    space: Literal["auto", "text", "image", "early_concat", "joint"] = "auto"
    # "auto" keeps the joint space unless another space beats it by more than this mean AMI: on ~1k
    # labelled products one clustering seed's AMI moves by about ±0.02.
    space_choice_margin: float = 0.02

    def __post_init__(self) -> None:
        for name in (
            "pca_components",
            "umap_components",
            "umap_neighbors",
            "kmeans_n_init",
            "hdbscan_min_cluster_size",
            "silhouette_sample_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"ClusteringConfig.{name} must be positive, got {getattr(self, name)}")
        if self.fit_sample_size < 0 or 0 < self.fit_sample_size < 100:
            raise ValueError(f"ClusteringConfig.fit_sample_size must be 0 or >= 100, got {self.fit_sample_size}")
        if self.kmeans_k < 0 or self.hdbscan_min_samples < 0:
            raise ValueError("ClusteringConfig.kmeans_k and hdbscan_min_samples must be >= 0")
        if self.kmeans_k == 0 and (not self.kmeans_k_candidates or min(self.kmeans_k_candidates) < 2):
            raise ValueError("ClusteringConfig.kmeans_k_candidates must hold values >= 2 when kmeans_k is 0")
        if self.space not in ("auto", *CLUSTERING_SPACES):
            raise ValueError(f"ClusteringConfig.space must be 'auto' or one of {CLUSTERING_SPACES}, got {self.space!r}")
        if self.space_choice_margin < 0:
            raise ValueError("ClusteringConfig.space_choice_margin must be >= 0")
        if self.reduction not in ("pca_umap", "pca") or self.scatter_method not in SCATTER_METHODS:
            raise ValueError(
                f"ClusteringConfig: unknown reduction {self.reduction!r} or scatter {self.scatter_method!r}"
            )


# The seed's two clustering recipes, both used to judge a space: the same vectors can rank differently
# under a non-linear (UMAP) and a linear (PCA) reduction, and a space that keeps the catalogue's
# structure should win under both.
CLUSTERING_RECIPES: dict[str, ClusteringConfig] = {
    "umap": ClusteringConfig(),
    "pca64": ClusteringConfig(reduction="pca", pca_components=64),
}


def clustering_spaces(
    text_embeddings: EmbeddingTable, image_embeddings: EmbeddingTable, joint_embeddings: pd.DataFrame
) -> dict[str, np.ndarray]:
    """The four spaces, row-aligned with `text_embeddings.nm`; early concatenation weighs the two
    unit vectors equally (scaled by 1/√2 to stay unit-norm)."""
    from wb_pipeline.core.models.contrastive import joint_matrix  # torch: imported only where spaces are built

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


# ---------------------------------------------------------------------------------------------
# Reduction and clustering


def pca_reduce(vectors: np.ndarray, config: ClusteringConfig) -> np.ndarray:
    """PCA to `pca_components` (capped by the data's rank limits), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    components = min(config.pca_components, vectors.shape[1], len(vectors) - 1)
    if components < 1:
        raise ValueError(f"pca_reduce: {vectors.shape} is too small to reduce")
    return PCA(n_components=components, random_state=config.seed).fit_transform(vectors).astype(np.float32)


def umap_reduce(vectors: np.ndarray, n_components: int, config: ClusteringConfig) -> np.ndarray:
    """UMAP with a fixed random_state and one job (reproducible), float32. Below UMAP's small-data
    threshold the exact distance matrix is computed here and passed as `metric="precomputed"`
    (`config.umap_precomputed_distances`): the same matrix, hence the same embedding, ~2x less CPU."""
    import umap  # imported here: numba compilation makes the import slow

    neighbors = max(2, min(config.umap_neighbors, len(vectors) - 1))
    settings = dict(
        n_components=min(n_components, len(vectors) - 2),
        n_neighbors=neighbors,
        min_dist=config.umap_min_dist,
        random_state=config.seed,
        n_jobs=1,
    )
    vectors = np.asarray(vectors, dtype=np.float32)
    from wb_pipeline.core.models.umap_distances import UMAP_SMALL_DATA_ROWS, euclidean_distance_matrix

    if config.umap_precomputed_distances and len(vectors) < UMAP_SMALL_DATA_ROWS:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="using precomputed metric")
            reducer = umap.UMAP(metric="precomputed", **settings)
            return reducer.fit_transform(euclidean_distance_matrix(vectors)).astype(np.float32)
    return umap.UMAP(**settings).fit_transform(vectors).astype(np.float32)


def reduce_for_clustering(vectors: np.ndarray, config: ClusteringConfig) -> tuple[np.ndarray, np.ndarray]:
    """(PCA output, the space clustering runs in: UMAP of the PCA output, or the PCA output itself)."""
    reduced = pca_reduce(vectors, config)
    if config.reduction == "pca":
        return reduced, reduced
    return reduced, umap_reduce(reduced, config.umap_components, config)


def scatter_2d(pca_vectors: np.ndarray, points: np.ndarray, config: ClusteringConfig) -> np.ndarray:
    """2-D coordinates for the picture (see `ClusteringConfig.scatter_method`)."""
    if config.scatter_method == "umap" and len(pca_vectors) >= 4:
        return umap_reduce(pca_vectors, 2, config)
    source = points if config.scatter_method == "clustering_space" else pca_vectors
    if config.scatter_method == "clustering_space" and source.shape[1] > 2 and len(source) > 2:
        return PCA(n_components=2, random_state=config.seed).fit_transform(source).astype(np.float32)
    padded = np.zeros((len(source), 2), np.float32)
    padded[:, : min(2, source.shape[1])] = source[:, :2]
    return padded


def silhouette(points: np.ndarray, labels: np.ndarray, sample_size: int, seed: int) -> float:
    """Silhouette of the non-noise points (NaN when fewer than 2 clusters or too few points)."""
    labels = np.asarray(labels)
    keep = labels != NOISE
    points, labels = points[keep], labels[keep]
    n_clusters = len(np.unique(labels))
    if n_clusters < 2 or n_clusters >= len(labels):
        return float("nan")
    size = sample_size if len(labels) > sample_size else None
    return float(skm.silhouette_score(points, labels, sample_size=size, random_state=seed))


class KMeansByK:
    """KMeans labels of one set of points, fitted once per k (the k search, the chosen k and the
    equal-k runs often ask for the same k)."""

    def __init__(self, points: np.ndarray, config: ClusteringConfig):
        self.points, self.config, self._labels, self.models = points, config, {}, {}

    def __call__(self, k: int) -> np.ndarray:
        if k not in self._labels:
            self.models[k] = KMeans(n_clusters=k, n_init=self.config.kmeans_n_init, random_state=self.config.seed)
            self._labels[k] = self.models[k].fit_predict(self.points)
        return self._labels[k]


def choose_k(
    points: np.ndarray, config: ClusteringConfig, kmeans: KMeansByK | None = None
) -> tuple[int, dict[int, float]]:
    """The configured k, or the candidate with the best silhouette (scores per candidate returned)."""
    if config.kmeans_k:
        return min(config.kmeans_k, len(points)), {}
    kmeans = kmeans or KMeansByK(points, config)
    candidates = sorted({k for k in config.kmeans_k_candidates if 2 <= k < len(points)}) or [min(2, len(points))]
    scores = {k: silhouette(points, kmeans(k), config.silhouette_sample_size, config.seed) for k in candidates}
    best = max(candidates, key=lambda k: (np.nan_to_num(scores[k], nan=-2.0), -k))
    return best, scores


def known_targets(product_labels: pd.DataFrame, nm: Sequence[str]) -> dict[str, np.ndarray]:
    """`KNOWN_TARGETS` columns of `product_labels`, row-aligned with `nm` (None where unknown)."""
    labels = product_labels.drop_duplicates("nm").set_index("nm").reindex(list(nm))
    return {t: labels[t].astype(object).to_numpy() for t in KNOWN_TARGETS if t in labels.columns}


def known_class_counts(targets: Mapping[str, pd.Series | np.ndarray]) -> dict[str, int]:
    """Per target, the number of distinct known classes (the equal-k comparison's k); targets with
    fewer than 2 known classes are left out (nothing to compare)."""
    counts = {
        name: int(pd.Series(values, dtype=object).dropna().astype(str).nunique()) for name, values in targets.items()
    }
    return {name: count for name, count in counts.items() if count >= 2}


def hdbscan_labels(points: np.ndarray, config: ClusteringConfig) -> np.ndarray:
    model = HDBSCAN(
        min_cluster_size=config.hdbscan_min_cluster_size, min_samples=config.hdbscan_min_samples or None, copy=True
    )
    return model.fit_predict(points)


@dataclass
class SpaceClustering:
    """One space's reduction (PCA output, the points clustering ran in, the 2-D picture), cluster
    labels per algorithm, how each algorithm's k was chosen, and the silhouette per candidate k."""

    pca: np.ndarray
    points: np.ndarray
    labels: dict[str, np.ndarray]
    k_scores: dict[int, float] = field(default_factory=dict)
    k_choice: dict[str, str] = field(default_factory=dict)
    scatter: np.ndarray | None = None


def fit_sample_rows(n_rows: int, config: ClusteringConfig) -> np.ndarray | None:
    """The rows the reductions and clusterings are fitted on (sorted), or None for all of them."""
    if not config.fit_sample_size or n_rows <= config.fit_sample_size:
        return None
    return np.sort(np.random.default_rng(config.seed).choice(n_rows, config.fit_sample_size, replace=False))


ASSIGN_CHUNK_ROWS = 65_536  # rows transformed / predicted at a time when assigning to a sampled fit


def _in_chunks(transform: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    return np.concatenate([transform(rows[i : i + ASSIGN_CHUNK_ROWS]) for i in range(0, len(rows), ASSIGN_CHUNK_ROWS)])


def _reduce_from_sample(
    vectors: np.ndarray, fit_rows: np.ndarray, config: ClusteringConfig
) -> tuple[np.ndarray, np.ndarray]:
    """`reduce_for_clustering` fitted on `fit_rows` only, every product transformed by the fitted models."""
    import umap  # imported here: numba compilation makes the import slow

    vectors = np.asarray(vectors, dtype=np.float32)
    components = min(config.pca_components, vectors.shape[1], len(fit_rows) - 1)
    pca_model = PCA(n_components=components, random_state=config.seed).fit(vectors[fit_rows])
    pca = _in_chunks(lambda rows: pca_model.transform(rows).astype(np.float32), vectors)
    if config.reduction == "pca":
        return pca, pca
    reducer = umap.UMAP(  # UMAP's own (not precomputed) path: a fitted model that can place new points
        n_components=min(config.umap_components, len(fit_rows) - 2),
        n_neighbors=max(2, min(config.umap_neighbors, len(fit_rows) - 1)),
        min_dist=config.umap_min_dist,
        random_state=config.seed,
        n_jobs=1,
    ).fit(pca[fit_rows])
    points = np.empty((len(vectors), reducer.embedding_.shape[1]), np.float32)
    points[fit_rows] = reducer.embedding_
    others = np.setdiff1d(np.arange(len(vectors)), fit_rows)
    if len(others):
        points[others] = _in_chunks(lambda rows: reducer.transform(rows).astype(np.float32), pca[others])
    return pca, points


def cluster_space(
    vectors: np.ndarray, config: ClusteringConfig, equal_k: Mapping[str, int] | None = None
) -> SpaceClustering:
    """Reduce one space once; KMeans (silhouette / fixed k, then k = known classes per target), HDBSCAN
    and the 2-D picture all use that reduction. Above `config.fit_sample_size` products all of it is
    fitted on a seeded sample (`fit_sample_rows`) and every product assigned to the fitted models:
    KMeans by `predict`, HDBSCAN by the cluster of the nearest sampled product."""
    fit_rows = fit_sample_rows(len(vectors), config)
    if fit_rows is None:
        pca, points = reduce_for_clustering(vectors, config)
        fit_points = points
    else:
        pca, points = _reduce_from_sample(vectors, fit_rows, config)
        fit_points = points[fit_rows]
    kmeans = KMeansByK(fit_points, config)

    def kmeans_labels(k: int) -> np.ndarray:
        fitted = kmeans(k)  # fitted once per k
        return fitted if fit_rows is None else _in_chunks(kmeans.models[k].predict, points)

    k, k_scores = choose_k(fit_points, config, kmeans)
    labels = {KMEANS_FAMILY: kmeans_labels(k)}
    k_choice = {KMEANS_FAMILY: "fixed (config)" if config.kmeans_k else "silhouette"}
    for target, classes in (equal_k or {}).items():
        labels[equal_k_algorithm(target)] = kmeans_labels(max(2, min(classes, len(fit_points) - 1)))
        k_choice[equal_k_algorithm(target)] = f"= known {target} classes"
    density = hdbscan_labels(fit_points, config)
    if fit_rows is None:
        labels["hdbscan"], k_choice["hdbscan"] = density, "density (HDBSCAN)"
    else:
        from sklearn.neighbors import NearestNeighbors

        nearest = NearestNeighbors(n_neighbors=1).fit(fit_points)
        labels["hdbscan"] = _in_chunks(lambda rows: density[nearest.kneighbors(rows)[1][:, 0]], points)
        k_choice["hdbscan"] = "density (HDBSCAN) on the fit sample; others: their nearest sampled product's"
    scatter_config = config
    if fit_rows is not None and config.scatter_method == "umap":
        scatter_config = replace(config, scatter_method="clustering_space")  # no 2nd UMAP fit over the catalogue
    return SpaceClustering(
        pca=pca,
        points=points,
        labels=labels,
        k_scores=k_scores,
        k_choice=k_choice,
        scatter=scatter_2d(pca, points, scatter_config),
    )


def cluster_spaces(
    spaces: Mapping[str, np.ndarray],
    config: ClusteringConfig = ClusteringConfig(),
    log=None,
    equal_k: Mapping[str, int] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, SpaceClustering]:
    """Reduce and cluster every space (all must have the same rows). `equal_k`: target → number of
    known classes, for the equal-k KMeans runs. `progress(done, total, seconds)` after each space."""
    sizes = {name: len(vectors) for name, vectors in spaces.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"cluster_spaces: spaces have different row counts {sizes}")
    if next(iter(sizes.values()), 0) < 3:
        raise ValueError(f"cluster_spaces: need at least 3 products, got {sizes}")
    started = time.perf_counter()
    result = {}
    for position, (name, vectors) in enumerate(spaces.items()):
        vectors = np.asarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise ValueError(f"cluster_spaces: space {name!r} holds NaN or infinite values")
        result[name] = clustered = cluster_space(vectors, config, equal_k)
        if log is not None:
            ks = {algorithm: len(set(labels.tolist()) - {NOISE}) for algorithm, labels in clustered.labels.items()}
            log(f"clustered space {name!r}: clusters per algorithm {ks}")
        if progress is not None:
            progress(position + 1, len(spaces), time.perf_counter() - started)
    return result


def cluster_columns(clusterings: Mapping[str, SpaceClustering]) -> dict[str, np.ndarray]:
    """`{space}_{algorithm}` → labels, the column names of `product_clusters`."""
    return {
        f"{space}_{algorithm}": labels
        for space, clustering in clusterings.items()
        for algorithm, labels in clustering.labels.items()
    }


# ---------------------------------------------------------------------------------------------
# Metrics


def clustering_accuracy(true_labels: np.ndarray, cluster_labels: np.ndarray) -> float:
    """Best one-to-one matching of clusters to classes (Hungarian), as the share of matched rows.

    With more clusters than classes (or fewer) the unmatched ones count as wrong."""
    true_codes, _ = pd.factorize(pd.Series(true_labels, dtype=object))
    cluster_codes, _ = pd.factorize(pd.Series(cluster_labels, dtype=object))
    if len(true_codes) == 0:
        raise ValueError("clustering_accuracy: no labelled rows")
    contingency = skm.cluster.contingency_matrix(true_codes, cluster_codes)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    return float(contingency[rows, cols].sum() / len(true_codes))


def label_agreement(true_labels: np.ndarray, cluster_labels: np.ndarray) -> dict[str, float]:
    """AMI, NMI, ARI, homogeneity, completeness, V-measure and Hungarian accuracy."""
    true_labels = np.asarray(pd.Series(true_labels, dtype=object).astype(str))
    cluster_labels = np.asarray(cluster_labels)
    homogeneity, completeness, v_measure = skm.homogeneity_completeness_v_measure(true_labels, cluster_labels)
    return {
        "ami": float(skm.adjusted_mutual_info_score(true_labels, cluster_labels)),
        "nmi": float(skm.normalized_mutual_info_score(true_labels, cluster_labels)),
        "ari": float(skm.adjusted_rand_score(true_labels, cluster_labels)),
        "homogeneity": float(homogeneity),
        "completeness": float(completeness),
        "v_measure": float(v_measure),
        "accuracy": clustering_accuracy(true_labels, cluster_labels),
    }


def duplicate_cohesion(keys: pd.Series | np.ndarray, cluster_labels: np.ndarray) -> tuple[float, int]:
    """(share of duplicate pairs — rows with the same non-missing key — that share a cluster, pair count).

    NaN when there are no duplicate pairs. HDBSCAN noise never counts as a shared cluster."""
    frame = pd.DataFrame({"key": pd.Series(keys).to_numpy(), "cluster": np.asarray(cluster_labels)}).dropna()
    pairs = lambda counts: (counts * (counts - 1) // 2).sum()  # noqa: E731 - n choose 2
    total = int(pairs(frame.groupby("key").size()))
    if total == 0:
        return float("nan"), 0
    clustered = frame[frame["cluster"] != NOISE]
    together = int(pairs(clustered.groupby(["key", "cluster"]).size()))
    return together / total, total


def clustering_report(
    clusterings: Mapping[str, SpaceClustering],
    targets: Mapping[str, pd.Series | np.ndarray],
    duplicate_keys: Mapping[str, pd.Series | np.ndarray],
    config: ClusteringConfig = ClusteringConfig(),
) -> pd.DataFrame:
    """One row per (space, algorithm): how k was chosen, cluster count, noise share, silhouette, duplicate
    cohesion per key (`same_<key>_rate`), and `<target>_<metric>` on the rows where the target is known."""
    rows = []
    for space, clustering in clusterings.items():
        for algorithm, labels in clustering.labels.items():
            row: dict[str, object] = {
                "space": space,
                "algorithm": algorithm,
                "k_choice": clustering.k_choice.get(algorithm, ""),
                "n_clusters": int(len(set(labels.tolist()) - {NOISE})),
                "noise_fraction": float((labels == NOISE).mean()),
                "silhouette": silhouette(clustering.points, labels, config.silhouette_sample_size, config.seed),
            }
            for key_name, keys in duplicate_keys.items():
                rate, pairs = duplicate_cohesion(keys, labels)
                row[f"same_{key_name}_rate"] = rate
                row[f"same_{key_name}_pairs"] = pairs
            for target, values in targets.items():
                values = pd.Series(values, dtype=object).reset_index(drop=True)
                known = values.notna().to_numpy()
                row[f"{target}_rows"] = int(known.sum())
                scores = label_agreement(values[known].to_numpy(), labels[known]) if known.sum() >= 2 else {}
                for metric in ("ami", "nmi", "ari", "homogeneity", "completeness", "v_measure", "accuracy"):
                    row[f"{target}_{metric}"] = scores.get(metric, float("nan"))
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The comparisons that decide


def lead_table(report: pd.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """The narrow table a reader needs first: per target, every space's KMeans at k = the target's
    known classes (the fair comparison), then at the silhouette k — space, k, AMI, V-measure."""
    rows = []
    for target in targets:
        if f"{target}_ami" not in report.columns:
            continue
        for algorithm, rule in ((equal_k_algorithm(target), f"= {target} classes"), (KMEANS_FAMILY, None)):
            for _, row in report[report["algorithm"] == algorithm].iterrows():
                rows.append(
                    {
                        "target": target,
                        "k chosen by": rule or row["k_choice"],
                        "space": row["space"],
                        "k": int(row["n_clusters"]),
                        "AMI": row[f"{target}_ami"],
                        "V-measure": row[f"{target}_v_measure"],
                    }
                )
    return pd.DataFrame(rows, columns=["target", "k chosen by", "space", "k", "AMI", "V-measure"])


def equal_k_comparison(
    report: pd.DataFrame, target: str, candidate: str, baselines: Sequence[str]
) -> dict[str, object] | None:
    """`candidate` space vs the best of `baselines` by `<target>` AMI of KMeans at k = known classes
    (None when the report has no such rows or scores)."""
    column, algorithm = f"{target}_ami", equal_k_algorithm(target)
    if column not in report.columns:
        return None
    scores = report[report["algorithm"] == algorithm].set_index("space")[column].dropna()
    if candidate not in scores.index or not scores.index.isin(baselines).any():
        return None
    best = scores[scores.index.isin(baselines)].idxmax()
    return {
        "target": target,
        "k": int(report.loc[report["algorithm"] == algorithm, "n_clusters"].max()),
        "candidate_ami": float(scores[candidate]),
        "best_baseline": str(best),
        "best_baseline_ami": float(scores[best]),
        "passed": bool(scores[candidate] >= scores[best]),
    }


def equal_k_over_seeds(
    spaces: Mapping[str, np.ndarray],
    targets: Mapping[str, pd.Series | np.ndarray],
    config: ClusteringConfig,
    seeds: Sequence[int],
) -> pd.DataFrame:
    """AMI of KMeans at k = the known classes per (seed, target, space), each seed its own reduction and
    KMeans (config.seed replaced). On ~1k products one seed's equal-k AMI moves by ±0.05 between
    seeds, more than the differences between spaces; this is what a comparison should stand on."""
    equal_k = known_class_counts(targets)
    rows = []
    for seed in seeds:
        seeded = replace(config, seed=int(seed))
        for space, vectors in spaces.items():
            _, points = reduce_for_clustering(np.asarray(vectors, dtype=np.float32), seeded)
            kmeans = KMeansByK(points, seeded)
            for target, classes in equal_k.items():
                values = pd.Series(targets[target], dtype=object).reset_index(drop=True)
                known = values.notna().to_numpy()
                labels = kmeans(max(2, min(classes, len(points) - 1)))
                rows.append(
                    {
                        "seed": int(seed),
                        "target": target,
                        "space": space,
                        "k": classes,
                        "ami": label_agreement(values[known].to_numpy(), labels[known])["ami"],
                    }
                )
    return pd.DataFrame(rows, columns=["seed", "target", "space", "k", "ami"])


def equal_k_over_recipes(
    spaces: Mapping[str, np.ndarray],
    targets: Mapping[str, pd.Series | np.ndarray],
    recipes: Mapping[str, ClusteringConfig],
    seeds: Sequence[int],
) -> pd.DataFrame:
    """`equal_k_over_seeds` under every recipe, with a `recipe` column."""
    parts = [equal_k_over_seeds(spaces, targets, config, seeds).assign(recipe=name) for name, config in recipes.items()]
    return pd.concat(parts, ignore_index=True)


def seed_comparison(
    per_seed: pd.DataFrame,
    candidate: str,
    baselines: Sequence[str],
    confidence: float = 0.95,
    concat: str | None = CONCAT_SPACE,
) -> pd.DataFrame:
    """Per (recipe, target): every space's mean AMI over its rows (draws) with a t-interval, then
    `candidate` − the best of `baselines` (by mean) and, when present, `candidate` − `concat`, each with a
    Welch interval of the difference and a verdict: "above" / "below" when the interval excludes 0, else
    "tie". A space's draws are its rows (clustering seeds, and training seeds for the joint space);
    `per_seed` without a `recipe` column is one recipe."""
    from scipy import stats

    def half_width(standard_error: float, n: int) -> float:  # t-interval with n - 1 degrees of freedom
        return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * standard_error) if n > 1 else float("nan")

    def difference_row(recipe, target, k, summary, other: str) -> dict:
        c, b = summary.loc[candidate], summary.loc[other]
        difference = c["mean"] - b["mean"]
        # Welch's standard error (the two spaces may have different numbers of draws, e.g. the joint space
        # over training × clustering seeds) with the conservative min(n) − 1 degrees of freedom
        n = int(min(c["count"], b["count"]))
        margin = half_width(
            float(np.sqrt(np.nan_to_num(c["std"]) ** 2 / c["count"] + np.nan_to_num(b["std"]) ** 2 / b["count"])), n
        )
        verdict = (
            "tie" if not np.isfinite(margin) or abs(difference) <= margin else ("above" if difference > 0 else "below")
        )
        return {
            "recipe": recipe,
            "target": target,
            "k": k,
            "space": f"{candidate} − {other}",
            "seeds": n,
            "AMI mean": difference,
            "± (CI)": margin,
            "min": np.nan,
            "max": np.nan,
            "verdict": verdict,
        }

    columns = ["recipe", "target", "k", "space", "seeds", "AMI mean", "± (CI)", "min", "max", "verdict"]
    frame = per_seed if "recipe" in per_seed.columns else per_seed.assign(recipe="")
    rows = []
    for (recipe, target), part in frame.groupby(["recipe", "target"], sort=False):
        k = int(part["k"].iloc[0])
        summary = part.groupby("space", sort=False)["ami"].agg(["mean", "std", "count", "min", "max"])
        for space, r in summary.iterrows():
            n = int(r["count"])
            rows.append(
                {
                    "recipe": recipe,
                    "target": target,
                    "k": k,
                    "space": space,
                    "seeds": n,
                    "AMI mean": r["mean"],
                    "± (CI)": half_width(r["std"] / np.sqrt(n), n),
                    "min": r["min"],
                    "max": r["max"],
                    "verdict": "",
                }
            )
        present = summary.index[summary.index.isin(baselines)]
        if candidate not in summary.index or not len(present):
            continue
        rows.append(difference_row(recipe, target, k, summary, summary.loc[present, "mean"].idxmax()))
        if concat is not None and concat in summary.index:
            rows.append(difference_row(recipe, target, k, summary, concat))
    table = pd.DataFrame(rows, columns=columns)
    return table if "recipe" in per_seed.columns else table.drop(columns="recipe")


def mean_equal_k_ami(report: pd.DataFrame, targets: Sequence[str]) -> dict[str, float]:
    """space → AMI of KMeans at k = the known classes, averaged over the `targets` the report scores
    (spaces missing a score on one of them are left out)."""
    scored = [t for t in targets if f"{t}_ami" in report.columns]
    scores: dict[str, list[float]] = {}
    for target in scored:
        rows = report[report["algorithm"] == equal_k_algorithm(target)]
        for space, value in zip(rows["space"], rows[f"{target}_ami"]):
            if pd.notna(value):
                scores.setdefault(str(space), []).append(float(value))
    return {space: float(np.mean(values)) for space, values in scores.items() if len(values) == len(scored)}


def choose_space_by_scores(
    scores: Mapping[str, float], margin: float, candidates: Sequence[str] = CLUSTERING_SPACES
) -> tuple[str, str]:
    """(space, why): the candidate with the highest score (mean equal-k AMI) where it beats the joint space
    by more than `margin`; else, or without scores, the joint space."""
    scores = {space: value for space, value in scores.items() if space in candidates}
    if not scores:
        return DEFAULT_SPACE, "no known classes: the joint space by default"
    best = max(scores, key=scores.get)
    joint = scores.get(DEFAULT_SPACE)
    if joint is None:
        return best, f"{best}: the highest mean equal-k AMI ({scores[best]:.3f}); the joint space was not scored"
    if best == DEFAULT_SPACE or scores[best] <= joint + margin:
        return DEFAULT_SPACE, (
            f"the joint space: mean equal-k AMI {joint:.3f}, no space above it by more than "
            f"{margin} (best {best} {scores[best]:.3f})"
        )
    return (
        best,
        f"{best}: mean equal-k AMI {scores[best]:.3f} beats the joint space's {joint:.3f} by more than {margin}",
    )


def choose_space(
    report: pd.DataFrame,
    targets: Sequence[str],
    config: ClusteringConfig,
    candidates: Sequence[str] = CLUSTERING_SPACES,
) -> tuple[str, str, dict[str, float]]:
    """(space, why, mean equal-k AMI per space) for `config.space`: a pinned space as is; "auto" =
    `choose_space_by_scores` over the report's equal-k AMI averaged over `targets`."""
    if config.space != "auto":
        return config.space, "pinned by config", {}
    scores = mean_equal_k_ami(report, targets)
    return (*choose_space_by_scores(scores, config.space_choice_margin, candidates), scores)


def equal_k_silhouettes(report: pd.DataFrame, target: str) -> dict[str, tuple[int, float]]:
    """space → (k, silhouette) of KMeans at k = the known `target` classes (for the silhouette picture)."""
    rows = report[report["algorithm"] == equal_k_algorithm(target)]
    return {str(r.space): (int(r.n_clusters), float(r.silhouette)) for r in rows.itertuples()}
