"""The final models: refit on all labelled rows (the meta-model on the outer out-of-fold probabilities, as
in stacking), saved as safetensors + JSON (never pickled) and loaded back."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors
from sklearn.linear_model import LogisticRegression
from upath import UPath

from wb_pipeline.core.data import storage
from wb_pipeline.core.models.fusion import (
    BrandTargetEncoding,
    LateFusionClassifier,
    load_brand_encoding,
    load_late_fusion,
    save_brand_encoding,
    save_late_fusion,
)

from .config import (
    FUSION_MODELS,
    MODEL_BLOCKS,
    OUTER,
    UNIMODAL_MODELS,
    ClassificationConfig,
    LabelData,
)
from .solver import Setting, _quiet_fits, align_classes, aligned_proba, fit_logistic, logistic_proba_by_row
from .stacking import fusion_inputs, meta_features


@dataclass
class LabelModels:
    """The final models of one label, refit on all its labelled rows."""

    label: str
    classes: list[str]
    base: dict[str, LogisticRegression]  # text, image, early_fusion (+ joint)
    late_fusion: LateFusionClassifier | None = None
    fusion_inputs: tuple[str, ...] = UNIMODAL_MODELS  # whose probabilities the meta-model reads
    brand_encoding: BrandTargetEncoding | None = None  # set when the meta-model reads tabular features

    @property
    def reads_tabular(self) -> bool:
        """Whether the late-fusion meta-model reads the tabular columns (and the brand encoding)."""
        return self.late_fusion is not None and self.brand_encoding is not None

    def predict_proba(
        self,
        model: str,
        features: Mapping[str, np.ndarray],
        tabular: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Class probabilities (columns = `classes`) of `model` for row-aligned features (text, image,
        joint); late fusion with tabular inputs also needs the products' tabular rows, row-aligned too:
        (numeric columns [n, 3], brands [n]) as `stacking._tabular_block` gives them."""
        if model in self.base:
            X = np.hstack([np.asarray(features[b], dtype=np.float32) for b in MODEL_BLOCKS[model]])
            base = self.base[model]
            return align_classes(logistic_proba_by_row(base, X), base.classes_, self.classes)
        if model == "mean_probability":
            unimodal = np.hstack([self.predict_proba(m, features) for m in UNIMODAL_MODELS])
            return unimodal.reshape(len(unimodal), len(UNIMODAL_MODELS), len(self.classes)).mean(axis=1)
        if model == "late_fusion":
            if self.late_fusion is None:
                raise ValueError(f"{self.label}: no late-fusion model fitted")
            X = np.hstack([self.predict_proba(m, features) for m in self.fusion_inputs])
            if self.brand_encoding is not None:
                if tabular is None:
                    raise ValueError(f"{self.label}: this late-fusion model reads tabular features; pass tabular")
                numeric, brands = tabular
                X = np.hstack([X, numeric, self.brand_encoding.transform(brands)])
            return aligned_proba(self.late_fusion, X, self.classes)
        raise ValueError(f"unknown model {model!r}; known: {(*self.base, *FUSION_MODELS)}")


def fit_final_base_models(
    data: LabelData, settings: Mapping[str, Setting], config: ClassificationConfig
) -> LabelModels:
    """Refit every base regression on all labelled rows with the chosen settings."""
    with _quiet_fits(config):
        base = {
            m: fit_logistic(data.blocks(m), data.y, settings[m], config.max_iter, config.row_space, config.solver)
            for m in data.models
        }
    return LabelModels(label=data.label, classes=list(data.classes), base=base)


def fit_final_late_fusion(
    probabilities: pd.DataFrame,
    label: str,
    classes: Sequence[str],
    config: ClassificationConfig,
    tabular: pd.DataFrame | None = None,
) -> tuple[LateFusionClassifier, tuple[str, ...], BrandTargetEncoding | None]:
    """The meta-model refit on the outer out-of-fold probabilities of all labelled rows (+ tabular
    features, the brand encoding out of fold), its inputs, and the brand encoding fitted on all rows
    (what predictions of new products use)."""
    own = probabilities[probabilities["label"] == label]
    inputs = fusion_inputs(own, config)
    tabular = tabular if config.fusion_tabular else None
    _, y, groups, X, encoding = meta_features(own, OUTER, None, inputs, tabular, classes, config)
    return config.late_fusion(classes, len(inputs)).fit(X, y, groups=groups), inputs, encoding


def save_logistic(model: LogisticRegression, folder: UPath, name: str, extra: dict | None = None) -> None:
    """coef_/intercept_ as safetensors and classes/settings as JSON (atomic writes, no pickle)."""
    # The fitted dtype is kept (float32 inputs give float32 weights), so reloaded predictions are identical.
    tensors = {"coef": np.ascontiguousarray(model.coef_), "intercept": np.ascontiguousarray(model.intercept_)}
    sidecar = {
        "classes": [str(c) for c in model.classes_],
        "C": float(model.C),
        "class_weight": model.class_weight if isinstance(model.class_weight, str) else "none",
        "n_features_in": int(model.n_features_in_),
        **(extra or {}),
    }
    storage.atomic_write_bytes(folder / f"{name}.safetensors", save_safetensors(tensors))
    storage.atomic_write_bytes(
        folder / f"{name}.json", json.dumps(sidecar, ensure_ascii=False, indent=1).encode("utf-8")
    )


def load_logistic(folder: UPath, name: str) -> LogisticRegression:
    """A fitted LogisticRegression rebuilt from `save_logistic` files."""
    sidecar = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    tensors = load_safetensors((folder / f"{name}.safetensors").read_bytes())
    weight = sidecar["class_weight"]
    model = LogisticRegression(C=sidecar["C"], class_weight=None if weight == "none" else weight)
    model.coef_, model.intercept_ = tensors["coef"], tensors["intercept"]
    model.classes_ = np.asarray(sidecar["classes"], dtype=object)
    model.n_features_in_ = int(sidecar["n_features_in"])
    if model.coef_.shape[1] != model.n_features_in_:
        raise ValueError(
            f"{folder}/{name}: coef has {model.coef_.shape[1]} columns, sidecar says {model.n_features_in_}"
        )
    return model


def save_label_models(models: LabelModels, folder: UPath) -> None:
    """Every model of a label under `folder` (base models; the late-fusion booster when fitted)."""
    for name, model in models.base.items():
        save_logistic(model, folder, name, {"label": models.label})
    storage.atomic_write_bytes(folder / "base_models.json", json.dumps(list(models.base)).encode("utf-8"))
    if models.late_fusion is not None:
        save_fusion_model(folder, models.label, models.late_fusion, models.fusion_inputs, models.brand_encoding)


def save_fusion_model(
    folder: UPath,
    label: str,
    model: LateFusionClassifier,
    inputs: Sequence[str],
    brand_encoding: BrandTargetEncoding | None,
) -> None:
    """The meta-model, its inputs and (when it reads tabular features) the brand encoding."""
    if brand_encoding is not None:
        save_brand_encoding(brand_encoding, folder)
    save_late_fusion(model, folder, {"label": label, "inputs": list(inputs), "tabular": brand_encoding is not None})


def load_label_models(folder: UPath, label: str) -> LabelModels:
    """`LabelModels` from `save_label_models` files (the late-fusion model only if it was saved)."""
    names = json.loads((folder / "base_models.json").read_text(encoding="utf-8"))
    base = {name: load_logistic(folder, name) for name in names}
    models = LabelModels(label=label, classes=[str(c) for c in base["text"].classes_], base=base)
    if (folder / "late_fusion.json").exists():
        sidecar = json.loads((folder / "late_fusion.json").read_text(encoding="utf-8"))
        models.late_fusion = load_late_fusion(folder)
        models.fusion_inputs = tuple(sidecar["inputs"])
        models.brand_encoding = load_brand_encoding(folder) if sidecar["tabular"] else None
    return models
