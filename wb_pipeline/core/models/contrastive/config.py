"""The joint space's settings (`ContrastiveConfig`) and its saved files' names and format version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MODEL_FORMAT_VERSION = 3  # 2: the closed-form (CCA) buffers; 3: the product space's buffers


WEIGHTS_FILE = "model.safetensors"


CONFIG_FILE = "model.json"


@dataclass(frozen=True)
class ContrastiveConfig:
    """Projection heads, optimisation and early stopping of the joint text–image space."""

    # 384 = the default text encoder's (e5-small) dimension, so that its side gets the residual head
    joint_dim: int = 384
    # The closed-form part of the joint space: regularised CCA (ridge `closed_form_regularization` ×
    # the mean eigenvalue on each side's covariance) fitted on the training pairs, `closed_form_dim`
    # canonical directions (0 = heads only). Each product vector is the normalised concatenation of the
    # CCA vector (× `closed_form_weight`) and the trained head's vector: on ~1k real pairs the CLIP heads
    # alone lost to CCA on Recall@1 and won on Recall@10; together they beat both (docs/DESIGN-NOTES.md).
    closed_form_dim: int = 64
    closed_form_regularization: float = 0.5
    closed_form_weight: float = 1.0
    # "residual": a side whose input already has `joint_dim` dimensions (the text side by default) maps
    # x → x + W·x with W zero-initialised, so training starts from the encoder's own geometry and weight
    # decay pulls back to it (LiT / CLIP-Adapter idea); the other side gets a linear head into that space.
    # On ~1k real pairs the linear heads re-learnt the text space from scratch and lost its category
    # structure at equal k (docs/DESIGN-NOTES.md). "linear" / "mlp": both sides learn their map.
    head: Literal["residual", "linear", "mlp"] = "residual"
    mlp_hidden_dim: int = 512
    dropout: float = 0.1  # MLP heads only
    # Text-neighbourhood distillation: besides the CLIP loss, within each batch the softmax over each
    # side's head similarities (text-text, image-image) is pulled toward the softmax over the RAW text
    # encoder's cosines (KL at `neighbourhood_temperature`), in training and in the early-stopping loss.
    # The photo side so learns which products the text encoder calls neighbours, not only its own pair.
    # On ~1k real pairs the CLIP loss alone gave category AMI 0.695 / 0.634 / 0.601 over three training
    # seeds (raw text 0.617); with this term 0.689 / 0.688 / 0.703 (docs/DESIGN-NOTES.md). 0 switches it off.
    neighbourhood_weight: float = 1.0
    neighbourhood_temperature: float = 0.05
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    init_temperature: float = 0.07  # CLIP's initial temperature
    learn_temperature: bool = True
    max_logit_scale: float = 100.0  # CLIP's clamp on 1/temperature
    max_steps: int = 3000
    eval_every_steps: int = 10
    patience_evals: int = 10  # stop after this many validations without improvement
    min_improvement: float = 1e-4
    validation_fraction: float = 0.2
    # After early stopping, train a fresh model (CCA part and heads) on ALL pairs for the same number of
    # epochs the best validation state took: the held-out figures come from the early-stopping model, and
    # the model that is kept has not left a fifth of a small catalogue unused (docs/DESIGN-NOTES.md).
    refit_on_all_pairs: bool = True
    # Products the model is trained and its product space fitted on: a seeded sample of this many when
    # the catalogue is larger (0: all), so the step's memory follows the setting, not the catalogue.
    # 200,000 pairs are ~520 steps of 384 per epoch at the batch size: more than `max_steps` visits.
    max_training_pairs: int = 200_000
    recall_ks: tuple[int, ...] = (1, 5, 10)
    # The product vector (clusters, similar products, the default search index): each encoder's vectors
    # centred and scaled, the text given this share of the variance, [√s·text, √(1−s)·image]. None: read
    # from the catalogue (core.models.product_space: cross-fitted equal-k AMI over a grid of
    # `product_share_step` on `product_share_halves` random halves when at least
    # `product_share_min_labelled` products have a known class, else the R² rule).
    product_text_share: float | None = None
    product_share_step: float = 0.1
    product_share_halves: int = 20
    product_share_min_labelled: int = 50
    seed: int = 0
    deterministic: bool = True
    # Tiny matmuls: one thread is fastest, and on a shared CPU extra threads mostly spin-wait.
    # 0 keeps torch's current setting.
    num_threads: int = 1
    # Needs the encoders in the training loop; refused with precomputed embeddings (see module doc).
    unfreeze_text_layers: int = 0
    unfreeze_image_layers: int = 0

    def __post_init__(self) -> None:
        if self.product_text_share is not None and not 0.0 <= self.product_text_share <= 1.0:
            raise ValueError(f"ContrastiveConfig: product_text_share must be in [0, 1], got {self.product_text_share}")
        if (
            not 0.0 < self.product_share_step <= 1.0
            or self.product_share_halves < 1
            or self.product_share_min_labelled < 2
        ):
            raise ValueError(
                "ContrastiveConfig: product_share_step must be in (0, 1], product_share_halves >= 1, "
                "product_share_min_labelled >= 2"
            )
        positive = ("joint_dim", "mlp_hidden_dim", "batch_size", "max_steps", "eval_every_steps", "patience_evals")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"ContrastiveConfig.{name} must be positive, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("ContrastiveConfig.batch_size must be at least 2 (in-batch negatives)")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"ContrastiveConfig.validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not (self.init_temperature > 0 and 1.0 / self.init_temperature <= self.max_logit_scale):
            raise ValueError("ContrastiveConfig.init_temperature must be > 0 and 1/init_temperature <= max_logit_scale")
        if self.head not in ("residual", "linear", "mlp"):
            raise ValueError(f"ContrastiveConfig.head must be 'residual', 'linear' or 'mlp', got {self.head!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ContrastiveConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.num_threads < 0:
            raise ValueError("ContrastiveConfig.num_threads must be >= 0 (0 = keep torch's setting)")
        if self.closed_form_dim < 0 or self.closed_form_regularization <= 0 or self.closed_form_weight <= 0:
            raise ValueError(
                "ContrastiveConfig: closed_form_dim must be >= 0, closed_form_regularization and closed_form_weight > 0"
            )
        if self.unfreeze_text_layers < 0 or self.unfreeze_image_layers < 0:
            raise ValueError("ContrastiveConfig.unfreeze_*_layers must be >= 0")
        if self.unfreeze_text_layers > 0 or self.unfreeze_image_layers > 0:
            raise ValueError(
                "ContrastiveConfig: unfreezing encoder layers "
                f"(text={self.unfreeze_text_layers}, image={self.unfreeze_image_layers}) needs the encoders "
                "inside the training loop, but this trainer works on precomputed (frozen) embeddings; "
                "set unfreeze_text_layers = unfreeze_image_layers = 0"
            )
        if self.neighbourhood_weight < 0 or self.neighbourhood_temperature <= 0:
            raise ValueError("ContrastiveConfig: neighbourhood_weight must be >= 0 and neighbourhood_temperature > 0")
        if not self.recall_ks or min(self.recall_ks) < 1:
            raise ValueError("ContrastiveConfig.recall_ks must hold positive ranks")
