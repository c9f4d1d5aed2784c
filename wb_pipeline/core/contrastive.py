"""A joint text–image space learned on the catalogue's own (text, image) pairs (e-CLIP idea).

Two projection heads (linear or a small MLP) sit on top of FROZEN, precomputed unimodal
embeddings and are trained with open_clip's symmetric `ClipLoss` and a learnable temperature,
plus a text-neighbourhood distillation term (`neighbourhood_distillation`: each side's in-batch
similarities pulled toward the raw text encoder's). Design points, each because the seed or the
data demands it:

- No duplicate texts or images inside a batch (`DuplicateFreeBatchSampler`): two products with
  the same title (or the same image) would be each other's false negatives under the CLIP loss.
- Train/validation split by duplicate GROUPS (union of "same title" and "same image" links,
  `duplicate_groups` + sklearn `GroupShuffleSplit`), so no duplicate leaks across the split.
- Early stopping on validation loss (heads over frozen features overfit within tens of steps),
  the best state is restored; loss curves, Recall@1/5/10 and median rank before/after are reported.
- Deterministic for a seed: the torch RNG is forked and seeded, deterministic algorithms are on
  for the duration of training, the sampler uses its own numpy generator.
- Saved as safetensors weights + a JSON config (no pickle anywhere); encoder fingerprints recorded.

Unfreezing encoder layers is a config field, but with precomputed embeddings the encoders are not
in the loop, so any value > 0 is refused with a clear ValueError (it needs an end-to-end trainer
that re-encodes texts and images every step).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from sklearn.model_selection import GroupShuffleSplit
from torch import nn
from torch.nn import functional as F
from upath import UPath

from wb_pipeline.core import storage
from wb_pipeline.core.retrieval_metrics import chance_metrics, retrieval_metrics
from wb_pipeline.core.validation import MAX_TITLE_PRODUCTS, duplicate_groups, specific_keys

MODEL_FORMAT_VERSION = 2  # 2: the closed-form (CCA) buffers
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
    recall_ks: tuple[int, ...] = (1, 5, 10)
    seed: int = 0
    deterministic: bool = True
    # Tiny matmuls: one thread is fastest, and on a shared CPU extra threads mostly spin-wait.
    # 0 keeps torch's current setting.
    num_threads: int = 1
    # Needs the encoders in the training loop; refused with precomputed embeddings (see module doc).
    unfreeze_text_layers: int = 0
    unfreeze_image_layers: int = 0

    def __post_init__(self) -> None:
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
            raise ValueError("ContrastiveConfig: closed_form_dim must be >= 0, closed_form_regularization and "
                             "closed_form_weight > 0")
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


# ---------------------------------------------------------------------------------------------
# Duplicate groups, split and batches


def _key_codes(keys: Sequence[Any]) -> np.ndarray:
    """Integer code per key; missing or empty keys get -1 (they link nothing)."""
    series = pd.Series(list(keys), dtype=object)
    series = series.where(series.notna() & series.astype(str).ne(""), None)
    codes, _ = pd.factorize(series, use_na_sentinel=True)
    return codes


def group_split(groups: np.ndarray, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): whole groups on one side (sklearn `GroupShuffleSplit`)."""
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        raise ValueError(
            f"group_split: {len(groups)} rows form {len(np.unique(groups))} duplicate group(s); "
            "need at least 2 to hold some out for validation"
        )
    splitter = GroupShuffleSplit(n_splits=1, test_size=validation_fraction, random_state=seed)
    train, validation = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(train), np.sort(validation)


class DuplicateFreeBatchSampler:
    """Batches of row indices in which no two rows share a text key or an image key.

    Each epoch is a fresh seeded shuffle, filled greedily: a row that clashes with the batch being
    built waits in a small deferred queue and goes into the next batch it fits. Every row appears
    exactly once per epoch; only the last batches may be short."""

    def __init__(self, text_keys: Sequence[Any], image_keys: Sequence[Any], batch_size: int, seed: int = 0):
        if len(text_keys) != len(image_keys):
            raise ValueError(f"DuplicateFreeBatchSampler: {len(text_keys)} text keys but {len(image_keys)} image keys")
        if batch_size < 1:
            raise ValueError("DuplicateFreeBatchSampler: batch_size must be positive")
        self.text_codes = _key_codes(text_keys)
        self.image_codes = _key_codes(image_keys)
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.text_codes)

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.text_codes))
        stream = iter(order.tolist())
        deferred: list[int] = []
        exhausted = False
        while deferred or not exhausted:
            batch: list[int] = []
            texts: set[int] = set()
            images: set[int] = set()

            def fits(row: int) -> bool:
                t, i = self.text_codes[row], self.image_codes[row]
                return (t < 0 or t not in texts) and (i < 0 or i not in images)

            def take(row: int) -> None:
                batch.append(row)
                if self.text_codes[row] >= 0:
                    texts.add(self.text_codes[row])
                if self.image_codes[row] >= 0:
                    images.add(self.image_codes[row])

            waiting = []
            for row in deferred:
                if len(batch) < self.batch_size and fits(row):
                    take(row)
                else:
                    waiting.append(row)
            deferred = waiting
            while len(batch) < self.batch_size and not exhausted:
                row = next(stream, None)
                if row is None:
                    exhausted = True
                elif fits(row):
                    take(row)
                else:
                    deferred.append(row)
            if batch:
                yield np.asarray(batch, dtype=np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.epoch(0)


# ---------------------------------------------------------------------------------------------
# Model


class ResidualHead(nn.Module):
    """x → x + W·x + b, W and b starting at zero (the identity): the input's geometry is the start."""

    def __init__(self, dim: int):
        super().__init__()
        self.residual = nn.Linear(dim, dim)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors + self.residual(vectors)


def _head(in_dim: int, config: ContrastiveConfig) -> nn.Module:
    if config.head == "residual" and in_dim == config.joint_dim:
        return ResidualHead(in_dim)
    if config.head in ("linear", "residual"):
        return nn.Linear(in_dim, config.joint_dim)
    return nn.Sequential(
        nn.Linear(in_dim, config.mlp_hidden_dim),
        nn.GELU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.mlp_hidden_dim, config.joint_dim),
    )


def regularised_cca(text: np.ndarray, image: np.ndarray, n_components: int, regularization: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form regularised CCA: (text mean, text map [d_t, n], image mean, image map [d_i, n]).

    Each side's covariance gets a ridge of `regularization` × its mean eigenvalue (so the inverse is
    defined even with fewer pairs than dimensions), is whitened, and the SVD of the whitened
    cross-covariance gives the canonical directions, strongest first."""
    text, image = np.asarray(text, np.float64), np.asarray(image, np.float64)
    text_mean, image_mean = text.mean(axis=0), image.mean(axis=0)
    a, b = text - text_mean, image - image_mean

    def inverse_sqrt(covariance: np.ndarray) -> np.ndarray:
        covariance = covariance + regularization * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        values, vectors = np.linalg.eigh(covariance)
        return (vectors * np.maximum(values, 1e-12) ** -0.5) @ vectors.T

    whiten_text, whiten_image = inverse_sqrt(a.T @ a / len(a)), inverse_sqrt(b.T @ b / len(b))
    u, _, vt = np.linalg.svd(whiten_text @ (a.T @ b / len(a)) @ whiten_image)
    return (text_mean.astype(np.float32), (whiten_text @ u[:, :n_components]).astype(np.float32),
            image_mean.astype(np.float32), (whiten_image @ vt.T[:, :n_components]).astype(np.float32))


class JointSpaceModel(nn.Module):
    """Text and image projection heads into one L2-normalised space, plus the learnable logit scale
    (1 / temperature, stored as its log like CLIP), and — when `closed_form_dim` > 0 — a regularised
    CCA of the two inputs (buffers, set by `set_closed_form`) whose canonical vectors are concatenated
    with the heads' vectors."""

    def __init__(self, text_dim: int, image_dim: int, config: ContrastiveConfig):
        super().__init__()
        self.text_dim, self.image_dim, self.config = int(text_dim), int(image_dim), config
        self.text_head = _head(self.text_dim, config)
        self.image_head = _head(self.image_dim, config)
        self.log_logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config.init_temperature), dtype=torch.float32),
            requires_grad=config.learn_temperature,
        )
        self.closed_form_dim = min(config.closed_form_dim, self.text_dim, self.image_dim)
        for side, dim in (("text", self.text_dim), ("image", self.image_dim)):
            self.register_buffer(f"{side}_cca_mean", torch.zeros(dim))
            self.register_buffer(f"{side}_cca_map", torch.zeros(dim, self.closed_form_dim))

    @property
    def output_dim(self) -> int:
        return self.config.joint_dim + self.closed_form_dim

    def set_closed_form(self, text_vectors: np.ndarray, image_vectors: np.ndarray) -> None:
        """Fit the CCA part on (training) pairs; a no-op without a closed-form part."""
        if not self.closed_form_dim:
            return
        text_mean, text_map, image_mean, image_map = regularised_cca(
            text_vectors, image_vectors, self.closed_form_dim, self.config.closed_form_regularization)
        with torch.no_grad():
            self.text_cca_mean.copy_(torch.from_numpy(text_mean))
            self.text_cca_map.copy_(torch.from_numpy(text_map))
            self.image_cca_mean.copy_(torch.from_numpy(image_mean))
            self.image_cca_map.copy_(torch.from_numpy(image_map))

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    def head_text(self, text_vectors: torch.Tensor) -> torch.Tensor:
        """The trained head's part alone (what the CLIP loss trains), unit norm."""
        return F.normalize(self.text_head(text_vectors), dim=-1)

    def head_image(self, image_vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(image_vectors), dim=-1)

    def _with_closed_form(self, head: torch.Tensor, vectors: torch.Tensor, mean, mapping) -> torch.Tensor:
        if not self.closed_form_dim:
            return head
        canonical = F.normalize((vectors - mean) @ mapping, dim=-1) * self.config.closed_form_weight
        return F.normalize(torch.cat([canonical, head], dim=-1), dim=-1)

    def encode_text(self, text_vectors: torch.Tensor) -> torch.Tensor:
        return self._with_closed_form(self.head_text(text_vectors), text_vectors, self.text_cca_mean,
                                      self.text_cca_map)

    def encode_image(self, image_vectors: torch.Tensor) -> torch.Tensor:
        return self._with_closed_form(self.head_image(image_vectors), image_vectors, self.image_cca_mean,
                                      self.image_cca_map)

    @torch.no_grad()
    def project_text(self, text_vectors: np.ndarray, block_rows: int = 8192) -> np.ndarray:
        """Unimodal text vectors [n, text_dim] → joint vectors [n, joint_dim] (float32, unit norm)."""
        return self._project(self.encode_text, text_vectors, self.text_dim, "text", block_rows)

    @torch.no_grad()
    def project_image(self, image_vectors: np.ndarray, block_rows: int = 8192) -> np.ndarray:
        """Unimodal image vectors [n, image_dim] → joint vectors [n, joint_dim] (float32, unit norm)."""
        return self._project(self.encode_image, image_vectors, self.image_dim, "image", block_rows)

    def _project(self, encode, vectors, dim: int, what: str, block_rows: int) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise ValueError(f"JointSpaceModel: {what} vectors of shape {vectors.shape}, expected [n, {dim}]")
        was_training = self.training
        self.eval()
        try:
            blocks = [encode(torch.tensor(vectors[s : s + block_rows])).numpy()  # tensor() copies: inputs may be read-only
                      for s in range(0, len(vectors), block_rows)]
        finally:
            self.train(was_training)
        return np.concatenate(blocks) if blocks else np.zeros((0, self.output_dim), np.float32)


def combine_joint(text_joint: np.ndarray, image_joint: np.ndarray) -> np.ndarray:
    """One vector per product: the normalised CONCATENATION [text, image] of its joint vectors
    (2 × `output_dim`). A sum would average away what each side knows alone (where the photo and
    the text disagree); the concatenation keeps both, and its inner product is the mean of the two
    sides' cosines."""
    both = np.hstack([np.asarray(text_joint, np.float32), np.asarray(image_joint, np.float32)])
    norms = np.linalg.norm(both, axis=1, keepdims=True)
    return (both / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def one_sided_in_combined(joint_vectors: np.ndarray) -> np.ndarray:
    """Joint vectors of ONE modality (a text query, a class name, a photo) placed in the combined
    space: [q, q] / √2, so that its inner product with a product's combined vector is the mean of
    its cosines with the product's text and image joint vectors."""
    return combine_joint(joint_vectors, joint_vectors)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainingReport:
    """What happened in one `train_joint_space` call (JSON-serialisable via `to_json_dict`)."""

    n_pairs: int
    n_train_pairs: int
    n_validation_pairs: int
    steps: int
    epochs: float
    best_step: int
    best_validation_loss: float
    stopped_early: bool
    seconds: float
    final_temperature: float
    refit_steps: int = 0  # steps of the refit on all pairs (0: the kept model is the early-stopping one)
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, batch loss)
    validation_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # stage → direction → metric

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics_frame(self) -> pd.DataFrame:
        """One row per (stage, direction): recall_at_k columns and median_rank, held-out pairs."""
        rows = [
            {"stage": stage, "direction": direction, **values}
            for stage, by_direction in self.metrics.items()
            for direction, values in by_direction.items()
        ]
        return pd.DataFrame(rows)


@contextlib.contextmanager
def _seeded_torch(seed: int, deterministic: bool, num_threads: int):
    """Seed torch inside a forked RNG state, switch deterministic algorithms on and set the thread
    count; all three are restored on exit."""
    previous_deterministic, previous_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if deterministic:
            torch.use_deterministic_algorithms(True)
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous_deterministic)
            torch.set_num_threads(previous_threads)


def _as_tensor(vectors: np.ndarray, what: str) -> torch.Tensor:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"train_joint_space: {what} vectors must be a non-empty [n, dim] matrix, got {array.shape}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(f"train_joint_space: {bad} {what} vector row(s) hold NaN or infinite values")
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # own writable copy


def neighbourhood_distillation(raw_text: torch.Tensor, text_heads: torch.Tensor, image_heads: torch.Tensor,
                               temperature: float) -> torch.Tensor:
    """Mean over both sides of KL(P ‖ Q_side): P = softmax over the raw text cosines of the batch's
    other products (the teacher, no gradient), Q_side = softmax over that side's unit-norm head
    similarities, both at `temperature`, self-similarity masked out."""
    self_mask = torch.eye(len(raw_text), dtype=torch.bool, device=raw_text.device)
    unit = F.normalize(raw_text, dim=-1)
    teacher = F.log_softmax((unit @ unit.T / temperature).masked_fill(self_mask, -1e4), dim=-1).detach()
    total = raw_text.new_zeros(())
    for heads in (text_heads, image_heads):
        student = F.log_softmax((heads @ heads.T / temperature).masked_fill(self_mask, -1e4), dim=-1)
        total = total + (teacher.exp() * (teacher - student)).sum(dim=-1).mean()
    return total / 2


class _PairLoss:
    """The training objective on one batch of pairs: open_clip's symmetric `ClipLoss` on the heads,
    plus `neighbourhood_weight` × `neighbourhood_distillation` (the same in training and validation)."""

    def __init__(self, config: ContrastiveConfig):
        from open_clip.loss import ClipLoss  # imported here: open_clip's package import costs seconds

        self.clip = ClipLoss()
        self.weight, self.temperature = config.neighbourhood_weight, config.neighbourhood_temperature

    def __call__(self, model: JointSpaceModel, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        text_heads, image_heads = model.head_text(text), model.head_image(image)
        loss = self.clip(image_heads, text_heads, model.logit_scale())
        if self.weight > 0:
            loss = loss + self.weight * neighbourhood_distillation(text, text_heads, image_heads, self.temperature)
        return loss


def _train_steps(model: JointSpaceModel, optimizer: torch.optim.Optimizer, loss_fn: _PairLoss,
                 sampler: DuplicateFreeBatchSampler, text: torch.Tensor, image: torch.Tensor, max_steps: int,
                 after_step: Callable[[int, float], bool]) -> int:
    """Steps of `loss_fn` over fresh epochs of `sampler` until `max_steps` or until `after_step(step, loss)`
    returns True; the number of steps taken."""
    step, epoch = 0, 0
    model.train()
    while step < max_steps:
        for batch in sampler.epoch(epoch):
            if len(batch) < 2:  # a lone pair has no negatives
                continue
            loss = loss_fn(model, text[batch], image[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if after_step(step, loss.item()) or step >= max_steps:
                return step
        epoch += 1
    return step


def train_joint_space(
    text_vectors: np.ndarray,
    image_vectors: np.ndarray,
    text_keys: Sequence[Any],
    image_keys: Sequence[Any],
    config: ContrastiveConfig = ContrastiveConfig(),
    progress: Callable[[str], None] | None = None,
) -> tuple[JointSpaceModel, TrainingReport]:
    """Train projection heads so that row i's text and image meet in one space.

    `text_keys` / `image_keys` (e.g. normalised title, image content hash) define duplicates: rows
    sharing either never share a batch and always land on the same side of the validation split.
    Returns the model and a `TrainingReport` with the held-out Recall@k / median rank at chance,
    before training (random heads) and after (the best validation-loss state). With
    `refit_on_all_pairs` the returned model is then retrained from scratch on every pair for the same
    number of epochs; otherwise it is the best validation-loss state itself."""
    text_t, image_t = _as_tensor(text_vectors, "text"), _as_tensor(image_vectors, "image")
    if len(text_t) != len(image_t) or len(text_keys) != len(text_t) or len(image_keys) != len(text_t):
        raise ValueError(
            f"train_joint_space: {len(text_t)} text vectors, {len(image_t)} image vectors, "
            f"{len(text_keys)} text keys, {len(image_keys)} image keys; all must be equal"
        )
    text_keys, image_keys = list(text_keys), list(image_keys)
    started = time.perf_counter()
    groups = duplicate_groups(text_keys, image_keys)
    train_rows, validation_rows = group_split(groups, config.validation_fraction, config.seed)
    if len(train_rows) < 2 or len(validation_rows) < 2:
        raise ValueError(
            f"train_joint_space: split gave {len(train_rows)} train and {len(validation_rows)} validation pairs; "
            "need at least 2 on each side"
        )
    sampler = DuplicateFreeBatchSampler([text_keys[i] for i in train_rows], [image_keys[i] for i in train_rows],
                                        config.batch_size, config.seed)
    validation_batches = list(DuplicateFreeBatchSampler(
        [text_keys[i] for i in validation_rows], [image_keys[i] for i in validation_rows], config.batch_size, config.seed
    ).epoch(0))
    train_text, train_image = text_t[train_rows], image_t[train_rows]
    val_text, val_image = text_t[validation_rows], image_t[validation_rows]
    loss_fn = _PairLoss(config)

    with _seeded_torch(config.seed, config.deterministic, config.num_threads):
        model = JointSpaceModel(text_t.shape[1], image_t.shape[1], config)
        model.set_closed_form(train_text.numpy(), train_image.numpy())
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay
        )

        @torch.no_grad()
        def validation_loss() -> float:
            model.eval()
            total = sum(
                loss_fn(model, val_text[b], val_image[b]).item()
                * len(b)
                for b in validation_batches
            )
            model.train()
            return total / sum(len(b) for b in validation_batches)

        def held_out_metrics(part: str = "joint") -> dict[str, dict[str, float]]:
            with torch.no_grad():
                if part == "heads":
                    text_side, image_side = model.head_text(val_text).numpy(), model.head_image(val_image).numpy()
                elif part == "closed_form":
                    text_side = F.normalize((val_text - model.text_cca_mean) @ model.text_cca_map, dim=-1).numpy()
                    image_side = F.normalize((val_image - model.image_cca_mean) @ model.image_cca_map, dim=-1).numpy()
                else:
                    text_side, image_side = model.project_text(val_text.numpy()), model.project_image(val_image.numpy())
            return retrieval_metrics(text_side, image_side, config.recall_ks)

        # 'before' = untrained heads alone: what training the heads has to beat.
        metrics = {"chance": chance_metrics(len(validation_rows), config.recall_ks), "before": held_out_metrics("heads")}
        if model.closed_form_dim:
            metrics["closed_form"] = held_out_metrics("closed_form")
        best_loss = validation_loss()
        validation_curve = [(0, best_loss)]
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        best_step, stale, stopped_early = 0, 0, False
        train_curve: list[tuple[int, float]] = []

        def after_step(step: int, loss: float) -> bool:
            nonlocal best_loss, best_step, best_state, stale, stopped_early
            train_curve.append((step, loss))
            if step % config.eval_every_steps:
                return False
            current = validation_loss()
            validation_curve.append((step, current))
            if current < best_loss - config.min_improvement:
                best_loss, best_step, stale = current, step, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            if progress is not None:
                progress(f"step {step}: train loss {loss:.4f}, validation loss {current:.4f}")
            stopped_early = stale >= config.patience_evals
            return stopped_early

        step = _train_steps(model, optimizer, loss_fn, sampler, train_text, train_image, config.max_steps, after_step)
        model.load_state_dict(best_state)
        model.eval()
        if model.closed_form_dim:
            metrics["heads"] = held_out_metrics("heads")
        metrics["after"] = held_out_metrics()
        refit_steps = 0
        if config.refit_on_all_pairs and best_step > 0:
            # Same number of epochs on all pairs as the best validation state took on the training part.
            refit_steps = max(1, round(best_step * len(text_t) / len(train_rows)))
            model = JointSpaceModel(text_t.shape[1], image_t.shape[1], config)
            model.set_closed_form(text_t.numpy(), image_t.numpy())
            optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                weight_decay=config.weight_decay)
            _train_steps(model, optimizer, loss_fn, DuplicateFreeBatchSampler(text_keys, image_keys, config.batch_size,
                                                                              config.seed),
                         text_t, image_t, refit_steps, lambda step, loss: False)
            model.eval()

    report = TrainingReport(
        n_pairs=len(text_t),
        n_train_pairs=len(train_rows),
        n_validation_pairs=len(validation_rows),
        steps=step,
        epochs=round(step * config.batch_size / max(len(train_rows), 1), 3),
        best_step=best_step,
        best_validation_loss=float(best_loss),
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
        final_temperature=float(1.0 / model.logit_scale().item()),
        refit_steps=refit_steps,
        train_curve=train_curve,
        validation_curve=validation_curve,
        metrics=metrics,
    )
    return model, report


# ---------------------------------------------------------------------------------------------
# Zero-shot


def zero_shot_scores(
    class_names: Sequence[str],
    product_joint_vectors: np.ndarray,
    text_encoder_fn: Callable[[list[str]], np.ndarray],
    model: JointSpaceModel,
    template: str = "{}",
) -> np.ndarray:
    """Cosine similarity [n_products, n_classes] between products (already in the joint space:
    image or text joint vectors [n, output_dim], or combined ones [n, 2 × output_dim]) and class
    names ('для женщин', 'зима', ...).

    Each name is formatted with `template`, embedded by `text_encoder_fn` (the same text encoder
    that made the training text vectors), L2-normalised and projected through the text head (and
    placed in the combined space for combined product vectors). Columns follow `class_names`;
    `argmax(axis=1)` is the zero-shot prediction."""
    names = [str(name) for name in class_names]
    if not names:
        raise ValueError("zero_shot_scores: no class names")
    products = np.asarray(product_joint_vectors, dtype=np.float32)
    if products.ndim != 2 or products.shape[1] not in (model.output_dim, 2 * model.output_dim):
        raise ValueError(
            f"zero_shot_scores: product vectors of shape {products.shape}, expected [n, {model.output_dim}] "
            f"(one modality) or [n, {2 * model.output_dim}] (combined)"
        )
    class_vectors = np.asarray(text_encoder_fn([template.format(name) for name in names]), dtype=np.float32)
    if class_vectors.shape != (len(names), model.text_dim):
        raise ValueError(
            f"zero_shot_scores: the text encoder returned {class_vectors.shape} for {len(names)} names, "
            f"expected [{len(names)}, {model.text_dim}] (the encoder the model was trained on)"
        )
    norms = np.linalg.norm(class_vectors, axis=1, keepdims=True)
    class_joint = model.project_text(class_vectors / np.where(norms > 0, norms, 1.0))
    if products.shape[1] != model.output_dim:
        class_joint = one_sided_in_combined(class_joint)
    return products @ class_joint.T


# ---------------------------------------------------------------------------------------------
# Persistence (safetensors + JSON; never pickle)


def model_fingerprint(config: ContrastiveConfig, encoder_fingerprints: dict[str, str], *arrays: np.ndarray) -> str:
    """Hex BLAKE2b-128 of the config, the encoder fingerprints and the exact training inputs."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({"config": asdict(config), "encoders": encoder_fingerprints}, sort_keys=True).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def save_joint_model(
    model: JointSpaceModel,
    folder: UPath,
    encoder_fingerprints: dict[str, str] | None = None,
    report: TrainingReport | None = None,
) -> None:
    """Write `model.safetensors` (weights) then `model.json` (format version, dims, config, encoder
    fingerprints, the report), each atomically; the JSON is written last, so its presence means a
    complete artifact."""
    folder = storage.as_upath(folder)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    storage.atomic_write_bytes(folder / WEIGHTS_FILE, save_safetensors(tensors))
    info = {
        "format_version": MODEL_FORMAT_VERSION,
        "text_dim": model.text_dim,
        "image_dim": model.image_dim,
        "config": asdict(model.config),
        "encoder_fingerprints": dict(encoder_fingerprints or {}),
        "report": report.to_json_dict() if report is not None else None,
    }
    storage.atomic_write_bytes(folder / CONFIG_FILE, json.dumps(info, ensure_ascii=False, indent=1).encode("utf-8"))


def config_from_json(values: dict[str, Any]) -> ContrastiveConfig:
    """The `ContrastiveConfig` saved in a model's JSON info (lists back to tuples)."""
    values = dict(values)
    values["recall_ks"] = tuple(values["recall_ks"])
    return ContrastiveConfig(**values)


def model_folder(contrastive_model: pd.DataFrame) -> str:
    """The artifact folder recorded in the `contrastive_model` asset's table."""
    folders = contrastive_model["artifact"].dropna().unique() if "artifact" in contrastive_model else []
    if len(folders) != 1:
        raise ValueError(f"contrastive_model: expected one artifact folder in its table, found {list(folders)}")
    return str(folders[0])


def load_joint_model(folder: UPath) -> tuple[JointSpaceModel, dict[str, Any]]:
    """The model saved by `save_joint_model` (in eval mode) and its JSON info; clear errors when a
    file is missing, the format is unknown or the weights do not match the config."""
    folder = storage.as_upath(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.exists() or not weights_path.exists():
        raise FileNotFoundError(f"load_joint_model: {folder} lacks {CONFIG_FILE} or {WEIGHTS_FILE}")
    info = json.loads(config_path.read_bytes().decode("utf-8"))
    if info.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"load_joint_model: {config_path} has format_version {info.get('format_version')!r}, "
                         f"expected {MODEL_FORMAT_VERSION}")
    model = JointSpaceModel(info["text_dim"], info["image_dim"], config_from_json(info["config"]))
    state = load_safetensors(weights_path.read_bytes())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"load_joint_model: weights in {weights_path} do not match the saved config: {error}") from error
    model.eval()
    return model, info


# ---------------------------------------------------------------------------------------------
# Product keys and the joint_embeddings table


def product_keys(nm: Sequence[str], products: pd.DataFrame, image_index: pd.DataFrame,
                 max_title_products: int = MAX_TITLE_PRODUCTS) -> pd.DataFrame:
    """Duplicate keys per product, in the order of `nm`:

    - `title_key`: the title lower-cased with whitespace collapsed (same title → near-duplicate text);
    - `text_key`: the same normalisation of title + description (the seed's "identical title and
      description");
    - `image_key`: the image's content hash (identical image bytes).

    A title (or title + description) that more than `max_title_products` of these products share is
    generic, not a duplicate key, and is missing here (`core.validation.specific_keys`).
    `products` needs nm, title, description; `image_index` nm, content_hash. A product missing from
    either gets missing keys (which link nothing) — never an error, never a dropped row."""
    ids = pd.DataFrame({"nm": pd.Series(list(nm), dtype=object).astype(str)})
    text = products[["nm", "title", "description"]].drop_duplicates("nm").astype({"nm": str})
    images = image_index[["nm", "content_hash"]].drop_duplicates("nm").astype({"nm": str})
    frame = ids.merge(text, on="nm", how="left").merge(images, on="nm", how="left")

    def normalise(values: pd.Series) -> pd.Series:
        cleaned = values.astype("string").str.lower().str.split().str.join(" ")
        return cleaned.where(cleaned.fillna("").ne(""))

    title = normalise(frame["title"])
    full_text = normalise(frame["title"].fillna("").astype(str) + " " + frame["description"].fillna("").astype(str))
    return pd.DataFrame({
        "nm": frame["nm"].to_numpy(dtype=object),
        "title_key": specific_keys(title.to_numpy(dtype=object, na_value=None), max_title_products),
        "text_key": specific_keys(full_text.to_numpy(dtype=object, na_value=None), max_title_products),
        "image_key": frame["content_hash"].astype("string").to_numpy(dtype=object, na_value=None),
    }, dtype=object)


JOINT_COLUMNS = ("text_joint", "image_joint", "combined_joint")


def joint_embedding_frame(nm: Sequence[str], text_joint: np.ndarray, image_joint: np.ndarray) -> pd.DataFrame:
    """The `joint_embeddings` table: nm and one float32 list column per vector kind (text, image,
    combined = their normalised concatenation); one table keeps the three row-aligned by construction."""
    combined = combine_joint(text_joint, image_joint)
    return pd.DataFrame({
        "nm": np.asarray(list(nm), dtype=object),
        "text_joint": list(np.asarray(text_joint, np.float32)),
        "image_joint": list(np.asarray(image_joint, np.float32)),
        "combined_joint": list(combined),
    })


def joint_matrix(frame: pd.DataFrame, column: str = "combined_joint") -> np.ndarray:
    """One list column of the `joint_embeddings` table as a float32 [n, dim] matrix."""
    if column not in JOINT_COLUMNS:
        raise ValueError(f"joint_matrix: column must be one of {JOINT_COLUMNS}, got {column!r}")
    if len(frame) == 0:
        return np.zeros((0, 0), np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in frame[column].to_numpy()])
