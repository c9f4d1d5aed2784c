"""The one quality table of a run (`make eval`): classifiers, retrieval, clustering at equal k, rejections.

Every number is read from the run's own materialized assets (classification_report, clustering_report,
rejected_products, clean_products) except retrieval, which `evaluation.retrieval` cross-validates on the
run's embeddings, and the equal-k clustering over several seeds, which re-clusters the run's four spaces
and the joint space retrained under other training seeds (`evaluation.training_seeds`: one seed's AMI on
~1k products moves by more than the spaces differ); nothing here retrains a classifier.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from wb_pipeline.core.models import clustering

CLASSIFIER_COLUMNS = ("text", "image", "early_fusion", "joint", "mean_probability", "late_fusion", "zero_shot")


def classifier_table(report: pd.DataFrame) -> pd.DataFrame:
    """Per label: macro-F1 [95% CI] of every model, the best trained model, and late fusion − best unimodal
    (with its paired-bootstrap interval when the report has one)."""
    rows = []
    for label, part in report.groupby("label", sort=False):
        by_model = part.set_index("model")
        row = {"label": label, "rows": int(by_model["n"].max()), "classes": int(by_model["n_classes"].max())}
        for model in CLASSIFIER_COLUMNS:
            if model in by_model.index:
                r = by_model.loc[model]
                row[model] = f"{r['macro_f1']:.3f} [{r['macro_f1_low']:.3f}, {r['macro_f1_high']:.3f}]"
        unimodal = by_model.loc[by_model.index.isin(["text", "image"]), "macro_f1"]
        row["best model"] = str(by_model["best_model"].iloc[0])
        if "late_fusion" in by_model.index and len(unimodal):
            row["late − best unimodal"] = round(float(by_model.loc["late_fusion", "macro_f1"] - unimodal.max()), 3)
            late = by_model.loc["late_fusion"]
            if pd.notna(late.get("gain_low")):  # the paired interval of that difference (classification_report)
                row["late − best unimodal, 95% paired"] = f"[{late['gain_low']:+.3f}, {late['gain_high']:+.3f}]"
        if "early_fusion" in by_model.index and "text" in by_model.index:
            row["early − text"] = round(
                float(by_model.loc["early_fusion", "macro_f1"] - by_model.loc["text", "macro_f1"]), 3
            )
        rows.append(row)
    return pd.DataFrame(rows)


def retrieval_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (direction, method): fold-mean R@1 / R@10 ± CI and R@1's relative gain over CCA on PCA-128."""
    shown = pd.DataFrame(
        {
            "direction": summary["direction"],
            "method": summary["method"],
            "R@1": [f"{m:.3f} ± {c:.3f}" for m, c in zip(summary["recall_at_1"], summary["recall_at_1_ci"])],
            "R@10": [f"{m:.3f} ± {c:.3f}" for m, c in zip(summary["recall_at_10"], summary["recall_at_10_ci"])],
            "R@1 vs CCA-PCA128": [f"{g:+.1%}" for g in summary["recall_at_1_gain_vs_baseline"]],
        }
    )
    return shown


def clustering_table(report: pd.DataFrame) -> pd.DataFrame:
    """AMI / V-measure per space at k = the number of known classes (and at the silhouette k)."""
    return clustering.lead_table(report, clustering.KNOWN_TARGETS)


def clustering_seed_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Equal-k AMI per space over several clustering seeds (mean, 95% t-interval, range), per recipe when
    `per_seed` has several, then the joint space − the best unimodal space and − the plain concatenation,
    each with its interval and verdict (above / tie / below)."""
    return clustering.seed_comparison(per_seed, "joint", clustering.UNIMODAL_SPACES).round(3)


def rejection_table(rejected: pd.DataFrame, n_input: int) -> pd.DataFrame:
    counts = rejected["reason"].value_counts() if len(rejected) else pd.Series(dtype=int)
    table = counts.rename_axis("reason").reset_index(name="products")
    table["share of input"] = (table["products"] / max(n_input, 1)).map("{:.1%}".format)
    return table


def quality_tables(
    classification_report: pd.DataFrame,
    retrieval_summary: pd.DataFrame,
    clustering_report: pd.DataFrame,
    rejected: pd.DataFrame,
    n_input: int,
    clustering_per_seed: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    tables = {
        "classifiers (macro-F1, 95% bootstrap CI, held-out group-aware folds)": classifier_table(classification_report),
        "retrieval (group 5-fold, fold mean ± 1.96·SE)": retrieval_table(retrieval_summary),
        "clustering (KMeans; AMI / V-measure vs known classes; the run's own seed)": clustering_table(
            clustering_report
        ),
    }
    if clustering_per_seed is not None and len(clustering_per_seed):
        recipes = (
            f" under {', '.join(clustering_per_seed['recipe'].unique())}" if "recipe" in clustering_per_seed else ""
        )
        seeds = f"{clustering_per_seed['seed'].nunique()} clustering seeds{recipes}"
        if "train_seed" in clustering_per_seed and clustering_per_seed["train_seed"].nunique() > 1:
            seeds += f" × {clustering_per_seed['train_seed'].nunique()} training seeds of the joint space"
        tables[f"clustering at equal k over {seeds} (AMI mean ± 95% t-interval; decides)"] = clustering_seed_table(
            clustering_per_seed
        )
    tables["rejections by reason"] = rejection_table(rejected, n_input)
    return tables


def to_markdown(title: str, tables: Mapping[str, pd.DataFrame], notes: Mapping[str, object]) -> str:
    parts = [f"# {title}", ""]
    parts += [f"- {key}: {value}" for key, value in notes.items()]
    for heading, table in tables.items():
        parts += ["", f"## {heading}", "", table.to_markdown(index=False) if len(table) else "(none)"]
    return "\n".join(parts) + "\n"


def to_json(tables: Mapping[str, pd.DataFrame], notes: Mapping[str, object]) -> str:
    def plain(value):
        if isinstance(value, (np.integer,)):
            return int(value)
        if isinstance(value, (np.floating,)):
            return None if np.isnan(value) else float(value)
        return value

    return json.dumps(
        {
            "notes": {k: plain(v) for k, v in notes.items()},
            "tables": {
                heading: [{k: plain(v) for k, v in row.items()} for row in table.to_dict("records")]
                for heading, table in tables.items()
            },
        },
        ensure_ascii=False,
        indent=1,
    )
