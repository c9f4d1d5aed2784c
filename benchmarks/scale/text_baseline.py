"""The text baseline of the scale benchmark: the fp32 torch reference against the pipeline's own
`text_embeddings` path, on generated descriptions and on descriptions lengthened to the real catalogue's length."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .pipeline import _metadata
from .stages import (
    REAL_DESCRIPTION_WORDS,
    REAL_TOKENS_PER_WORD,
    SUBSET_SEED,
    TOKEN_SAMPLE,
)


def fp32_reference_encoder(models_dir: Path):
    """The fp32 torch reference: multilingual-e5-small as sentence-transformers, full 512 tokens.

    Built directly (not through the resource), so it stays the same reference whatever engine or
    token budget the pipeline's default text path uses.
    """
    from wb_pipeline.core.data import storage
    from wb_pipeline.core.embeddings.encoders.text import default_e5_encoder

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
    """(seconds inside the text embedding step, rows) for `subset` through the REAL `text_embeddings`
    stage at one shard (its shard step is the code every shard step runs) with the pipeline's resource
    and default settings, on an empty cache (a fresh storage folder)."""
    import dagster as dg

    from wb_pipeline.core.data import storage as storage_paths
    from wb_pipeline.defs import sharding
    from wb_pipeline.defs.embeddings.assets import TextEmbeddingSettings, build_embedding_assets
    from wb_pipeline.defs.resources import WBStorage, WBStorageIOManager

    text_stage = next(a for a in build_embedding_assets() if a.key == dg.AssetKey("text_embeddings"))
    storage = Path(tempfile.mkdtemp(prefix="text-subset-", dir=work_dir))
    try:
        layout = storage_paths.StorageLayout(str(storage))  # what the upstream stages would have written
        storage_paths.write_parquet(subset, layout.shard_output("product_text", 1, "00"))
        storage_paths.write_sharded_parquet(subset[["nm"]], layout.asset_file("clean_products"), 1)
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize(
            [text_stage],
            instance=instance,
            resources={
                "io_manager": WBStorageIOManager(base_dir=str(storage)),
                "pipeline_storage": WBStorage(base_dir=str(storage)),
                "sharding": sharding.ShardingSettings(n_shards=1),
                sharding.SHARD_RESULTS_IO_MANAGER: sharding.ShardResultsIOManager(base_dir=str(storage)),
                "text_encoder": text_resource,
                "text_embedding_settings": TextEmbeddingSettings(),
            },
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        meta = _metadata(instance, "text_embeddings")
        (shard_step,) = sharding.shard_step_keys("text_embeddings", 1)
        step = next(s for s in instance.get_run_step_stats(result.run_id) if s.step_key == shard_step)
        # The step's own timing of the embedding call, when it reports one; else the whole step.
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


def token_stats(
    frame: pd.DataFrame, form: str, tokenizer, prompt: str, budget: TextBudget, tokens_per_word: float | None = None
) -> dict[str, float]:
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
        title, description = (
            title * tokens_per_word / measured_per_word,
            description * tokens_per_word / measured_per_word,
        )
    # prompt + special tokens, and the '. ' joining title and description
    overhead = len(tokenizer([prompt], add_special_tokens=True, verbose=False)["input_ids"][0]) + 1.0
    whole = overhead + title + description
    kept = description if budget.description_tokens is None else np.minimum(description, budget.description_tokens)
    return {
        "words_mean": float(words.mean()),
        "tokens_per_word": measured_per_word if tokens_per_word is None else tokens_per_word,
        "tokens_mean": float(whole.mean()),
        "reference_tokens_mean": float(np.minimum(whole, 512).mean()),
        "pipeline_tokens_mean": float(np.minimum(overhead + title + kept, budget.max_seq_length).mean()),
    }


def measure_text_baseline(
    product_text: pd.DataFrame, subset_size: int, text_resource, reference, work_dir: Path, reps: int = 1
) -> dict[str, Any]:
    """Texts/s of the fp32 `reference` encoder vs the pipeline's text_embeddings asset on the same
    `subset_size` products, on their generated text and with ~200-word descriptions; token counts."""
    from wb_pipeline.core.text.product_text import encoder_text
    from wb_pipeline.defs.embeddings.assets import TextEmbeddingSettings

    settings = TextEmbeddingSettings()
    budget = pipeline_text_budget(text_resource)
    # Distinct encoder texts only: the asset embeds each distinct text once, the reference would not.
    distinct = product_text[~encoder_text(product_text, settings.fields, settings.form).duplicated()]
    subset = distinct.sample(n=min(subset_size, len(distinct)), random_state=SUBSET_SEED).reset_index(drop=True)
    variants = {"generated": subset, "real_length": lengthen_descriptions(subset, REAL_DESCRIPTION_WORDS, product_text)}
    reference.encode(["прогрев модели", "ещё один текст"])  # load + first-call allocations
    tokenizer = reference.model.tokenizer

    def tokens(frame: pd.DataFrame, tokens_per_word: float | None = None) -> dict[str, float]:
        return token_stats(frame, settings.form, tokenizer, reference.prompt, budget, tokens_per_word)

    sample = product_text.sample(n=min(TOKEN_SAMPLE, len(product_text)), random_state=SUBSET_SEED)
    result: dict[str, Any] = {
        "subset": len(subset),
        "reps": reps,
        "reference": repr(reference),
        "input_text": f"{settings.fields} ({settings.form})",
        "budget": asdict(budget),
        "catalogue_tokens": tokens(sample),
        "catalogue_description_words_mean": float(
            product_text["description_natural"].fillna("").astype(str).str.split().str.len().mean()
        ),
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
        result[name] = {
            "rows": len(texts),
            "reference_s": seconds["reference"],
            "pipeline_s": seconds["pipeline"],
            "reference_texts_per_s": ref_rate,
            "pipeline_texts_per_s": pipe_rate,
            "speedup": pipe_rate / ref_rate,
            "tokens": tokens(frame),
        }
    # What if real Russian text has REFERENCE's tokens per word, not the generated vocabulary's:
    # the pipeline's input tokens of the real-length proxy (after budget and cap) grow by this factor.
    as_real = tokens(variants["real_length"], REAL_TOKENS_PER_WORD)
    result["real_length_as_reference_tokens"] = as_real
    result["real_token_factor"] = (
        as_real["pipeline_tokens_mean"] / result["real_length"]["tokens"]["pipeline_tokens_mean"]
    )
    return result
