"""Drift of a drop of new products against the catalogue the models were trained on.

Two two-sample statistics per modality (text vectors, image vectors), both computed, one decides:

- **domain classifier AUC** (the decision, `DriftConfig.decide_by="domain_auc"`): a logistic regression
  learns "drop vs training catalogue" from the vectors; its held-out AUC (group-aware folds, so a
  product and its duplicates are never on both sides of a split) is 0.5 when the drop cannot be told
  apart from the catalogue and 1.0 when it always can. It is an effect size: a bigger drop does not
  push it towards "drifted" by itself.
- **MMD² with an RBF kernel** (median-heuristic bandwidth) and a permutation p-value: a test, so with
  enough products every tiny real difference becomes "significant"; reported beside the AUC
  (`decide_by="mmd"` makes it decide).

Labels: the Jensen–Shannon distance (base 2, in [0, 1]) between the drop's predicted class shares and
the training label shares, per label; with it, the same distance expected from sampling alone (the
median over draws of as many products from the training shares), because 30 products cannot fill 60
classes the way 3,000 did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

MODALITIES = ("text", "image")


@dataclass(frozen=True)
class DriftConfig:
    """Drift thresholds and the cost knobs of the statistics (every value editable in the launchpad)."""

    decide_by: Literal["domain_auc", "mmd"] = "domain_auc"
    domain_auc_threshold: float = 0.8  # a drop is drifted when text OR image AUC exceeds this
    mmd_p_threshold: float = 0.01  # with decide_by="mmd": drifted when the permutation p-value is below this
    label_js_threshold: float = 0.5  # a label has shifted when JS(drop, train) - JS expected by sampling > this
    folds: int = 5
    logistic_c: float = 1.0
    mmd_permutations: int = 200
    max_reference_rows: int = 2000  # training products sampled as the reference (cost bound)
    min_drop_rows: int = 10  # fewer products: no verdict ("too small to judge"), never flagged
    label_null_draws: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.domain_auc_threshold <= 1.0:
            raise ValueError(f"DriftConfig.domain_auc_threshold must be in [0.5, 1], got {self.domain_auc_threshold}")
        if not 0.0 < self.mmd_p_threshold < 1.0:
            raise ValueError(f"DriftConfig.mmd_p_threshold must be in (0, 1), got {self.mmd_p_threshold}")
        if not 0.0 <= self.label_js_threshold <= 1.0:
            raise ValueError(f"DriftConfig.label_js_threshold must be in [0, 1], got {self.label_js_threshold}")
        if self.folds < 2 or self.mmd_permutations < 1 or self.max_reference_rows < 2 or self.min_drop_rows < 2:
            raise ValueError(
                "DriftConfig: folds >= 2, mmd_permutations >= 1, max_reference_rows >= 2, min_drop_rows >= 2"
            )
        if 1.0 / (1 + self.mmd_permutations) >= self.mmd_p_threshold:
            raise ValueError(
                f"DriftConfig: {self.mmd_permutations} permutations cannot give p < {self.mmd_p_threshold} "
                f"(smallest p = 1/{1 + self.mmd_permutations}); raise mmd_permutations"
            )
        if self.decide_by not in ("domain_auc", "mmd"):
            raise ValueError(f"DriftConfig.decide_by must be 'domain_auc' or 'mmd', got {self.decide_by!r}")


def _two_samples(reference: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, drop = np.asarray(reference, np.float64), np.asarray(drop, np.float64)
    if reference.ndim != 2 or drop.ndim != 2 or reference.shape[1] != drop.shape[1]:
        raise ValueError(f"drift: reference {reference.shape} and drop {drop.shape} must be [n, d] with the same d")
    if len(reference) < 2 or len(drop) < 2:
        raise ValueError(f"drift: need >= 2 rows on each side, got {len(reference)} reference and {len(drop)} drop")
    X = np.vstack([reference, drop])
    y = np.r_[np.zeros(len(reference), int), np.ones(len(drop), int)]
    return X, y


def domain_classifier_auc(
    reference: np.ndarray,
    drop: np.ndarray,
    groups: Sequence[int] | None = None,
    folds: int = 5,
    c: float = 1.0,
    seed: int = 0,
) -> float:
    """Held-out ROC AUC of a logistic regression telling drop rows (1) from reference rows (0).

    `groups` (one id per row of reference then drop; default: every row its own group) keeps
    duplicates on one side of every split. Folds are capped by the smaller side's group count."""
    X, y = _two_samples(reference, drop)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    if len(groups) != len(y):
        raise ValueError(f"domain_classifier_auc: {len(groups)} groups for {len(y)} rows")
    smaller = min(len(np.unique(groups[y == 0])), len(np.unique(groups[y == 1])))
    n_splits = max(2, min(folds, smaller))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    model = LogisticRegression(C=c, max_iter=1000, class_weight="balanced")
    proba = cross_val_predict(model, X, y, groups=groups, cv=splitter, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def mmd_permutation_test(
    reference: np.ndarray, drop: np.ndarray, permutations: int = 200, seed: int = 0
) -> tuple[float, float, float]:
    """(MMD², permutation p-value, kernel bandwidth) with an RBF kernel whose bandwidth is the median
    pairwise distance of the pooled rows. p = (1 + #permuted MMD² >= observed) / (1 + permutations)."""
    X, y = _two_samples(reference, drop)
    distances = euclidean_distances(X, squared=True)
    upper = distances[np.triu_indices(len(X), 1)]
    bandwidth = float(np.sqrt(np.median(upper))) if np.median(upper) > 0 else 1.0
    kernel = np.exp(-distances / (2.0 * bandwidth**2))

    def mmd2(mask: np.ndarray) -> float:
        a, b = np.flatnonzero(~mask), np.flatnonzero(mask)
        kaa, kbb, kab = kernel[np.ix_(a, a)], kernel[np.ix_(b, b)], kernel[np.ix_(a, b)]
        na, nb = len(a), len(b)  # unbiased: the diagonals are left out
        return float(
            (kaa.sum() - np.trace(kaa)) / (na * (na - 1))
            + (kbb.sum() - np.trace(kbb)) / (nb * (nb - 1))
            - 2.0 * kab.mean()
        )

    observed_mask = y == 1
    observed = mmd2(observed_mask)
    rng = np.random.default_rng(seed)
    exceed = sum(mmd2(rng.permutation(observed_mask)) >= observed for _ in range(permutations))
    return observed, float((1 + exceed) / (1 + permutations)), bandwidth


def label_shares(values: Sequence) -> pd.Series:
    """Class shares of the non-missing values (sum 1), sorted by class name."""
    values = pd.Series(list(values), dtype=object).dropna().astype(str)
    return values.value_counts(normalize=True).sort_index()


def js_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen–Shannon distance (base 2, 0 = same shares, 1 = disjoint) over the union of classes."""
    classes = sorted(set(p) | set(q))
    a = np.array([float(p.get(c, 0.0)) for c in classes])
    b = np.array([float(q.get(c, 0.0)) for c in classes])
    if a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("js_distance: both distributions need mass")
    return float(jensenshannon(a / a.sum(), b / b.sum(), base=2))


def expected_js_by_sampling(shares: Mapping[str, float], n: int, draws: int = 200, seed: int = 0) -> float:
    """Median JS distance between `shares` and the empirical shares of `n` products drawn from it: what
    sampling alone gives, which is large for few products over many classes."""
    classes = list(shares)
    p = np.array([shares[c] for c in classes], float)
    p = p / p.sum()
    rng = np.random.default_rng(seed)
    values = [float(jensenshannon(p, counts / n, base=2)) for counts in rng.multinomial(n, p, size=draws)]
    return float(np.median(values))


@dataclass
class DriftReport:
    """Figures, flags and a plain-language verdict for one drop."""

    drop_rows: int
    reference_rows: int
    decide_by: str
    modality: pd.DataFrame  # modality, rows, domain_auc, mmd2, mmd_p_value, bandwidth, drifted
    labels: (
        pd.DataFrame
    )  # label, products, js_distance, js_expected_by_sampling, js_excess, top_drop, top_train, shifted
    judged: bool
    drifted: bool  # vectors drifted (the retraining rule reads this and the AUC/p-value)
    label_shift: bool
    verdict: str
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Flat figures for metadata and for the retraining rule."""
        out = {
            "drop_rows": self.drop_rows,
            "reference_rows": self.reference_rows,
            "decide_by": self.decide_by,
            "judged": self.judged,
            "drifted": self.drifted,
            "label_shift": self.label_shift,
        }
        for row in self.modality.to_dict("records"):
            for key in ("domain_auc", "mmd2", "mmd_p_value"):
                value = row[key]
                out[f"{row['modality']}_{key}"] = (
                    None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
                )
        out["max_label_js_excess"] = float(self.labels["js_excess"].max()) if len(self.labels) else None
        return out


def _modality_drifted(row: dict, config: DriftConfig) -> bool:
    if config.decide_by == "mmd":
        return bool(row["mmd_p_value"] < config.mmd_p_threshold)
    return bool(row["domain_auc"] > config.domain_auc_threshold)


def assess_drift(
    reference: Mapping[str, np.ndarray],
    drop: Mapping[str, np.ndarray],
    predicted: pd.DataFrame,
    train_shares: Mapping[str, Mapping[str, float]],
    config: DriftConfig,
    reference_groups: Sequence[int] | None = None,
    drop_groups: Sequence[int] | None = None,
) -> DriftReport:
    """Drift of one drop. `reference` / `drop`: modality -> row-aligned vectors (a modality missing on
    either side is reported as not measured); `predicted`: the drop's predictions (label, predicted);
    `train_shares`: label -> class -> share of the training labels; groups: duplicate-group ids (the
    two sides share one numbering so a drop product duplicating a catalogue one is in its group)."""
    n_drop = max((len(v) for v in drop.values()), default=0)
    n_ref = max((len(v) for v in reference.values()), default=0)
    rng = np.random.default_rng(config.seed)
    rows, reasons = [], []
    judged = n_drop >= config.min_drop_rows
    for modality in MODALITIES:
        ref, new = reference.get(modality), drop.get(modality)
        if ref is None or new is None or len(ref) < 2 or len(new) < 2:
            rows.append(
                {
                    "modality": modality,
                    "rows": 0 if new is None else len(new),
                    "domain_auc": np.nan,
                    "mmd2": np.nan,
                    "mmd_p_value": np.nan,
                    "bandwidth": np.nan,
                    "drifted": False,
                }
            )
            reasons.append(f"{modality}: not measured (no vectors on one side)")
            continue
        keep = np.arange(len(ref))
        if len(ref) > config.max_reference_rows:
            keep = np.sort(rng.choice(len(ref), config.max_reference_rows, replace=False))
        groups = None
        if reference_groups is not None and drop_groups is not None:
            groups = np.r_[np.asarray(reference_groups)[keep], np.asarray(drop_groups)]
        auc = domain_classifier_auc(ref[keep], new, groups, config.folds, config.logistic_c, config.seed)
        mmd2, p_value, bandwidth = mmd_permutation_test(ref[keep], new, config.mmd_permutations, config.seed)
        row = {
            "modality": modality,
            "rows": len(new),
            "domain_auc": auc,
            "mmd2": mmd2,
            "mmd_p_value": p_value,
            "bandwidth": bandwidth,
        }
        row["drifted"] = judged and _modality_drifted(row, config)
        rows.append(row)
    modality = pd.DataFrame(rows)
    label_rows = []
    for label, part in predicted.groupby("label", sort=True):
        if label not in train_shares or not len(train_shares[label]):
            continue
        drop_share = label_shares(part["predicted"])
        if drop_share.empty:
            continue
        train = dict(train_shares[label])
        distance = js_distance(drop_share.to_dict(), train)
        expected = expected_js_by_sampling(
            train, int(part["predicted"].notna().sum()), config.label_null_draws, config.seed
        )
        label_rows.append(
            {
                "label": label,
                "products": int(part["predicted"].notna().sum()),
                "js_distance": distance,
                "js_expected_by_sampling": expected,
                "js_excess": distance - expected,
                "top_drop": f"{drop_share.idxmax()} ({drop_share.max():.0%})",
                "top_train": f"{max(train, key=train.get)} ({max(train.values()):.0%})",
                "shifted": judged and distance - expected > config.label_js_threshold,
            }
        )
    labels = pd.DataFrame(
        label_rows,
        columns=[
            "label",
            "products",
            "js_distance",
            "js_expected_by_sampling",
            "js_excess",
            "top_drop",
            "top_train",
            "shifted",
        ],
    )
    drifted = bool(modality["drifted"].any())
    label_shift = bool(labels["shifted"].any()) if len(labels) else False
    verdict = _verdict(modality, labels, judged, drifted, label_shift, n_drop, config)
    return DriftReport(
        n_drop,
        min(n_ref, config.max_reference_rows),
        config.decide_by,
        modality,
        labels,
        judged,
        drifted,
        label_shift,
        verdict,
        reasons,
    )


def _verdict(
    modality: pd.DataFrame,
    labels: pd.DataFrame,
    judged: bool,
    drifted: bool,
    label_shift: bool,
    n_drop: int,
    config: DriftConfig,
) -> str:
    if not judged:
        return (
            f"Too small to judge: {n_drop} products (< min_drop_rows={config.min_drop_rows}); "
            "figures are shown but no drift is declared."
        )
    measured = modality.dropna(subset=["domain_auc"])
    figures = "; ".join(
        f"{r.modality}: a classifier tells the drop from the training catalogue with AUC "
        f"{r.domain_auc:.2f} (0.5 = indistinguishable), MMD p = {r.mmd_p_value:.3f}"
        for r in measured.itertuples()
    )
    rule = (
        f"AUC > {config.domain_auc_threshold:g}"
        if config.decide_by == "domain_auc"
        else f"MMD p < {config.mmd_p_threshold:g}"
    )
    if drifted:
        which = ", ".join(measured.loc[measured["drifted"], "modality"])
        head = (
            f"DRIFTED ({which}; rule {rule}): these products are unlike what the models were trained on — "
            "their predictions are less trustworthy and retraining is due."
        )
    else:
        head = f"In distribution (rule {rule}): the drop looks like the training catalogue."
    if label_shift:
        shifted = ", ".join(labels.loc[labels["shifted"], "label"])
        head += f" Predicted label mix shifted for: {shifted}."
    return f"{head} {figures}."
