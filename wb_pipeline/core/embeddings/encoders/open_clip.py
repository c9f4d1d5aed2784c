"""open_clip models as encoders: one loaded model (`OpenClipBundle`) serves an image tower
(`OpenClipImageEncoder`) and a text tower (`OpenClipTextEncoder`), so the two sides share weights,
device and fingerprint. Loaded from a local checkpoint or open_clip's cache (no download at run time)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wb_pipeline.core.embeddings.encoders.base import (
    config_fingerprint,
    l2_normalize,
    resolve_device,
)

from .image import (
    TorchvisionPreprocessor,
    _check_batch,
    _encode_in_batches,
    state_dict_sha256,
)


@dataclass
class OpenClipBundle:
    """One loaded open_clip model shared by its image and text encoders."""

    model_name: str
    pretrained: str | None
    checkpoint_path: str | None
    model: Any
    preprocess: Callable[[Image.Image], Any]
    tokenizer: Callable[[Sequence[str]], Any]
    device: str
    weights_id: str
    embed_dim: int


def load_open_clip(
    model_name: str,
    pretrained: str | None = None,
    checkpoint_path: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
) -> OpenClipBundle:
    """Create an open_clip model (eval mode) with its validation transform and tokenizer.

    Args:
        model_name: an open_clip model name (built-in, added with ``open_clip.add_model_config``,
            or ``hf-hub:`` / ``local-dir:``).
        pretrained: an open_clip pretrained tag (may download; only with network access).
        checkpoint_path: a local state-dict file, loaded with ``weights_only=True`` and
            ``strict=True`` (``{"state_dict": ...}`` and ``module.`` prefixes are accepted).
        device: ``"auto"`` picks CUDA when available.
        cache_dir: open_clip's download cache for ``pretrained``.

    Neither ``pretrained`` nor ``checkpoint_path`` gives a randomly initialised model (tests).
    The weights identity is a hash of the loaded state dict, so it is exact in every case.
    """
    import open_clip

    if pretrained is not None and checkpoint_path is not None:
        raise ValueError("give either pretrained (an open_clip tag) or checkpoint_path, not both")
    if checkpoint_path is not None and not Path(checkpoint_path).is_file():
        raise FileNotFoundError(f"open_clip checkpoint not found: {checkpoint_path}")
    resolved_device = resolve_device(device)
    # open_clip treats a file path given as ``pretrained`` as a full checkpoint and loads it with
    # ``load_checkpoint(strict=True, weights_only=...)`` (state_dict / module. prefixes handled).
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name,
        pretrained=str(checkpoint_path) if checkpoint_path is not None else pretrained,
        device="cpu",
        cache_dir=None if cache_dir is None else str(cache_dir),
        weights_only=True,
    )
    model = model.to(resolved_device).eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    config = open_clip.get_model_config(model_name) or {}
    embed_dim = config.get("embed_dim")
    if embed_dim is None:  # hf-hub / local-dir models: ask the model itself
        size = model.visual.image_size
        height, width = (size, size) if isinstance(size, int) else size
        with torch.inference_mode():
            embed_dim = model.encode_image(torch.zeros(1, 3, height, width, device=resolved_device)).shape[-1]
    return OpenClipBundle(
        model_name=model_name,
        pretrained=pretrained,
        checkpoint_path=None if checkpoint_path is None else str(checkpoint_path),
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=resolved_device,
        weights_id=f"state-sha256:{state_dict_sha256(model)}",
        embed_dim=int(embed_dim),
    )


def _bundle_from_args(
    bundle: OpenClipBundle | None,
    model_name: str | None,
    pretrained: str | None,
    checkpoint_path: str | Path | None,
    device: str,
    cache_dir: str | Path | None,
) -> OpenClipBundle:
    if bundle is not None:
        return bundle
    if not model_name:
        raise ValueError("model_name is required (or pass an already loaded bundle)")
    return load_open_clip(model_name, pretrained, checkpoint_path, device, cache_dir)


class _OpenClipTower:
    """What both open_clip towers share: argument checks, the loaded bundle, the output size."""

    def __init__(self, model_name, pretrained, checkpoint_path, device, batch_size, cache_dir, bundle) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.bundle = _bundle_from_args(bundle, model_name, pretrained, checkpoint_path, device, cache_dir)
        self.batch_size = batch_size
        self.dim = self.bundle.embed_dim


class OpenClipImageEncoder(_OpenClipTower):
    """Image tower of an open_clip model: L2-normalised ``encode_image`` vectors.

    Args mirror :func:`load_open_clip`; ``bundle`` shares an already loaded model with an
    :class:`OpenClipTextEncoder` (see :func:`open_clip_encoders`).
    """

    def __init__(
        self,
        model_name: str | None = None,
        pretrained: str | None = None,
        checkpoint_path: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 32,
        cache_dir: str | Path | None = None,
        bundle: OpenClipBundle | None = None,
    ) -> None:
        super().__init__(model_name, pretrained, checkpoint_path, device, batch_size, cache_dir, bundle)
        size = self.bundle.model.visual.image_size
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.fingerprint = config_fingerprint(
            "open_clip-image",
            {
                "model_name": self.bundle.model_name,
                "pretrained": self.bundle.pretrained,
                "preprocess": repr(self.bundle.preprocess),
                "normalize": "l2",
            },
            self.bundle.weights_id,
        )

    def preprocessor(self) -> TorchvisionPreprocessor:
        """The picklable preprocessing transform (for decode/preprocess worker processes)."""
        return TorchvisionPreprocessor(self.bundle.preprocess)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The model's own validation transform (resize, crop, normalise): CHW float32."""
        return self.preprocessor()(image)

    def encode_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """Forward a stacked ``[n, 3, H, W]`` batch in chunks of ``batch_size``."""
        pixels = _check_batch(batch, self.image_size)
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.bundle.model
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                tensor = torch.from_numpy(pixels[start : start + self.batch_size]).to(self.bundle.device)
                chunks.append(model.encode_image(tensor).float().cpu().numpy())
        return l2_normalize(np.concatenate(chunks))

    def encode(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """Preprocess and encode ``images``: float32 ``[len(images), dim]``, unit rows."""
        return _encode_in_batches(
            images, self.preprocess, self.encode_preprocessed, batch_size or self.batch_size, self.dim
        )


class OpenClipTextEncoder(_OpenClipTower):
    """Text tower of an open_clip model: L2-normalised ``encode_text`` vectors.

    Texts longer than the model's context are truncated by the open_clip tokenizer.
    """

    def __init__(
        self,
        model_name: str | None = None,
        pretrained: str | None = None,
        checkpoint_path: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 64,
        cache_dir: str | Path | None = None,
        bundle: OpenClipBundle | None = None,
    ) -> None:
        super().__init__(model_name, pretrained, checkpoint_path, device, batch_size, cache_dir, bundle)
        self.fingerprint = config_fingerprint(
            "open_clip-text",
            {
                "model_name": self.bundle.model_name,
                "pretrained": self.bundle.pretrained,
                "context_length": getattr(self.bundle.tokenizer, "context_length", None),
                "tokenizer": type(self.bundle.tokenizer).__name__,
                "normalize": "l2",
            },
            self.bundle.weights_id,
        )

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Encode ``texts``: float32 ``[len(texts), dim]``, unit rows, row i = ``texts[i]``."""
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of strings; wrap a single text in a list")
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"expected str at position {position}, got {type(text).__name__}")
        size = batch_size or self.batch_size
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.bundle.model
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                tokens = self.bundle.tokenizer(list(texts[start : start + size])).to(self.bundle.device)
                chunks.append(model.encode_text(tokens).float().cpu().numpy())
        return l2_normalize(np.concatenate(chunks))


def open_clip_encoders(
    model_name: str,
    pretrained: str | None = None,
    checkpoint_path: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    image_batch_size: int = 32,
    text_batch_size: int = 64,
) -> tuple[OpenClipImageEncoder, OpenClipTextEncoder]:
    """Load one open_clip model and return its image and text encoders (sharing the weights)."""
    bundle = load_open_clip(model_name, pretrained, checkpoint_path, device, cache_dir)
    return (
        OpenClipImageEncoder(bundle=bundle, batch_size=image_batch_size),
        OpenClipTextEncoder(bundle=bundle, batch_size=text_batch_size),
    )
