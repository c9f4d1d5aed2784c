"""Per-label attribute classifiers on the embeddings, evaluated with nested, group-aware CV.

For each label (sex, age_restrictions, season, fragility, category, sub_category, isadult):

- `prepare_label` picks the labelled rows, drops classes too small for the folds (counted) and
  says why a label is skipped (`LabelSkip`) instead of raising;
- `cross_validate_label` runs the OUTER group-aware K-fold. Inside every outer training part an
  INNER group-aware K-fold chooses the LogisticRegression settings (class_weight, C) per modality
  by inner macro-F1 and yields inner out-of-fold probabilities; then the chosen model is refit on
  the whole outer training part and predicts the outer validation part. Modalities: text, image,
  early fusion (concatenated vectors). Its output (`PROBABILITY_COLUMNS`) holds the 'outer'
  predictions (every row once, by models that never saw it) and the 'inner' out-of-fold
  probabilities of the training rows of each outer fold;
- `cross_validate_fusion` trains the late-fusion meta-model of outer fold f ONLY on the 'inner'
  probabilities of fold f's training rows and predicts fold f's 'outer' probabilities, so nothing
  about a validation row ever reaches the meta-model; mean-probability fusion is the baseline;
- `zero_shot_predictions` scores each class name against the products' joint text-image vectors
  (argmax of cosines; nothing trained) on the SAME outer rows, as the baseline model 'zero_shot';
- `build_report` scores every model on the outer predictions (macro/weighted F1, minority-class
  F1 for binary labels, per-class F1, bootstrap intervals);
- `fit_final_base_models` / `fit_final_late_fusion` refit every model on all labelled rows (the meta-model on the outer
  out-of-fold probabilities, as in stacking) for the test predictions.

Rare classes: a class with fewer than `min_class_rows` (>= n_splits) labelled rows cannot be
present in every fold, so its rows are DROPPED from training and evaluation of that label and
counted (`LabelData.dropped_classes`); the models never predict it. Merging them into an 'other'
class was rejected: 'other' is not a value of any label vocabulary and mixes unrelated classes.
"""

from .config import (
    ALL_MODELS,
    BASE_MODELS,
    FUSION_MODELS,
    INNER,
    JOINT_MODEL,
    LABELS,
    MODALITIES,
    MODEL_BLOCKS,
    OUTER,
    PROBABILITY_COLUMNS,
    UNIMODAL_MODELS,
    ZERO_SHOT_MODEL,
    ClassificationConfig,
    LabelData,
    LabelSkip,
    available_models,
    prepare_label,
    product_groups,
)
from .cross_validation import (
    cross_validate_label,
    label_classes,
)
from .persistence import (
    LabelModels,
    fit_final_base_models,
    fit_final_late_fusion,
    load_label_models,
    save_fusion_model,
    save_label_models,
)
from .report import build_report, predicted_classes
from .solver import aligned_proba, fit_logistic, grid
from .stacking import cross_validate_fusion, fusion_start_name
from .zero_shot import (
    ZeroShotConfig,
    class_phrases,
    zero_shot_predictions,
    zero_shot_probabilities,
)

__all__ = [
    "ALL_MODELS",
    "BASE_MODELS",
    "ClassificationConfig",
    "FUSION_MODELS",
    "INNER",
    "LabelData",
    "LabelModels",
    "LabelSkip",
    "MODEL_BLOCKS",
    "OUTER",
    "PROBABILITY_COLUMNS",
    "UNIMODAL_MODELS",
    "ZERO_SHOT_MODEL",
    "ZeroShotConfig",
    "aligned_proba",
    "build_report",
    "class_phrases",
    "cross_validate_fusion",
    "cross_validate_label",
    "fit_final_base_models",
    "fit_final_late_fusion",
    "fit_logistic",
    "fusion_start_name",
    "grid",
    "label_classes",
    "load_label_models",
    "predicted_classes",
    "prepare_label",
    "product_groups",
    "save_fusion_model",
    "save_label_models",
    "zero_shot_predictions",
    "zero_shot_probabilities",
    "LABELS",
    "MODALITIES",
    "JOINT_MODEL",
    "available_models",
]
