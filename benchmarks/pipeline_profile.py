"""Where a first run's time goes: per-step wall and CPU of ONE `full_pipeline` run on a fresh storage.

Usage::

    .venv/bin/python -m benchmarks.pipeline_profile                 # the bundled 3,000-product sample
    .venv/bin/python -m benchmarks.pipeline_profile --short         # a generated 400-product sample (CI)
    .venv/bin/python -m benchmarks.pipeline_profile --executor multiprocess   # Dagster's default executor
    .venv/bin/python -m benchmarks.pipeline_profile --raw-dir /path/to/wb_layout_folder

The run is `make run`'s (`deploy/cli-run.yaml`: in-process executor) unless `--executor multiprocess`
(a fresh interpreter per step, Dagster's default for the job). Storage and the Dagster instance are
fresh folders under `benchmarks/out/pipeline_profile/`; converted / exported models come from the main
run's models folder (`benchmarks.paths.MODELS_DIR`), unless `--fresh-models`: a fresh folder, so the
one-time e5 conversion and ONNX exports land in the embedding steps, as on a machine's first run.

Per step: wall seconds (STEP_START..STEP_SUCCESS in the event log: input loading and output writing
included), CPU seconds of all threads (a success hook reads the process CPU: in-process, the CPU
between this step's end and the previous one's; multiprocess, the step process's own CPU, start-up
imports included),
the CPU/wall ratio (≈ the cores a step keeps busy), rows (`dagster/row_count`, summed over a
multi-asset's outputs), and for multiprocess
the worker start-up (STEP_WORKER_STARTING..STEP_START: a new interpreter importing the code location).
Printed as a table sorted by wall time, and written to `<out>/profile-<executor>.json` / `.md`;
`--executor both` runs both executors one after the other and prints their wall and CPU ratios.
Never passes or fails on a timing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from dagster import DagsterEventType

from benchmarks.paths import MODELS_DIR
from wb_pipeline import settings

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "pipeline_profile"
PARAMETERS_ENV = "WB_PIPELINE_PROFILE_JOB"  # how `profile_job` gets its folders and executor
SHORT_PRODUCTS = 400


@dg.success_hook(name="mark_step_cpu")
def mark_step_cpu(context: dg.HookContext) -> None:
    """Appends (step, pid, CPU seconds of this process so far) to the marks file: a file, because the
    reconstructed job's module is not this `__main__`, and multiprocess steps run in other processes."""
    with open(json.loads(os.environ[PARAMETERS_ENV])["cpu_marks"], "a") as marks:
        marks.write(json.dumps({"step": context.step_key, "pid": os.getpid(), "cpu": time.process_time()}) + "\n")


PROFILE_JOB = "full_pipeline_profile"


def profile_job() -> dg.JobDefinition:
    """`full_pipeline`'s selection and hooks over the folders in the environment, plus the CPU hook, on
    the chosen executor (module-level, no arguments: `dg.execute_job` reconstructs the job from it)."""
    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.automation.jobs import full_pipeline

    parameters = json.loads(os.environ[PARAMETERS_ENV])
    defs = build_definitions(
        raw_dir=parameters["raw_dir"],
        storage_dir=parameters["storage_dir"],
        incoming_dir=parameters["incoming_dir"],
        models_dir=parameters["models_dir"],
    )
    executor = dg.in_process_executor if parameters["executor"] == "in_process" else dg.multiprocess_executor
    job = dg.define_asset_job(
        PROFILE_JOB,
        selection=full_pipeline.selection,
        hooks={*full_pipeline.hooks, mark_step_cpu},
        executor_def=executor,
    )
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def(PROFILE_JOB)


def _records(instance, run_id: str, event_type) -> dict[str, float]:
    records = instance.get_records_for_run(run_id=run_id, of_type=event_type, limit=100_000).records
    return {r.event_log_entry.step_key: r.timestamp for r in records if r.event_log_entry.step_key}


def _row_counts(instance, run_id: str) -> dict[str, int]:
    """Sum of `dagster/row_count` over each step's materializations."""
    counts: dict[str, int] = {}
    records = instance.get_records_for_run(
        run_id=run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION, limit=100_000
    ).records
    for record in records:
        entry = record.event_log_entry
        value = entry.asset_materialization.metadata.get("dagster/row_count") if entry.asset_materialization else None
        if value is not None and entry.step_key:
            counts[entry.step_key] = counts.get(entry.step_key, 0) + int(value.value)
    return counts


def step_cpu_seconds(marks_file: Path, cpu_before: float) -> dict[str, float]:
    """CPU per step: in this process, the CPU between a step's end and the previous step's end (steps
    run one after another); in a step's own process (multiprocess), that process's whole CPU."""
    marks = [json.loads(line) for line in marks_file.read_text().splitlines()] if marks_file.exists() else []
    step_cpu, previous = {}, cpu_before
    for mark in marks:
        if mark["pid"] == os.getpid():
            step_cpu[mark["step"]], previous = mark["cpu"] - previous, mark["cpu"]
        else:
            step_cpu[mark["step"]] = mark["cpu"]
    return step_cpu


def run_profile(raw_dir: str | None, executor: str, models_dir: str | None, out_dir: Path) -> dict:
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    home = work / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    parameters = {
        "raw_dir": raw_dir,
        "storage_dir": str(work / "storage"),
        "incoming_dir": str(work / "incoming"),
        "models_dir": settings.layout(str(work / "storage"), models_dir).encoder_models,
        "executor": executor,
        "cpu_marks": str(work / "cpu_marks.jsonl"),
    }
    os.environ[PARAMETERS_ENV] = json.dumps(parameters)
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        cpu_before, children_before = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = dg.execute_job(dg.reconstructable(profile_job), instance, run_config=run_config)
        wall = time.perf_counter() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        children_cpu = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
        run_id = result.run_id
        starts = _records(instance, run_id, DagsterEventType.STEP_START)
        ends = _records(instance, run_id, DagsterEventType.STEP_SUCCESS)
        workers = _records(instance, run_id, DagsterEventType.STEP_WORKER_STARTING)
        rows = _row_counts(instance, run_id)
    step_cpu = step_cpu_seconds(Path(parameters["cpu_marks"]), cpu_before)
    first_finished = next(iter(step_cpu), None) if executor == "in_process" else None
    steps = []
    for step, start in starts.items():
        end = ends.get(step)
        steps.append(
            {
                "step": step,
                "wall_s": (end - start) if end else None,
                "cpu_s": step_cpu.get(step),
                "rows": rows.get(step),
                "startup_s": (start - workers[step]) if step in workers else None,
            }
        )
    steps.sort(key=lambda s: -(s["wall_s"] or 0))
    return {
        "success": result.success,
        "executor": executor,
        "raw_dir": raw_dir or "bundled sample",
        "run_wall_s": wall,
        "run_cpu_s": (time.process_time() - cpu_before) + children_cpu,
        "steps": steps,
        "first_finished": first_finished,
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(profile: dict) -> str:
    lines = ["| step | wall s | CPU s | CPU / wall | rows | worker start-up s |", "|---|---|---|---|---|---|"]
    for s in profile["steps"]:
        ratio = s["cpu_s"] / s["wall_s"] if s["cpu_s"] is not None and s["wall_s"] else None
        lines.append(
            f"| {s['step']} | {_fmt(s['wall_s'], '.1f')} | {_fmt(s['cpu_s'], '.1f')} | {_fmt(ratio, '.2f')} "
            f"| {_fmt(s['rows'], ',')} | {_fmt(s['startup_s'], '.1f')} |"
        )
    step_wall = sum(s["wall_s"] or 0 for s in profile["steps"])
    startup = sum(s["startup_s"] or 0 for s in profile["steps"])
    lines += [
        "",
        f"run ({profile['executor']} executor, {profile['raw_dir']}): **{profile['run_wall_s']:.1f} s wall**, "
        f"{profile['run_cpu_s']:.1f} s CPU (all processes), sum of step walls {step_wall:.1f} s"
        + (f", worker start-ups {startup:.1f} s" if startup else "")
        + f"; {profile['cpus']} CPUs, load average at the end {profile['load_average'][0]:.1f}; "
        f"success={profile['success']} ({profile['when']})",
    ]
    if profile.get("first_finished"):
        lines.append(
            f"(the CPU of {profile['first_finished']}, the first step to finish, includes the run's own "
            "set-up before it: resources, imports)"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help=f"a generated {SHORT_PRODUCTS}-product sample (CI)")
    parser.add_argument("--raw-dir", help="a WB-layout folder (default: the bundled sample)")
    parser.add_argument(
        "--executor",
        choices=("in_process", "multiprocess", "both"),
        default="in_process",
        help="both: one run on each, one after the other, and their ratio",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--fresh-models", action="store_true", help="convert / export the encoders inside the run (a first run)"
    )
    args = parser.parse_args()
    raw_dir = args.raw_dir
    if args.short and not raw_dir:
        from wb_pipeline.sample_data import SampleSpec, ensure_sample

        raw_dir = str(args.out / f"sample-{SHORT_PRODUCTS}")
        ensure_sample(raw_dir, SampleSpec(n_products=SHORT_PRODUCTS, seed=11))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.executor == "both":
        return compare_executors(args, raw_dir)
    profile = run_profile(raw_dir, args.executor, None if args.fresh_models else str(MODELS_DIR), args.out)
    table = markdown(profile)
    print(table, flush=True)
    (args.out / f"profile-{args.executor}.json").write_text(json.dumps(profile, indent=2))
    (args.out / f"profile-{args.executor}.md").write_text(table + "\n")
    return 0 if profile["success"] else 1


def compare_executors(args, raw_dir: str | None) -> int:
    """One run per executor, one after the other, each in its own interpreter (Dagster caches the
    reconstructed job per process, so a second run in this one would reuse the first's executor)."""
    profiles = {}
    for executor in ("in_process", "multiprocess"):
        out = args.out / executor
        command = [sys.executable, "-m", "benchmarks.pipeline_profile", "--executor", executor, "--out", str(out)]
        command += ["--fresh-models"] if args.fresh_models else []
        subprocess.run(command + (["--raw-dir", raw_dir] if raw_dir else []), check=False)
        profiles[executor] = json.loads((out / f"profile-{executor}.json").read_text())
    inside, multi = profiles["in_process"], profiles["multiprocess"]
    print(
        f"in-process / multiprocess: wall {inside['run_wall_s'] / multi['run_wall_s']:.2f}, "
        f"CPU {inside['run_cpu_s'] / multi['run_cpu_s']:.2f}"
    )
    return 0 if all(p["success"] for p in profiles.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
