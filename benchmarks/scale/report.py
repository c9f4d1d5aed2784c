"""The scale benchmark's tables: per-stage and per-step rows, the projection to the real catalogue and to
millions of products, the summary lines and the JSON / markdown outputs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from .pipeline import PipelineRun
from .stages import (
    CHECKS_STAGE,
    OVERHEAD_STAGE,
    PROJECTION_WORKERS,
    REAL_DESCRIPTION_WORDS,
    REAL_PRODUCTS,
    REAL_TEST_PRODUCTS,
    REAL_TOKENS_PER_WORD,
    REAL_TRAIN_PRODUCTS,
    SHARDED_STAGES,
    STAGES,
    TARGET_HOURS_LARGE,
    TARGET_MINUTES,
    TARGET_PRODUCTS_LARGE,
    TARGET_TEXT_SPEEDUP,
    stage_step_keys,
)


@dataclass
class StageRow:
    stage: str
    rows: int | None
    wall_s: float
    rows_per_s: float | None
    peak_rss_mib: float | None
    projected_s: float
    steps: int = 1  # steps in the stage: its shard steps + the gather, or 1


def _text_encoding_seconds(run: PipelineRun, seconds: float) -> float:
    """Seconds the text shard steps spent in the encoder (their `seconds` metadata, summed by the gather)."""
    return min(float(run.metadata["text_embeddings"].get("seconds") or seconds), seconds)


def stage_rows(run: PipelineRun, n_products: int, text_rate_real_length: float) -> list[StageRow]:
    """One row per stage in run order, then the checks and the run's overhead; each with its
    projection to the real catalogue: seconds x (real products / generated products), except the
    text encoding itself, which is real products / `text_rate_real_length` (texts/s of the
    pipeline's text path on ~200-word descriptions) plus the stage's time outside the encoding,
    scaled by products. The run's overhead outside steps is a fixed cost, not scaled.

    A sharded stage's wall is the sum of its shard steps and its gather (the steps run one after
    another with the in-process and multiprocess executors), its peak the largest of theirs, its rows
    the gather's (= the shards' rows summed)."""
    scale = REAL_PRODUCTS / n_products
    rows, known = [], set()
    for stage_key, label, assets, sharded in STAGES:
        keys = stage_step_keys(stage_key, sharded, run.n_shards)
        missing = [k for k in keys if k not in run.steps]
        if missing:
            raise RuntimeError(f"the run has no step {missing}: steps {sorted(run.steps)}")
        known.update(keys)
        seconds = sum(run.steps[k]["seconds"] for k in keys)
        peak = max(run.steps[k]["peak_rss_mib"] for k in keys)
        count = sum(int(run.metadata[a]["dagster/row_count"]) for a in assets)
        projected = seconds * scale
        if stage_key == "text_embeddings":
            encoding = _text_encoding_seconds(run, seconds)
            projected = REAL_PRODUCTS / text_rate_real_length + (seconds - encoding) * scale
        rows.append(
            StageRow(label, count, seconds, count / seconds if seconds > 0 else None, peak, projected, len(keys))
        )
    checks = [s for k, s in run.steps.items() if k not in known]
    if checks:
        seconds = sum(s["seconds"] for s in checks)
        rows.append(
            StageRow(
                f"{CHECKS_STAGE} ({len(checks)})",
                None,
                seconds,
                None,
                max(s["peak_rss_mib"] for s in checks),
                seconds * scale,
                len(checks),
            )
        )
    overhead = max(run.run_wall_s - sum(s["seconds"] for s in run.steps.values()), 0.0)
    rows.append(StageRow(OVERHEAD_STAGE, None, overhead, None, None, overhead, 0))  # fixed cost: not scaled
    return rows


@dataclass
class StepRow:
    step: str
    kind: str  # "shard list", "shard", "gather", "whole catalogue" or "check"
    stage: str | None  # the sharded stage of a shard step / gather
    rows: int | None
    wall_s: float
    rows_per_s: float | None
    peak_rss_mib: float
    measured_in: str  # "own process" (multiprocess) or "shared process" (in-process: includes earlier steps)


def step_rows(run: PipelineRun) -> list[StepRow]:
    """Every step of the run in the order it started: shard steps with their rows (the shard asset's
    `dagster/row_count`), gathers, whole-catalogue steps and checks, each with its wall and peak RSS."""
    from wb_pipeline.defs import sharding

    kind_of: dict[str, tuple[str, str | None, tuple[str, ...]]] = {}
    for stage_key, _, assets, sharded in STAGES:
        if sharded:
            listing, *shards, gather = sharding.stage_step_keys(stage_key, run.n_shards)
            kind_of[listing] = ("shard list", stage_key, ())
            for name in shards:  # a shard's rows: its step's output metadata (`run.metadata[step key]`)
                kind_of[name] = ("shard", stage_key, (name,))
            kind_of[gather] = ("gather", stage_key, assets)
        else:
            kind_of[stage_key] = ("whole catalogue", None, assets)
    measured_in = "own process" if run.executor == "multiprocess" else "shared process"
    rows = []
    for key, step in sorted(run.steps.items(), key=lambda item: item[1]["start"]):
        kind, stage, assets = kind_of.get(key, ("check", None, ()))
        count = sum(int(run.metadata[a]["dagster/row_count"]) for a in assets) if assets else None
        rows.append(
            StepRow(
                key,
                kind,
                stage,
                count,
                step["seconds"],
                count / step["seconds"] if count is not None and step["seconds"] > 0 else None,
                step["peak_rss_mib"],
                measured_in,
            )
        )
    return rows


def shard_summary(steps: list[StepRow], n_products: int, n_shards: int) -> dict[str, Any]:
    """Per sharded stage: its shard steps' rows, and the lowest / highest peak RSS of its shard steps;
    the highest of every shard step, of the gathers, and of the whole-catalogue steps and checks."""
    shard_steps = [s for s in steps if s.kind == "shard"]
    per_stage = {}
    for stage in SHARDED_STAGES:
        mine = [s for s in shard_steps if s.stage == stage]
        per_stage[stage] = {
            "steps": len(mine),
            "rows_min": min(s.rows for s in mine),
            "rows_max": max(s.rows for s in mine),
            "peak_rss_mib_min": min(s.peak_rss_mib for s in mine),
            "peak_rss_mib_max": max(s.peak_rss_mib for s in mine),
            "wall_s": sum(s.wall_s for s in mine),
        }

    def peak(kinds: tuple[str, ...]) -> float | None:
        found = [s.peak_rss_mib for s in steps if s.kind in kinds]
        return max(found) if found else None

    return {
        "products_per_shard": n_products / n_shards,
        "per_stage": per_stage,
        "shard_step_peak_mib": peak(("shard",)),
        "gather_peak_mib": peak(("gather",)),
        "whole_catalogue_peak_mib": peak(("whole catalogue", "check")),
        "measured_in": steps[0].measured_in if steps else None,
    }


def step_table(steps: list[StepRow]) -> tuple[list[str], list[list[str]]]:
    header = ["step", "kind", "rows", "wall s", "rows/s", "peak RSS MiB"]
    return header, [
        [
            s.step,
            s.kind,
            _fmt(s.rows, ","),
            _fmt(s.wall_s, ".2f"),
            _fmt(s.rows_per_s, ",.0f"),
            _fmt(s.peak_rss_mib, ".0f"),
        ]
        for s in steps
    ]


def projection_many(
    run: PipelineRun,
    steps: list[StepRow],
    n_products: int,
    text_rate_real_length: float,
    target_products: int = TARGET_PRODUCTS_LARGE,
    target_hours: float = TARGET_HOURS_LARGE,
    workers: tuple[int, ...] = PROJECTION_WORKERS,
) -> dict[str, Any]:
    """Hours for `target_products` on K workers, from this run's per-step seconds:

    - shard steps run in parallel on the K workers: their seconds per product (summed over the four
      sharded stages) x target / K; the text shard steps' encoding counted at `text_rate_real_length`
      (the pipeline's rate on ~200-word descriptions) instead of the generated text's rate;
    - every other step (raw tables, cleaning, the gathers, the checks) stays one step on one worker:
      seconds per product x target, in series with the shard steps;
    - both linear in products at THIS shard size (products / N measured here): per-step fixed costs
      (step start, loading the encoder in a fresh process) are then the same share per product.
      Not included: the run's overhead outside steps, scheduling and storage contention between
      workers, the whole-catalogue steps' memory at 10 M (see `whole_catalogue_vectors_gib`).

    A worker is what ran each step here: one step at a time on this machine's cores (see `machine`)."""
    shard_s = sum(s.wall_s for s in steps if s.kind == "shard")
    text_shards_s = sum(s.wall_s for s in steps if s.kind == "shard" and s.stage == "text_embeddings")
    encoding_s = min(float(run.metadata["text_embeddings"].get("seconds") or text_shards_s), text_shards_s)
    shard_s_real_text = shard_s - encoding_s + n_products / text_rate_real_length
    serial_s = sum(s.wall_s for s in steps if s.kind != "shard")
    parallel_per_product, serial_per_product = shard_s_real_text / n_products, serial_s / n_products
    budget_s = target_hours * 3600
    serial_total = serial_per_product * target_products
    parallel_total = parallel_per_product * target_products
    needed = math.ceil(parallel_total / (budget_s - serial_total)) if serial_total < budget_s else None
    dims = {stage: int(run.metadata[stage].get("dim") or 0) for stage in ("text_embeddings", "image_embeddings")}
    return {
        "target_products": target_products,
        "target_hours": target_hours,
        "executor": run.executor,
        "products_per_shard": n_products / run.n_shards,
        "shards_at_target": math.ceil(target_products / (n_products / run.n_shards)),
        "shard_s_per_product": parallel_per_product,
        "serial_s_per_product": serial_per_product,
        "text_rate_real_length": text_rate_real_length,
        "serial_hours": serial_total / 3600,
        "parallel_hours_one_worker": parallel_total / 3600,
        "hours_by_workers": {k: (serial_total + parallel_total / k) / 3600 for k in workers},
        "workers_for_target": needed,
        "whole_catalogue_vectors_gib": {stage: target_products * dim * 4 / 2**30 for stage, dim in dims.items()},
    }


def _fmt(value: float | int | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def report_table(rows: list[StageRow], run: PipelineRun) -> tuple[list[str], list[list[str]]]:
    """(header, lines) of the stage table, a total line last."""
    header = ["stage", "steps", "rows", "wall s", "rows/s", "peak RSS MiB", "projected s (real catalogue)"]
    lines = [
        [
            r.stage,
            str(r.steps) if r.steps else "",
            _fmt(r.rows, ","),
            _fmt(r.wall_s, ".2f"),
            _fmt(r.rows_per_s, ",.0f"),
            _fmt(r.peak_rss_mib, ".0f"),
            _fmt(r.projected_s, ",.0f"),
        ]
        for r in rows
    ]
    products = next(r.rows for r in rows if r.stage.startswith("preprocessing: clean"))
    lines.append(
        [
            "total (one run)",
            str(sum(r.steps for r in rows)),
            _fmt(products, ","),
            _fmt(run.run_wall_s, ".2f"),
            _fmt(products / run.run_wall_s, ",.0f"),
            _fmt(run.rss_peak_mib, ".0f"),
            _fmt(sum(r.projected_s for r in rows), ",.0f"),
        ]
    )
    return header, lines


def _run_summary(run: PipelineRun) -> dict[str, Any]:
    return {
        "executor": run.executor,
        "n_shards": run.n_shards,
        "wall_s": run.run_wall_s,
        "rss_peak_mib": run.rss_peak_mib,
        "rss_before_mib": run.rss_before_mib,
        "rss_after_mib": run.rss_after_mib,
        "warm_up_s": run.warm_up_s,
        "storage_bytes": run.storage_bytes,
        "cluster_start_s": run.cluster_start_s,
        "steps": run.steps,
        "step_memory": run.step_memory,
        "metadata": {
            a: {k: v for k, v in m.items() if isinstance(v, (int, float, str)) and k != "preview"}
            for a, m in run.metadata.items()
        },
    }


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The lines printed (and written to the markdown) below the table."""
    p, b = results["projection"], results["text_baseline"]
    machine, data = results["machine"], results["data"]
    gen, real, cat = b["generated"], b["real_length"], b["catalogue_tokens"]
    text_meta = results["run"]["metadata"].get("text_embeddings", {})
    budget_text = (
        f"description budget {b['budget']['description_tokens']} tokens"
        if b["budget"]["description_tokens"]
        else "whole description"
    ) + f", max_seq_length {b['budget']['max_seq_length']}"
    executor = results["run"]["executor"]
    how = (
        "one in-process run: every step in this process"
        if executor == "in_process"
        else "one multiprocess run, one step at a time, each step in a fresh process (its peak RSS measured there)"
    )
    lines = [
        f"Run: {how}; {results['n_shards']} product shards "
        f"({results['shards']['products_per_shard']:,.0f} generated products per shard).",
        f"Projection for the real catalogue ({REAL_TRAIN_PRODUCTS:,} train + {REAL_TEST_PRODUCTS:,} test = "
        f"{REAL_PRODUCTS:,} products): {p['total_min']:.1f} min "
        f"(target <= {TARGET_MINUTES:.0f} min on 2 cores: {'met' if p['target_met'] else 'NOT met'}). "
        f"Every stage x {p['product_scale']:.3f} (product count), except the text encoding: "
        f"{REAL_PRODUCTS:,} texts at the pipeline's {p['text_rate_real_length']:.1f} texts/s measured on "
        f"{REAL_DESCRIPTION_WORDS}-word descriptions (below; every product counted, duplicates too); "
        f"the run overhead is not scaled. If real text tokenises at {REAL_TOKENS_PER_WORD} tokens/word "
        f"(REFERENCE) instead of the generator's {real['tokens']['tokens_per_word']:.1f}, the text path's input "
        f"grows x{p['real_token_factor']:.2f} in tokens: {p['total_min_if_more_tokens']:.1f} min.",
        f"Generated descriptions: mean {b['catalogue_description_words_mean']:.0f} words; title + description "
        f"mean {cat['words_mean']:.0f} words = {cat['tokens_mean']:.0f} tokens, {cat['pipeline_tokens_mean']:.0f} "
        f"as the pipeline feeds them ({budget_text}); with {REAL_DESCRIPTION_WORDS}-word descriptions "
        f"{real['tokens']['tokens_mean']:.0f} tokens, {real['tokens']['pipeline_tokens_mean']:.0f} fed.",
        f"Text, {b['subset']} products (median of {b['reps']}): fp32 torch reference (512 tokens) "
        f"{gen['reference_texts_per_s']:.1f} texts/s vs pipeline text_embeddings {gen['pipeline_texts_per_s']:.1f} "
        f"= {gen['speedup']:.2f}x on the generated text; {real['reference_texts_per_s']:.1f} vs "
        f"{real['pipeline_texts_per_s']:.1f} = {real['speedup']:.2f}x with {REAL_DESCRIPTION_WORDS}-word descriptions "
        f"(target >= {TARGET_TEXT_SPEEDUP:.0f}x: {'met' if p['text_speedup_met'] else 'NOT met'}). "
        f"Full text stage: {p['text_stage_rows_per_s']:,.1f} rows/s ({text_meta.get('embedded_now', '?')} distinct "
        f"texts encoded for {text_meta.get('dagster/row_count', '?')} rows; the projection counts every real "
        f"product as a distinct text).",
    ]
    lines.append(shard_line(results))
    lines.append(large_projection_line(results["projection_large"]))
    if results.get("dask"):
        d = results["dask"]
        lines.append(
            f"Dask: the same selection on a local cluster of {d['workers']} worker processes x "
            f"{d['threads_per_worker']} thread (steps two at a time, fresh storage): {d['wall_s']:.1f} s vs "
            f"{d['compared_wall_s']:.1f} s {d['compared_with'].replace('_', '-')} = x{d['wall_ratio']:.2f} the wall "
            f"time (speed-up {d['speedup']:.2f}x; cluster start {d['cluster_start_s']:.1f} s not counted; each "
            f"worker loads the encoders inside the run, the {d['compared_with'].replace('_', '-')} run had them "
            f"loaded before it; peak RSS of this process + cluster {d['rss_peak_mib']:.0f} MiB)."
        )
    lines += [
        f"Data: {results['products']:,} generated products, {data['bytes'] / 2**30:.2f} GiB, "
        f"{'reused' if data['reused'] else 'generated'} in {data['seconds']:.0f} s (not in the total); "
        f"model preparation before the run (not in the total): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in results["run"]["warm_up_s"].items())
        + f". RSS: {results['run']['rss_before_mib']:.0f} MiB with the encoders loaded before the run, peak "
        f"{results['run']['rss_peak_mib']:.0f} MiB during it ("
        + (
            "one process: the in-process executor"
            if executor == "in_process"
            else "this process + the forkserver + the step process running"
        )
        + f"); process peak {results['process_peak_rss_mib']['self']:.0f} MiB (model preparation and the fp32 "
        "reference included).",
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores of {machine['cpu_count']}, "
        f"{machine['memory_gib']} GiB, torch {machine['torch']} ({machine['torch_threads']} threads); "
        f"1-min load average {results['load_average']['start'][0]:.2f} at start, "
        f"{results['load_average']['end'][0]:.2f} at end (> cores: timings were contended); {machine['date']}.",
    ]
    return lines


def shard_line(results: dict[str, Any]) -> str:
    s = results["shards"]
    parts = [
        f"{stage} {v['peak_rss_mib_min']:.0f}-{v['peak_rss_mib_max']:.0f} MiB ({v['rows_min']:,}-"
        f"{v['rows_max']:,} rows)"
        for stage, v in s["per_stage"].items()
    ]
    where = (
        "each in its own process"
        if s["measured_in"] == "own process"
        else "sampled in the one shared process, so each includes what earlier steps left: run with "
        "--executor multiprocess for per-step figures"
    )
    return (
        f"Shard steps' peak RSS ({where}): " + "; ".join(parts) + f". Highest shard step "
        f"{s['shard_step_peak_mib']:.0f} MiB, gathers {s['gather_peak_mib']:.0f} MiB, whole-catalogue steps "
        f"and checks {s['whole_catalogue_peak_mib']:.0f} MiB."
    )


def large_projection_line(q: dict[str, Any]) -> str:
    hours = ", ".join(f"K={k}: {h:.1f} h" for k, h in q["hours_by_workers"].items())
    needed = (
        f"{q['workers_for_target']} workers reach {q['target_hours']:.0f} h"
        if q["workers_for_target"]
        else f"NO number of workers reaches {q['target_hours']:.0f} h: the whole-catalogue steps alone take "
        f"{q['serial_hours']:.1f} h"
    )
    vectors = ", ".join(f"{k} {v:.1f} GiB" for k, v in q["whole_catalogue_vectors_gib"].items())
    return (
        f"Projection for {q['target_products']:,} products on K workers (shard steps spread over the K workers "
        f"at {q['products_per_shard']:,.0f} products per shard = {q['shards_at_target']:,} shards; every other "
        f"step one worker, in series; linear in products; text encoding at {q['text_rate_real_length']:.1f} "
        f"texts/s as above; a worker = one step at a time on this machine's cores, figures from the "
        f"{q['executor'].replace('_', '-')} run): shard steps {q['parallel_hours_one_worker']:.1f} worker-hours, "
        f"whole-catalogue steps {q['serial_hours']:.1f} h; {hours}; {needed}. Not counted: run overhead, "
        f"contention between workers, and the whole-catalogue steps' memory (the gathered vectors alone: "
        f"{vectors})."
    )


def write_outputs(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """`scale-<n>-<N>sh-<executor>.json` (everything) and `.md` (the tables + summary, for the README)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"scale-{results['products']}-{results['n_shards']}sh-{results['executor'].replace('_', '-')}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    table = _markdown(results["table"])
    steps = _markdown(results["step_table"])
    md_path.write_text(
        f"Scale benchmark, {results['products']:,} generated products, {results['n_shards']} shards, "
        f"{results['executor'].replace('_', '-')}\n\n{table}\n\n"
        + "\n\n".join(summary_lines(results))
        + f"\n\nEvery step ({results['shards']['measured_in']} peak RSS):\n\n{steps}\n"
    )
    return json_path, md_path


def _markdown(table: dict[str, Any]) -> str:
    return tabulate(
        table["lines"],
        headers=table["header"],
        tablefmt="github",
        disable_numparse=True,
        colalign=("left", *["right"] * (len(table["header"]) - 1)),
    )


def compare(paths: list[Path]) -> str:
    """One line per results file: products, shards, products per shard, highest shard-step peak per
    sharded stage, gathers' and whole-catalogue steps' peaks, the run's peak and wall (flatness check)."""
    header = [
        "products",
        "shards",
        "products/shard",
        "executor",
        *[f"{stage} shard peak MiB" for stage in SHARDED_STAGES],
        "gathers peak MiB",
        "whole-catalogue steps peak MiB",
        "run peak MiB",
        "run wall s",
    ]
    lines = []
    for path in paths:
        r = json.loads(Path(path).read_text())
        s = r["shards"]
        lines.append(
            [
                f"{r['products']:,}",
                str(r["n_shards"]),
                f"{s['products_per_shard']:,.0f}",
                r["executor"],
                *[f"{s['per_stage'][stage]['peak_rss_mib_max']:.0f}" for stage in SHARDED_STAGES],
                f"{s['gather_peak_mib']:.0f}",
                f"{s['whole_catalogue_peak_mib']:.0f}",
                f"{r['run']['rss_peak_mib']:.0f}",
                f"{r['run']['wall_s']:.1f}",
            ]
        )
    return _markdown({"header": header, "lines": lines})
