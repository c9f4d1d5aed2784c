"""Progress a person can follow in the run log: rate + ETA inside long steps, one line per finished step;
and the memory a finished step freed, handed back to the OS."""

from __future__ import annotations

import time

import dagster as dg
from dagster import DagsterEventType

from wb_pipeline.core.runtime.memory import release_free_memory


def progress_logger(context: dg.AssetExecutionContext, what: str, verb: str = "embedded"):
    """A progress callback `(done, total, seconds so far)` that logs done/total, rate and ETA to the run log."""

    def report(done: int, total: int, seconds: float) -> None:
        rate = done / seconds if seconds > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        context.log.info(f"{what}: {done}/{total} {verb} ({rate:.3g}/s), ETA {eta:.0f}s")

    return report


def _step_seconds(context: dg.HookContext) -> float | None:
    """Seconds since this step's STEP_START event (the event log is the one clock every executor shares)."""
    records = context.instance.get_records_for_run(run_id=context.run_id, of_type=DagsterEventType.STEP_START).records
    starts = [r.timestamp for r in records if r.event_log_entry.step_key == context.step_key]
    return time.time() - max(starts) if starts else None


def _row_counts(context: dg.HookContext) -> dict[str, int]:
    """`dagster/row_count` per output (the asset's name for multi-assets, the op's for single ones)."""
    counts = {}
    for output_name, entries in (context.op_output_metadata or {}).items():
        value = (entries or {}).get("dagster/row_count")
        if value is not None:
            counts[context.op.name if output_name == "result" else output_name] = int(getattr(value, "value", value))
    return counts


@dg.success_hook(name="log_finished_step")
def log_finished_step(context: dg.HookContext) -> None:
    """One INFO line per finished step with its time and row counts: with the console logger at INFO
    (`deploy/cli-run.yaml`), the CLI run prints these instead of Dagster's per-event DEBUG lines."""
    seconds = _step_seconds(context)
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    rows = ", ".join(f"{name}: {count:,} rows" for name, count in _row_counts(context).items())
    context.log.info(f"finished {context.step_key}{took}" + (f" ({rows})" if rows else ""))


@dg.success_hook(name="release_free_memory")
def release_memory_after_step(context: dg.HookContext) -> None:
    """After each step, hand the memory it freed back to the OS (`core.runtime.memory.release_free_memory`):
    in an in-process run (`make run`) every step shares one process, whose RSS would otherwise stay
    at the highest any step reached."""
    release_free_memory()
