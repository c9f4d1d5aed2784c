"""Where the pipeline reads raw data and writes outputs, from environment variables.

`WB_PIPELINE_RAW_DIR`: folder (local path or fsspec URL) holding the four WB files; default: the
bundled sample, generated into `data/sample/` on first use.
`WB_PIPELINE_STORAGE_DIR`: where asset outputs, caches and models go; default: `storage/` in the repo.
`WB_PIPELINE_INCOMING_DIR`: where new-product drops arrive; default: `data/incoming/` in the repo.
`WB_PIPELINE_SHARDS`: the number of product shards of the heavy steps (default 4; see defs/sharding.py).
`WB_PIPELINE_MODELS_DIR`: LOCAL folder for converted / exported encoder models (sentence-transformers
and onnxruntime load from disk); default: `<storage dir>/models`, which is only right while the
storage dir is local — set it when the storage dir is object storage.
All default folders are git-ignored. No dagster import here: the CLI, tests and benchmarks share it.
"""

from __future__ import annotations

import os
from pathlib import Path

RAW_DIR_ENV = "WB_PIPELINE_RAW_DIR"
STORAGE_DIR_ENV = "WB_PIPELINE_STORAGE_DIR"
INCOMING_DIR_ENV = "WB_PIPELINE_INCOMING_DIR"
MODELS_DIR_ENV = "WB_PIPELINE_MODELS_DIR"
SHARDS_ENV = "WB_PIPELINE_SHARDS"
DEFAULT_SHARDS = 4


def project_root() -> Path:
    """The repository root when running from a checkout (editable install), else the working dir."""
    candidate = Path(__file__).resolve().parent.parent
    return candidate if (candidate / "pyproject.toml").exists() else Path.cwd()


def default_sample_dir() -> str:
    return str(project_root() / "data" / "sample")


def raw_dir() -> str:
    return os.environ.get(RAW_DIR_ENV) or default_sample_dir()


def storage_dir() -> str:
    return os.environ.get(STORAGE_DIR_ENV) or str(project_root() / "storage")


def incoming_dir() -> str:
    return os.environ.get(INCOMING_DIR_ENV) or str(project_root() / "data" / "incoming")


def models_dir() -> str | None:
    """`WB_PIPELINE_MODELS_DIR` when set, else None (= `<storage dir>/models`)."""
    return os.environ.get(MODELS_DIR_ENV) or None


def n_shards() -> int:
    """`WB_PIPELINE_SHARDS` (the number of product shards the heavy steps are split into), default 4.
    Every process of a deployment (orchestrator, workers, pods) must see the same value."""
    raw = os.environ.get(SHARDS_ENV)
    if not raw:
        return DEFAULT_SHARDS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{SHARDS_ENV}={raw!r} is not a whole number") from None
    if not 1 <= value <= 4096:
        raise ValueError(f"{SHARDS_ENV}={value}: use 1 to 4096 shards")
    return value


# Retraining rule (`wb_pipeline.core.monitoring.retrain.RetrainPolicy`), read by `retrain_models_sensor`.
RETRAIN_ENV = {
    "drift_auc_threshold": "WB_PIPELINE_RETRAIN_DRIFT_AUC",
    "drift_mmd_p_threshold": "WB_PIPELINE_RETRAIN_DRIFT_MMD_P",
    "drift_by": "WB_PIPELINE_RETRAIN_DRIFT_BY",
    "added_share_threshold": "WB_PIPELINE_RETRAIN_ADDED_SHARE",
}


def retrain_policy():
    """The retraining rule with any `WB_PIPELINE_RETRAIN_*` overrides (a bad value: ValueError naming it)."""
    from wb_pipeline.core.monitoring.retrain import RetrainPolicy

    values = {}
    for name, env in RETRAIN_ENV.items():
        raw = os.environ.get(env)
        if not raw:
            continue
        if name == "drift_by":
            values[name] = raw
            continue
        try:
            values[name] = float(raw)
        except ValueError:
            raise ValueError(f"{env}={raw!r} is not a number") from None
    try:
        return RetrainPolicy(**values)
    except ValueError as error:
        raise ValueError(f"retraining settings ({', '.join(RETRAIN_ENV.values())}): {error}") from None
