"""Every setting the pipeline reads from the environment, read here and nowhere else.

The core never reads the environment: it takes folders and numbers as arguments; the Dagster layer
(`wb_pipeline.definitions.build_definitions`), the command-line tools and the benchmarks get their
defaults from the functions below. `python -m wb_pipeline.settings` prints every variable with the
value in effect; `--get NAME` prints one value (the Makefile uses it).

| variable | what | default |
|---|---|---|
| `WB_PIPELINE_RAW_DIR` | folder (local path or fsspec URL) with the four WB files | the bundled sample, `data/sample/` (generated on first use) |
| `WB_PIPELINE_STORAGE_DIR` | asset values, caches, trained models (local path or fsspec URL) | `storage/` in the repo |
| `WB_PIPELINE_INCOMING_DIR` | where new-product drops arrive | `data/incoming/` in the repo |
| `WB_PIPELINE_MODELS_DIR` | LOCAL folder of converted / exported encoder models; set it when the storage dir is object storage | `<storage dir>/models` |
| `WB_PIPELINE_PRODUCTS_PER_SHARD` | products a shard of the heavy steps holds at most (on average); the shard count is the power of two that keeps it, decided per run from the catalogue size | 32000 |
| `WB_PIPELINE_SHARDS` | a fixed shard count instead (1 to 4096), the same in every process | from the products per shard |
| `WB_PIPELINE_REEMBED_CRON` | cron of `reembed_new_products_schedule` | `0 2 * * *` |
| `WB_PIPELINE_RETRAIN_DRIFT_AUC` | retrain when a drop's domain AUC exceeds it | 0.8 |
| `WB_PIPELINE_RETRAIN_DRIFT_BY` | which drift statistic retrains: `domain_auc` or `mmd` | `domain_auc` |
| `WB_PIPELINE_RETRAIN_DRIFT_MMD_P` | with `mmd`: retrain when the MMD p-value is below it | 0.01 |
| `WB_PIPELINE_RETRAIN_ADDED_SHARE` | retrain when products added since the last training reach this share | 0.25 |
| `WB_PIPELINE_SERVE_MAX_UPLOAD_BYTES` | `make serve`: the largest request body (a card with its photo) | 8388608 (8 MiB) |

All default folders are git-ignored. No dagster import here: the CLI, tests and benchmarks share it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wb_pipeline.core.data.storage import StorageLayout

RAW_DIR_ENV = "WB_PIPELINE_RAW_DIR"
STORAGE_DIR_ENV = "WB_PIPELINE_STORAGE_DIR"
INCOMING_DIR_ENV = "WB_PIPELINE_INCOMING_DIR"
MODELS_DIR_ENV = "WB_PIPELINE_MODELS_DIR"
SHARDS_ENV = "WB_PIPELINE_SHARDS"
PRODUCTS_PER_SHARD_ENV = "WB_PIPELINE_PRODUCTS_PER_SHARD"
REEMBED_CRON_ENV = "WB_PIPELINE_REEMBED_CRON"
SERVE_MAX_UPLOAD_ENV = "WB_PIPELINE_SERVE_MAX_UPLOAD_BYTES"
DEFAULT_SERVE_MAX_UPLOAD_BYTES = 8 * 1024 * 1024
DEFAULT_PRODUCTS_PER_SHARD = 32_000
DEFAULT_REEMBED_CRON = "0 2 * * *"  # nightly at 02:00

# Retraining rule (`wb_pipeline.core.monitoring.retrain.RetrainPolicy`), read by `retrain_models_sensor`.
RETRAIN_ENV = {
    "drift_auc_threshold": "WB_PIPELINE_RETRAIN_DRIFT_AUC",
    "drift_mmd_p_threshold": "WB_PIPELINE_RETRAIN_DRIFT_MMD_P",
    "drift_by": "WB_PIPELINE_RETRAIN_DRIFT_BY",
    "added_share_threshold": "WB_PIPELINE_RETRAIN_ADDED_SHARE",
}

#: Every variable this module reads (the README's configuration table lists each; a test checks it).
VARIABLES = (
    RAW_DIR_ENV,
    STORAGE_DIR_ENV,
    INCOMING_DIR_ENV,
    MODELS_DIR_ENV,
    PRODUCTS_PER_SHARD_ENV,
    SHARDS_ENV,
    REEMBED_CRON_ENV,
    *RETRAIN_ENV.values(),
    SERVE_MAX_UPLOAD_ENV,
)


def _read(name: str) -> str | None:
    """The variable's value; unset and empty are the same (None)."""
    return os.environ.get(name) or None


def project_root() -> Path:
    """The repository root when running from a checkout (editable install), else the working dir."""
    candidate = Path(__file__).resolve().parent.parent
    return candidate if (candidate / "pyproject.toml").exists() else Path.cwd()


def default_sample_dir() -> str:
    return str(project_root() / "data" / "sample")


def raw_dir() -> str:
    return _read(RAW_DIR_ENV) or default_sample_dir()


def storage_dir() -> str:
    return _read(STORAGE_DIR_ENV) or str(project_root() / "storage")


def incoming_dir() -> str:
    return _read(INCOMING_DIR_ENV) or str(project_root() / "data" / "incoming")


def models_dir() -> str | None:
    """`WB_PIPELINE_MODELS_DIR` when set, else None (= `<storage dir>/models`, see `layout()`)."""
    return _read(MODELS_DIR_ENV)


def layout(storage: str | None = None, models: str | None = None) -> StorageLayout:
    """Where everything goes: the storage dir (`storage`, else `WB_PIPELINE_STORAGE_DIR`, else
    `storage/`) and the encoder models folder (`models`, else `WB_PIPELINE_MODELS_DIR`, else
    `<storage dir>/models`)."""
    return StorageLayout(storage or storage_dir(), models or models_dir())


def _whole_number(name: str, default: int, minimum: int, maximum: int | None, what: str) -> int:
    """The variable `name` as an int in [minimum, maximum] (`default` when unset), else a ValueError
    naming the variable, its value and the allowed range of `what`."""
    raw = _read(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise ValueError(f"{name}={value}: use {allowed} {what}")
    return value


def n_shards() -> int:
    """`WB_PIPELINE_SHARDS`: a fixed number of product shards for the heavy steps; 0 when unset (the
    count then follows the catalogue size, `products_per_shard`). Every process of a deployment
    (orchestrator, workers, pods) must see the same value."""
    return _whole_number(SHARDS_ENV, 0, 1, 4096, "shards")


def products_per_shard() -> int:
    """`WB_PIPELINE_PRODUCTS_PER_SHARD` (default 32,000): the shard count of a run is the smallest power of
    two that keeps at most this many products in a shard on average."""
    return _whole_number(PRODUCTS_PER_SHARD_ENV, DEFAULT_PRODUCTS_PER_SHARD, 1, None, "products per shard")


def reembed_cron() -> str:
    """`WB_PIPELINE_REEMBED_CRON`: when `reembed_new_products_schedule` looks for new drops (read when
    the code location loads), default nightly at 02:00."""
    return _read(REEMBED_CRON_ENV) or DEFAULT_REEMBED_CRON


def retrain_policy():
    """The retraining rule with any `WB_PIPELINE_RETRAIN_*` overrides (a bad value: ValueError naming it)."""
    from wb_pipeline.core.monitoring.retrain import RetrainPolicy

    values = {}
    for name, env in RETRAIN_ENV.items():
        raw = _read(env)
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


def serve_max_upload_bytes() -> int:
    """`WB_PIPELINE_SERVE_MAX_UPLOAD_BYTES`: the HTTP service's largest request body (default 8 MiB)."""
    return _whole_number(SERVE_MAX_UPLOAD_ENV, DEFAULT_SERVE_MAX_UPLOAD_BYTES, 1024, None, "bytes")


def effective() -> dict[str, str]:
    """Every setting with the value in effect (defaults resolved), by short name."""
    policy = retrain_policy()
    return {
        "raw_dir": raw_dir(),
        "storage_dir": storage_dir(),
        "incoming_dir": incoming_dir(),
        "models_dir": layout().encoder_models,
        "products_per_shard": str(products_per_shard()),
        "shards": str(n_shards() or "from products_per_shard"),
        "reembed_cron": reembed_cron(),
        **{name: str(getattr(policy, name)) for name in RETRAIN_ENV},
        "serve_max_upload_bytes": str(serve_max_upload_bytes()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The pipeline's settings in effect (environment + defaults).")
    names = list(effective())
    parser.add_argument("--get", choices=names, help="print only this setting's value")
    args = parser.parse_args(argv)
    values = effective()
    if args.get:
        print(values[args.get])
        return 0
    variables = dict(
        zip(
            names,
            (
                RAW_DIR_ENV,
                STORAGE_DIR_ENV,
                INCOMING_DIR_ENV,
                MODELS_DIR_ENV,
                PRODUCTS_PER_SHARD_ENV,
                SHARDS_ENV,
                REEMBED_CRON_ENV,
                *RETRAIN_ENV.values(),
                SERVE_MAX_UPLOAD_ENV,
            ),
        )
    )
    for name, value in values.items():
        source = "set" if _read(variables[name]) else "default"
        print(f"{variables[name]:<34} {value}  ({source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
