"""Cross-validated retrieval of the joint space against closed-form baselines on the SAME folds.

One held-out split of ~200 pairs gives Recall@1 with a standard error of ~0.03, larger than most
differences worth deciding on; so every product is held out once (group-aware K-fold over duplicate
groups) and the folds' metrics are averaged. In each fold the joint trainer sees only that fold's
training pairs (it makes its own inner split for early stopping, then refits on all of them), and the
baselines are fitted on the same pairs:

- `cca_pca128`: classic CCA on PCA-128 inputs (closed form, negligible ridge) — the standard baseline;
- `closed_form`: the joint model's own regularised CCA part alone;
- `heads`: the joint model's CLIP heads alone;
- `joint`: the joint model's vectors (closed-form part + heads), what `joint_embeddings` holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import GroupKFold
from torch.nn import functional as F

from wb_pipeline.core.model_selection.folds import duplicate_groups
from wb_pipeline.core.model_selection.retrieval_metrics import retrieval_metrics
from wb_pipeline.core.models.contrastive import ContrastiveConfig, regularised_cca, train_joint_space

METHODS = ("cca_pca128", "closed_form", "heads", "joint")


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def cca_baseline(text_train, image_train, text_test, image_test, pca_dim: int = 128, n_components: int = 64):
    """Held-out (text, image) vectors of CCA on PCA-`pca_dim` inputs fitted on the training pairs."""
    dim = min(pca_dim, len(text_train) - 1, text_train.shape[1], image_train.shape[1])
    text_pca = PCA(dim, random_state=0).fit(text_train)
    image_pca = PCA(dim, random_state=0).fit(image_train)
    a_train, b_train = text_pca.transform(text_train), image_pca.transform(image_train)
    text_mean, text_map, image_mean, image_map = regularised_cca(a_train, b_train, min(n_components, dim), 1e-3)
    return (
        _unit((text_pca.transform(text_test) - text_mean) @ text_map),
        _unit((image_pca.transform(image_test) - image_mean) @ image_map),
    )


def cross_validated_retrieval(
    text: np.ndarray,
    image: np.ndarray,
    text_keys: Sequence,
    image_keys: Sequence,
    config: ContrastiveConfig = ContrastiveConfig(),
    n_splits: int = 5,
    ks: Sequence[int] = (1, 10),
) -> pd.DataFrame:
    """One row per (fold, method, direction) with `recall_at_<k>` and `median_rank` on the fold's held-out pairs."""
    text, image = np.asarray(text, np.float32), np.asarray(image, np.float32)
    text_keys, image_keys = list(text_keys), list(image_keys)
    groups = duplicate_groups(text_keys, image_keys)
    if len(np.unique(groups)) < n_splits:
        raise ValueError(f"cross_validated_retrieval: {len(np.unique(groups))} duplicate groups < {n_splits} folds")
    rows = []
    config = replace(config, recall_ks=tuple(sorted(set(config.recall_ks) | set(ks))))
    for fold, (train, test) in enumerate(GroupKFold(n_splits=n_splits).split(text, groups=groups)):
        model, _ = train_joint_space(
            text[train], image[train], [text_keys[i] for i in train], [image_keys[i] for i in train], config
        )
        with torch.no_grad():
            text_test, image_test = torch.from_numpy(text[test]), torch.from_numpy(image[test])
            vectors = {
                "cca_pca128": cca_baseline(text[train], image[train], text[test], image[test]),
                "heads": (model.head_text(text_test).numpy(), model.head_image(image_test).numpy()),
                "joint": (model.project_text(text[test]), model.project_image(image[test])),
            }
            if model.closed_form_dim:
                vectors["closed_form"] = (
                    F.normalize((text_test - model.text_cca_mean) @ model.text_cca_map, dim=-1).numpy(),
                    F.normalize((image_test - model.image_cca_mean) @ model.image_cca_map, dim=-1).numpy(),
                )
        for method, (text_side, image_side) in vectors.items():
            for direction, values in retrieval_metrics(text_side, image_side, ks).items():
                rows.append({"fold": fold, "method": method, "direction": direction, "pairs": len(test), **values})
    return pd.DataFrame(rows)


def summarise_retrieval(folds: pd.DataFrame, baseline: str = "cca_pca128") -> pd.DataFrame:
    """Per (method, direction): fold-mean Recall@k with a ±1.96·SE band over folds, and the relative
    gain of each method's Recall@1 over `baseline`'s."""
    metrics = [c for c in folds.columns if c.startswith("recall_at_")]
    grouped = folds.groupby(["method", "direction"], sort=False)
    summary = grouped[metrics].mean()
    spread = grouped[metrics].std(ddof=1) / np.sqrt(grouped.size().to_numpy()[:, None])
    for metric in metrics:
        summary[f"{metric}_ci"] = 1.96 * spread[metric]
    summary = summary.reset_index()
    base = summary[summary["method"] == baseline].set_index("direction")["recall_at_1"]
    summary["recall_at_1_gain_vs_baseline"] = summary["recall_at_1"] / summary["direction"].map(base) - 1.0
    order = {m: i for i, m in enumerate(METHODS)}
    return summary.sort_values(
        ["direction", "method"], key=lambda s: s.map(order) if s.name == "method" else s, ignore_index=True
    )
