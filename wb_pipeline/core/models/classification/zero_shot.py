"""Zero-shot baseline: each class name's phrase against the products' joint vectors (argmax of cosines,
nothing trained), on the same outer rows as the trained models."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .config import OUTER, UNIMODAL_MODELS, ZERO_SHOT_MODEL, LabelSkip


def _default_class_phrases() -> dict[str, str]:
    # isadult's values are 'True'/'False', which say nothing to a text encoder: short descriptions instead.
    return {"isadult=True": "товары для взрослых", "isadult=False": "обычный товар"}


@dataclass(frozen=True)
class ZeroShotConfig:
    """How class names are scored against products in the joint space (nothing is trained).

    A class is encoded as `template.format(phrase)`, where the phrase is `class_phrases['<label>=<class>']`
    when given, else the class value itself ('для женщин', 'зима', a category name)."""

    # which joint vector: the heads' (text_joint | image_joint | heads_joint = both), where a class name's text
    # vector can be projected; `combined_joint` is the product vector of the standardised encoder vectors
    joint_column: str = "heads_joint"
    template: str = "{}"  # the text encoder adds its own prompt ('passage: ' for e5)
    class_phrases: dict[str, str] = field(default_factory=_default_class_phrases)

    def __post_init__(self) -> None:
        # Imported here: core.models.contrastive imports torch (~0.6 GB per process), and every fold-parallel
        # worker process imports this module to run its folds, which need no torch.
        from wb_pipeline.core.models.contrastive import JOINT_COLUMNS

        if self.joint_column not in JOINT_COLUMNS:
            raise ValueError(f"ZeroShotConfig.joint_column must be one of {JOINT_COLUMNS}, got {self.joint_column!r}")
        if "{}" not in self.template:
            raise ValueError(f"ZeroShotConfig.template must hold '{{}}' for the class phrase, got {self.template!r}")
        malformed = [key for key in self.class_phrases if "=" not in key]
        if malformed:
            raise ValueError(f"ZeroShotConfig.class_phrases keys must read '<label>=<class>', got {malformed}")


def class_phrases(label: str, classes: Sequence[str], phrases: Mapping[str, str]) -> list[str]:
    """The text standing for each class of `label` (same order): its configured phrase or the class value."""
    return [str(phrases.get(f"{label}={c}", c)) for c in classes]


def softmax_over_cosines(cosines: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of cosine similarities divided by `temperature` (CLIP's class probabilities)."""
    if temperature <= 0:
        raise ValueError(f"softmax_over_cosines: temperature must be positive, got {temperature}")
    logits = np.asarray(cosines, dtype=np.float64) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def zero_shot_probabilities(
    product_vectors: np.ndarray, class_vectors: np.ndarray, temperature: float = 0.01
) -> np.ndarray:
    """Softmax over cosine similarities between product vectors and class-name vectors of one space."""
    products = product_vectors / np.maximum(np.linalg.norm(product_vectors, axis=1, keepdims=True), 1e-12)
    names = class_vectors / np.maximum(np.linalg.norm(class_vectors, axis=1, keepdims=True), 1e-12)
    return softmax_over_cosines(products @ names.T, temperature)


def zero_shot_predictions(
    probabilities: pd.DataFrame,
    label: str,
    classes: Sequence[str],
    joint_nm: Sequence[str],
    joint_vectors: np.ndarray,
    score: Callable[[list[str], np.ndarray], np.ndarray],
    phrases: Mapping[str, str],
    temperature: float,
) -> pd.DataFrame | LabelSkip:
    """'zero_shot' rows (stage 'outer') for exactly the rows the trained models are scored on.

    The evaluated rows are `label`'s outer rows of the text model (each labelled row once, with its
    fold kept for reference); `score(phrases, product_vectors)` returns cosines [n, k] in the joint
    space (e.g. `core.models.contrastive.zero_shot_scores`), turned into probabilities by a softmax at
    `temperature`. When a row has no joint vector the label is skipped (reason
    'missing_joint_vectors'): a score on fewer rows would not be comparable with the others."""
    rows = probabilities[
        (probabilities["label"] == label)
        & (probabilities["stage"] == OUTER)
        & (probabilities["model"] == UNIMODAL_MODELS[0])
    ].sort_values("row")
    position = pd.Series(np.arange(len(joint_nm)), index=pd.Index(np.asarray(joint_nm, dtype=object)))
    position = position[~position.index.duplicated()]
    found = rows["nm"].isin(position.index).to_numpy()
    if not found.all():
        missing = rows.loc[~found, "nm"].tolist()
        return LabelSkip(
            label,
            "missing_joint_vectors",
            f"{len(missing)} of {len(rows)} evaluated rows have no joint vector (e.g. {missing[:3]})",
        )
    vectors = np.asarray(joint_vectors, dtype=np.float32)[position.loc[rows["nm"]].to_numpy()]
    cosines = np.asarray(score(class_phrases(label, classes, phrases), vectors), dtype=np.float64)
    if cosines.shape != (len(rows), len(classes)):
        raise ValueError(f"zero-shot {label}: scores of shape {cosines.shape}, expected {(len(rows), len(classes))}")
    proba = softmax_over_cosines(cosines, temperature)
    return pd.DataFrame(
        {
            "label": label,
            "model": ZERO_SHOT_MODEL,
            "stage": OUTER,
            "fold": rows["fold"].to_numpy(),
            "row": rows["row"].to_numpy(),
            "nm": rows["nm"].to_numpy(),
            "y": rows["y"].to_numpy(),
            "proba": list(proba),
        }
    )
