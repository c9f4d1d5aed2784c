"""When the joint-space heads and the classifiers must be trained again: a pure rule.

Two triggers, never "every drop":
- **drift**: a drop judged since the last training has a domain-classifier AUC (text or image) above
  `RetrainPolicy.drift_auc_threshold` (or, with `drift_by="mmd"`, an MMD p-value below
  `drift_mmd_p_threshold`);
- **accumulated share**: the products added to the catalogue since the last training are at least
  `added_share_threshold` of the catalogue the models were trained on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from wb_pipeline.core.data import storage


@dataclass(frozen=True)
class RetrainPolicy:
    drift_auc_threshold: float = 0.8
    drift_mmd_p_threshold: float = 0.01
    drift_by: Literal["domain_auc", "mmd"] = "domain_auc"
    added_share_threshold: float = 0.25  # products added since training / catalogue at training
    on_drift: bool = True
    on_added_share: bool = True

    def __post_init__(self) -> None:
        if not 0.5 <= self.drift_auc_threshold <= 1.0:
            raise ValueError(f"RetrainPolicy.drift_auc_threshold must be in [0.5, 1], got {self.drift_auc_threshold}")
        if not 0.0 < self.drift_mmd_p_threshold < 1.0:
            raise ValueError(f"RetrainPolicy.drift_mmd_p_threshold must be in (0, 1), got {self.drift_mmd_p_threshold}")
        if not self.added_share_threshold > 0:
            raise ValueError(f"RetrainPolicy.added_share_threshold must be > 0, got {self.added_share_threshold}")
        if self.drift_by not in ("domain_auc", "mmd"):
            raise ValueError(f"RetrainPolicy.drift_by must be 'domain_auc' or 'mmd', got {self.drift_by!r}")


@dataclass(frozen=True)
class DropDrift:
    """The figures of one drop judged since the last training (from its drift summary)."""

    drop: str
    judged: bool
    text_domain_auc: float | None = None
    image_domain_auc: float | None = None
    text_mmd_p_value: float | None = None
    image_mmd_p_value: float | None = None


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reasons: list[str] = field(default_factory=list)  # why it fires (empty when it does not)
    figures: dict = field(default_factory=dict)  # what was compared, fired or not

    @property
    def trigger(self) -> str:
        kinds = sorted({r.split(":", 1)[0] for r in self.reasons})
        return "+".join(kinds) if kinds else "none"


def _present(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def decide_retrain(
    drifts: Sequence[DropDrift], catalogue_at_training: int, catalogue_now: int, policy: RetrainPolicy
) -> RetrainDecision:
    """Whether to retrain, with one reason per trigger that fired ("drift: ...", "added_share: ...")."""
    if catalogue_at_training <= 0:
        raise ValueError(f"decide_retrain: catalogue_at_training must be > 0, got {catalogue_at_training}")
    reasons = []
    worst: dict[str, float] = {}
    if policy.on_drift:
        for d in drifts:
            if not d.judged:
                continue
            for modality in ("text", "image"):
                if policy.drift_by == "domain_auc":
                    auc = getattr(d, f"{modality}_domain_auc")
                    if _present(auc):
                        worst[f"max_{modality}_domain_auc"] = max(worst.get(f"max_{modality}_domain_auc", 0.0), auc)
                        if auc > policy.drift_auc_threshold:
                            reasons.append(
                                f"drift: drop {d.drop} {modality} domain AUC {auc:.3f} > {policy.drift_auc_threshold:g}"
                            )
                else:
                    p = getattr(d, f"{modality}_mmd_p_value")
                    if _present(p):
                        worst[f"min_{modality}_mmd_p"] = min(worst.get(f"min_{modality}_mmd_p", 1.0), p)
                        if p < policy.drift_mmd_p_threshold:
                            reasons.append(
                                f"drift: drop {d.drop} {modality} MMD p {p:.4f} < {policy.drift_mmd_p_threshold:g}"
                            )
    added = max(0, catalogue_now - catalogue_at_training)
    share = added / catalogue_at_training
    if policy.on_added_share and share >= policy.added_share_threshold:
        reasons.append(
            f"added_share: {added} products added since the last training = {share:.1%} of the "
            f"{catalogue_at_training} trained on >= {policy.added_share_threshold:.0%}"
        )
    figures = {
        "drops_judged": sum(d.judged for d in drifts),
        "catalogue_at_training": catalogue_at_training,
        "catalogue_now": catalogue_now,
        "added_share": round(share, 4),
        **{k: round(v, 4) for k, v in worst.items()},
    }
    return RetrainDecision(bool(reasons), reasons, figures)


# --- what the models were trained on ------------------------------------------------------------

MANIFEST_FILE = "training_manifest.json"


@dataclass(frozen=True)
class TrainingManifest:
    """Written beside the saved classifiers by each training: the batches (`main` + drops) and the
    number of clean products the models saw, and the class shares of each label's training rows.
    Drift compares a drop with these batches; the accumulated-share trigger with this count."""

    batches: tuple[str, ...]
    catalogue_products: int
    label_shares: dict  # label -> {class: share}

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "batches": list(self.batches),
                "catalogue_products": int(self.catalogue_products),
                "label_shares": self.label_shares,
            },
            ensure_ascii=False,
            sort_keys=True,
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> TrainingManifest:
        raw = json.loads(data)
        if not isinstance(raw, dict) or not {"batches", "catalogue_products", "label_shares"} <= set(raw):
            raise ValueError("training manifest: expected keys batches, catalogue_products, label_shares")
        shares = {
            str(label): {str(c): float(s) for c, s in classes.items()} for label, classes in raw["label_shares"].items()
        }
        return cls(tuple(str(b) for b in raw["batches"]), int(raw["catalogue_products"]), shares)


def save_training_manifest(manifest: TrainingManifest, folder) -> None:
    storage.atomic_write_bytes(folder / MANIFEST_FILE, manifest.to_json())


def load_training_manifest(folder) -> TrainingManifest | None:
    """The manifest under `folder`, or None when the models predate it."""
    path = folder / MANIFEST_FILE
    return TrainingManifest.from_json(path.read_text(encoding="utf-8")) if path.exists() else None
