"""`run_benchmark`: one measured run (and optionally the dask run), the text baseline and the projection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .pipeline import resolved_shard_count, run_pipeline
from .report import (
    _run_summary,
    projection_many,
    report_table,
    shard_summary,
    stage_rows,
    step_rows,
    step_table,
)
from .stages import DASK_WORKERS, REAL_PRODUCTS, TARGET_MINUTES, TARGET_TEXT_SPEEDUP
from .text_baseline import fp32_reference_encoder, measure_text_baseline


def run_benchmark(
    raw_dir: Path,
    work_dir: Path,
    models_dir: Path,
    *,
    n_products: int,
    baseline_subset: int,
    reps: int = 1,
    text_encoder=None,
    image_encoder=None,
    reference_factory: Callable[[], Any] | None = None,
    log_level: str = "WARNING",
    n_shards: int | None = None,
    executor: str = "in_process",
    dask: bool = False,
) -> dict[str, Any]:
    """The whole benchmark on an existing WB-layout dataset in `raw_dir` of `n_products` products.

    Returns a JSON-safe dict: `stages` (the table rows), `table` (header + printed lines), `steps` and
    `step_table` (every step, shard steps with their rows and peak RSS), `shards` (their summary),
    `run`, `text_baseline`, `projection` (real catalogue), `projection_large` (10 M products on K
    workers) and, with `dask`, `dask` (the same selection on a local 2-worker cluster, wall vs this
    run's). `executor`: `in_process` or `multiprocess` (each step its own process: per-step peak RSS
    is that process's). Encoders are injectable (resources for the pipeline, a factory for the fp32
    reference), so a test can run it with tiny models.
    """
    from wb_pipeline.defs.embeddings.resources import TextEncoderResource

    if executor not in ("in_process", "multiprocess"):
        raise ValueError(f"executor {executor!r}: the measured run is in_process or multiprocess (dask: dask=True)")
    n_shards = resolved_shard_count(raw_dir, n_shards)
    text_encoder = text_encoder or TextEncoderResource(cache_dir=str(models_dir))
    run = run_pipeline(
        raw_dir,
        work_dir / executor,
        models_dir,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        log_level=log_level,
        n_shards=n_shards,
        executor=executor,
    )
    dask_result = None
    if dask:  # same data, same selection, fresh storage (empty caches): the same work
        dask_run = run_pipeline(
            raw_dir,
            work_dir / "dask",
            models_dir,
            text_encoder=text_encoder,
            image_encoder=image_encoder,
            log_level=log_level,
            n_shards=n_shards,
            executor="dask",
            load_product_text=False,
        )
        dask_result = {
            **_run_summary(dask_run),
            "workers": DASK_WORKERS,
            "threads_per_worker": 1,
            "compared_with": executor,
            "compared_wall_s": run.run_wall_s,
            "wall_ratio": dask_run.run_wall_s / run.run_wall_s,
            "speedup": run.run_wall_s / dask_run.run_wall_s,
        }
    reference = (reference_factory or (lambda: fp32_reference_encoder(models_dir)))()
    baseline = measure_text_baseline(run.product_text, baseline_subset, text_encoder, reference, work_dir, reps)
    text_rate = baseline["real_length"]["pipeline_texts_per_s"]
    rows = stage_rows(run, n_products, text_rate)
    header, lines = report_table(rows, run)
    steps = step_rows(run)
    projected_s = sum(r.projected_s for r in rows)
    text_stage = next(r for r in rows if r.stage.endswith("text_embeddings"))
    # Sensitivity: the text stage if real text has REFERENCE's tokens per word (cost ~ tokens).
    if_more_tokens_s = projected_s + text_stage.projected_s * (baseline["real_token_factor"] - 1)
    return {
        "products": n_products,
        "n_shards": n_shards,
        "executor": executor,
        "stages": [asdict(r) for r in rows],
        "table": {"header": header, "lines": lines},
        "steps": [asdict(s) for s in steps],
        "step_table": dict(zip(("header", "lines"), step_table(steps))),
        "shards": shard_summary(steps, n_products, n_shards),
        "run": _run_summary(run),
        "dask": dask_result,
        "text_baseline": baseline,
        "projection": {
            "real_products": REAL_PRODUCTS,
            "product_scale": REAL_PRODUCTS / n_products,
            "text_rate_real_length": text_rate,
            "total_s": projected_s,
            "total_min": projected_s / 60,
            "target_min": TARGET_MINUTES,
            "target_met": projected_s / 60 <= TARGET_MINUTES,
            "real_token_factor": baseline["real_token_factor"],
            "total_min_if_more_tokens": if_more_tokens_s / 60,
            "text_stage_rows_per_s": text_stage.rows_per_s,
            "text_speedup_real_length": baseline["real_length"]["speedup"],
            "text_speedup_target": TARGET_TEXT_SPEEDUP,
            "text_speedup_met": baseline["real_length"]["speedup"] >= TARGET_TEXT_SPEEDUP,
        },
        "projection_large": projection_many(run, steps, n_products, text_rate),
    }
