"""Saving and loading a joint model: safetensors weights + a JSON config (never a pickle), with the
encoders' fingerprints; `model_fingerprint` keys the cache of trained models."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from upath import UPath

from wb_pipeline.core.data import storage

from .config import CONFIG_FILE, MODEL_FORMAT_VERSION, WEIGHTS_FILE, ContrastiveConfig
from .model import JointSpaceModel
from .training import TrainingReport


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
        raise ValueError(
            f"load_joint_model: {config_path} has format_version {info.get('format_version')!r}, "
            f"expected {MODEL_FORMAT_VERSION}"
        )
    model = JointSpaceModel(info["text_dim"], info["image_dim"], config_from_json(info["config"]))
    state = load_safetensors(weights_path.read_bytes())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"load_joint_model: weights in {weights_path} do not match the saved config: {error}"
        ) from error
    model.eval()
    return model, info
