"""The joint space model: a regularised-CCA closed-form part plus trained projection heads on each
side, the product vector that combines the two sides, and class-name scoring in that space (zero-shot)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .config import ContrastiveConfig


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


def regularised_cca(
    text: np.ndarray, image: np.ndarray, n_components: int, regularization: float
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
    return (
        text_mean.astype(np.float32),
        (whiten_text @ u[:, :n_components]).astype(np.float32),
        image_mean.astype(np.float32),
        (whiten_image @ vt.T[:, :n_components]).astype(np.float32),
    )


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
        # The product vector (`product_vectors`; the share is chosen by core.models.product_space): each
        # encoder's vectors centred and scaled to unit mean squared norm, the text given `product_text_share`
        # of the variance. Below 0 until `set_product_space`: then the heads' concatenation stands in.
        self.register_buffer("product_text_mean", torch.zeros(self.text_dim))
        self.register_buffer("product_image_mean", torch.zeros(self.image_dim))
        self.register_buffer("product_scales", torch.ones(2))
        self.register_buffer("product_text_share", torch.tensor(-1.0))

    @property
    def output_dim(self) -> int:
        return self.config.joint_dim + self.closed_form_dim

    def set_closed_form(self, text_vectors: np.ndarray, image_vectors: np.ndarray) -> None:
        """Fit the CCA part on (training) pairs; a no-op without a closed-form part."""
        if not self.closed_form_dim:
            return
        text_mean, text_map, image_mean, image_map = regularised_cca(
            text_vectors, image_vectors, self.closed_form_dim, self.config.closed_form_regularization
        )
        with torch.no_grad():
            self.text_cca_mean.copy_(torch.from_numpy(text_mean))
            self.text_cca_map.copy_(torch.from_numpy(text_map))
            self.image_cca_mean.copy_(torch.from_numpy(image_mean))
            self.image_cca_map.copy_(torch.from_numpy(image_map))

    def set_product_space(self, text_vectors: np.ndarray, image_vectors: np.ndarray, text_share: float) -> None:
        """Fix the product vector: each side's mean and scale from these (all) products, the text's share."""
        if not 0.0 <= float(text_share) <= 1.0:
            raise ValueError(f"JointSpaceModel: the text's share must be in [0, 1], got {text_share}")
        (text_mean, text_scale), (image_mean, image_scale) = (
            side_statistics(text_vectors),
            side_statistics(image_vectors),
        )
        with torch.no_grad():
            self.product_text_mean.copy_(torch.from_numpy(text_mean))
            self.product_image_mean.copy_(torch.from_numpy(image_mean))
            self.product_scales.copy_(torch.tensor([text_scale, image_scale], dtype=torch.float32))
            self.product_text_share.fill_(float(text_share))

    @property
    def has_product_space(self) -> bool:
        return float(self.product_text_share) >= 0.0

    @property
    def product_dim(self) -> int:
        return self.text_dim + self.image_dim if self.has_product_space else 2 * self.output_dim

    def _product_parts(self, text: np.ndarray | None, image: np.ndarray | None, rows: int) -> np.ndarray:
        share = float(self.product_text_share)
        text_scale, image_scale = (float(v) for v in self.product_scales)
        parts = [
            np.zeros((rows, self.text_dim), np.float32)
            if text is None
            else np.sqrt(share) * (np.asarray(text, np.float32) - self.product_text_mean.numpy()) / text_scale,
            np.zeros((rows, self.image_dim), np.float32)
            if image is None
            else np.sqrt(1.0 - share) * (np.asarray(image, np.float32) - self.product_image_mean.numpy()) / image_scale,
        ]
        both = np.hstack(parts).astype(np.float32)
        return both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)

    def product_vectors(self, text_vectors: np.ndarray, image_vectors: np.ndarray) -> np.ndarray:
        """The product vector of every (text, image) pair: unit [√s · text, √(1−s) · image] of the
        standardised encoder vectors (what clusters, similar products and the default index use); the
        heads' concatenation (`combine_joint`) for a model without a product space."""
        if not self.has_product_space:
            return combine_joint(self.project_text(text_vectors), self.project_image(image_vectors))
        return self._product_parts(text_vectors, image_vectors, len(text_vectors))

    def product_query(self, vectors: np.ndarray, modality: str) -> np.ndarray:
        """ONE modality's vectors (a text query, a photo) in the product space: the other side's part
        is 0, so the ranking is that modality's own (cross-modal search is on the heads:
        `joint_text` / `joint_image`)."""
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if not self.has_product_space:
            projected = self.project_text(vectors) if modality == "text" else self.project_image(vectors)
            return one_sided_in_combined(projected)
        if modality == "text":
            return self._product_parts(vectors, None, len(vectors))
        return self._product_parts(None, vectors, len(vectors))

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
        return self._with_closed_form(self.head_text(text_vectors), text_vectors, self.text_cca_mean, self.text_cca_map)

    def encode_image(self, image_vectors: torch.Tensor) -> torch.Tensor:
        return self._with_closed_form(
            self.head_image(image_vectors), image_vectors, self.image_cca_mean, self.image_cca_map
        )

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
            blocks = [
                encode(torch.tensor(vectors[s : s + block_rows])).numpy()  # tensor() copies: inputs may be read-only
                for s in range(0, len(vectors), block_rows)
            ]
        finally:
            self.train(was_training)
        return np.concatenate(blocks) if blocks else np.zeros((0, self.output_dim), np.float32)


def side_statistics(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """(mean, scale) that centre one modality's vectors and scale them to unit mean squared norm."""
    vectors = np.asarray(vectors, dtype=np.float64)
    mean = vectors.mean(axis=0) if len(vectors) else np.zeros(vectors.shape[1])
    scale = float(np.sqrt(((vectors - mean) ** 2).sum(axis=1).mean())) if len(vectors) else 1.0
    return mean.astype(np.float32), (scale if scale > 0 else 1.0)


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


JOINT_COLUMNS = ("text_joint", "image_joint", "heads_joint", "combined_joint")


def joint_embedding_frame(
    nm: Sequence[str], text_joint: np.ndarray, image_joint: np.ndarray, product: np.ndarray | None = None
) -> pd.DataFrame:
    """The `joint_embeddings` table: nm and one float32 list column per vector kind: the heads' text and
    image vectors (cross-modal), `heads_joint` (their normalised concatenation: zero-shot's space) and
    `combined_joint`, the product vector (`JointSpaceModel.product_vectors`; the heads' concatenation
    when not given); one table keeps them row-aligned by construction."""
    heads = combine_joint(text_joint, image_joint)
    return pd.DataFrame(
        {
            "nm": np.asarray(list(nm), dtype=object),
            "text_joint": list(np.asarray(text_joint, np.float32)),
            "image_joint": list(np.asarray(image_joint, np.float32)),
            "heads_joint": list(heads),
            "combined_joint": list(heads if product is None else np.asarray(product, np.float32)),
        }
    )


def joint_matrix(frame: pd.DataFrame, column: str = "combined_joint") -> np.ndarray:
    """One list column of the `joint_embeddings` table as a float32 [n, dim] matrix."""
    if column not in JOINT_COLUMNS:
        raise ValueError(f"joint_matrix: column must be one of {JOINT_COLUMNS}, got {column!r}")
    if len(frame) == 0:
        return np.zeros((0, 0), np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in frame[column].to_numpy()])
