"""The scale benchmark's core (`benchmarks.scale.run_benchmark`) on a tiny generated dataset, with a
tiny random text model, on two product shards: every stage (its shard steps and gather) is measured,
row counts match the data, the outputs are written; the multiprocess mode measures each step's peak
RSS in the step's own process, and the dask mode runs the same selection on two worker processes.
No timing assertions."""

import json

import pytest

from benchmarks import scale
from wb_pipeline.core.data import images, schema
from wb_pipeline.core.data.cleaning import clean_products
from wb_pipeline.core.data.ingestion import read_wb_table
from wb_pipeline.core.data.storage import as_upath
from wb_pipeline.core.embeddings.encoders.text import SentenceTransformerTextEncoder
from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource
from wb_pipeline.sample_data import SampleSpec, write_sample

N_PRODUCTS = 60
N_SHARDS = 2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_st_folder, shared_models_dir):
    root = tmp_path_factory.mktemp("scale")
    raw = root / "raw"
    manifest = write_sample(raw, SampleSpec(n_products=N_PRODUCTS, seed=5))
    models = str(shared_models_dir)
    results = scale.run_benchmark(
        raw,
        root / "work",
        shared_models_dir,
        n_products=N_PRODUCTS,
        baseline_subset=8,
        text_encoder=_tiny_text(tiny_st_folder, models),
        image_encoder=_image(models),
        reference_factory=lambda: SentenceTransformerTextEncoder(str(tiny_st_folder), max_seq_length=32),
        n_shards=N_SHARDS,
    )
    return {"raw": raw, "manifest": manifest, "results": results, "root": root}


def _tiny_text(folder, models: str) -> TextEncoderResource:
    return TextEncoderResource(model=str(folder), max_seq_length=32, cache_dir=models)


def _image(models: str) -> ImageEncoderResource:
    return ImageEncoderResource(engine="torch", cache_dir=models)


def _clean_count(raw) -> int:
    """Clean products computed straight from the files with the core cleaning (no Dagster)."""
    train = read_wb_table(as_upath(str(raw / schema.TRAIN_FILE)), schema.TRAIN_REQUIRED_COLUMNS)
    test = read_wb_table(as_upath(str(raw / schema.TEST_FILE)), schema.TEST_REQUIRED_COLUMNS)
    with images.open_zip(raw / schema.IMAGES_ZIP) as zf:
        index, _ = images.build_image_index(zf, None, images.ImageConfig())
    return len(clean_products({"train": train, "test": test}, index).clean)


def test_every_stage_is_measured_with_rows_equal_to_the_data(tiny_run):
    stages = {row["stage"]: row for row in tiny_run["results"]["stages"]}
    counts = tiny_run["manifest"]["counts"]
    expected_labels = [label for _, label, _, _ in scale.STAGES]
    assert [s for s in stages if s in expected_labels] == expected_labels  # all stages, in run order
    for label in expected_labels:
        row = stages[label]
        assert row["rows"] > 0 and row["wall_s"] > 0 and row["rows_per_s"] > 0 and row["peak_rss_mib"] > 0, row
        assert row["projected_s"] > row["wall_s"]  # 60 products scale up to the real catalogue
    clean = _clean_count(tiny_run["raw"])
    assert 0 < clean < N_PRODUCTS  # the sample carries defects, so some products are rejected
    assert stages["ingestion: raw_products_train"]["rows"] == counts["train"]
    assert stages["ingestion: raw_products_test"]["rows"] == counts["test"]
    assert stages["ingestion: image_index"]["rows"] == counts["image_members"]
    assert stages["preprocessing: clean + rejected products"]["rows"] == N_PRODUCTS
    for label in ("preprocessing: product_text", "embeddings: text_embeddings", "embeddings: image_embeddings"):
        assert stages[label]["rows"] == clean, label
    assert any(s.startswith(scale.CHECKS_STAGE) for s in stages)  # the assets' checks ran in the same run
    # a sharded stage is its shard list, its N shard steps and its gather
    assert {label: stages[label]["steps"] for label in expected_labels} == {
        label: N_SHARDS + 2 if sharded else 1 for _, label, _, sharded in scale.STAGES
    }


def test_every_shard_step_is_a_row_of_the_step_table_and_the_shards_add_up(tiny_run):
    results = tiny_run["results"]
    steps = results["steps"]
    assert results["n_shards"] == N_SHARDS and results["executor"] == "in_process"
    shard_steps = [s for s in steps if s["kind"] == "shard"]
    assert sorted(s["step"] for s in shard_steps) == sorted(
        f"{stage}.{stage}_shard[{k:02d}]" for stage in scale.SHARDED_STAGES for k in range(N_SHARDS)
    )
    gathers = {s["stage"]: s for s in steps if s["kind"] == "gather"}
    assert sorted(gathers) == sorted(scale.SHARDED_STAGES)
    assert all(gathers[stage]["step"] == f"{stage}.{stage}_gather" for stage in gathers)
    for stage in scale.SHARDED_STAGES:  # every product (image member) is in exactly one shard
        assert sum(s["rows"] for s in shard_steps if s["stage"] == stage) == gathers[stage]["rows"] > 0, stage
    assert all(s["wall_s"] > 0 and s["peak_rss_mib"] > 0 and s["measured_in"] == "shared process" for s in steps)
    assert any(s["kind"] == "check" for s in steps)
    # the stage table's wall is the sum of the stage's steps
    by_stage = {row["stage"]: row for row in results["stages"]}
    text = [s["wall_s"] for s in steps if s["stage"] == "text_embeddings"]
    assert by_stage["embeddings: text_embeddings"]["wall_s"] == pytest.approx(sum(text))
    summary = results["shards"]
    assert summary["products_per_shard"] == N_PRODUCTS / N_SHARDS
    assert summary["shard_step_peak_mib"] == max(s["peak_rss_mib"] for s in shard_steps)
    assert len(results["step_table"]["lines"]) == len(steps)


def test_large_projection_adds_up(tiny_run):
    q = tiny_run["results"]["projection_large"]
    assert q["target_products"] == scale.TARGET_PRODUCTS_LARGE and q["shards_at_target"] > 0
    hours = q["hours_by_workers"]
    assert hours[1] == pytest.approx(q["serial_hours"] + q["parallel_hours_one_worker"])
    assert all(hours[a] > hours[b] for a, b in zip(list(hours), list(hours)[1:]))  # more workers, fewer hours
    if q["workers_for_target"] is not None:  # the answer is the first K that reaches the target
        k = q["workers_for_target"]
        assert q["serial_hours"] + q["parallel_hours_one_worker"] / k <= q["target_hours"] + 1e-9
        assert k == 1 or q["serial_hours"] + q["parallel_hours_one_worker"] / (k - 1) > q["target_hours"]
    else:
        assert q["serial_hours"] >= q["target_hours"]
    assert q["whole_catalogue_vectors_gib"]["text_embeddings"] > 0


def test_total_line_and_projection_add_up(tiny_run):
    results = tiny_run["results"]
    header, lines = results["table"]["header"], results["table"]["lines"]
    assert header[:6] == ["stage", "steps", "rows", "wall s", "rows/s", "peak RSS MiB"]
    assert lines[-1][0].startswith("total") and len(lines) == len(results["stages"]) + 1
    projection = results["projection"]
    assert projection["total_s"] == pytest.approx(sum(s["projected_s"] for s in results["stages"]))
    assert projection["product_scale"] == pytest.approx(scale.REAL_PRODUCTS / N_PRODUCTS)
    # the run's wall time covers its steps
    assert results["run"]["wall_s"] >= sum(s["wall_s"] for s in results["stages"][: len(scale.STAGES)])
    assert lines[-1][1] == str(len(results["steps"]))  # the total counts every step of the run


def test_text_baseline_measures_both_paths_on_the_same_subset(tiny_run):
    baseline = tiny_run["results"]["text_baseline"]
    assert baseline["subset"] == 8
    for variant in ("generated", "real_length"):
        part = baseline[variant]
        assert part["rows"] == 8
        assert part["reference_texts_per_s"] > 0 and part["pipeline_texts_per_s"] > 0
    # lengthened descriptions carry more words than the generated ones
    assert baseline["real_length"]["tokens"]["words_mean"] > baseline["generated"]["tokens"]["words_mean"]
    assert baseline["real_length"]["tokens"]["words_mean"] >= scale.REAL_DESCRIPTION_WORDS


def test_lengthen_descriptions_keeps_own_words_first():
    import pandas as pd

    frame = pd.DataFrame({"description_natural": ["один два", ""], "description_preprocessed": ["один", None]})
    pool = pd.DataFrame({"description_natural": ["альфа бета гамма"], "description_preprocessed": ["альфа"]})
    out = scale.lengthen_descriptions(frame, 5, pool)
    assert out["description_natural"].tolist()[0].split()[:2] == ["один", "два"]
    assert all(len(t.split()) == 5 for col in ("description_natural", "description_preprocessed") for t in out[col])
    assert frame["description_natural"].tolist() == ["один два", ""]  # the input is not changed
    with pytest.raises(ValueError, match="description_natural"):
        scale.lengthen_descriptions(frame, 5, pool.assign(description_natural=""))


def test_outputs_are_written_as_json_and_markdown(tiny_run, tmp_path):
    results = dict(tiny_run["results"])
    results.update(
        {
            "machine": scale.machine_info(),
            "load_average": {"start": (0.5, 0, 0), "end": (0.7, 0, 0)},
            "data": {"bytes": 1000, "reused": False, "seconds": 1.0},
            "process_peak_rss_mib": scale.process_peak_rss_mib(),
        }
    )
    json_path, md_path = scale.write_outputs(results, tmp_path)
    assert json.loads(json_path.read_text())["products"] == N_PRODUCTS
    markdown = md_path.read_text()
    assert "| stage" in markdown and "embeddings: image_embeddings" in markdown and "Projection" in markdown
    assert "| text_embeddings.text_embeddings_shard[01]" in markdown and "10,000,000 products on K workers" in markdown
    assert "products/shard" in scale.compare([json_path, json_path])


def test_token_stats_apply_the_budget_and_the_what_if_rate(tiny_st_folder):
    import pandas as pd

    tokenizer = SentenceTransformerTextEncoder(str(tiny_st_folder), max_seq_length=32).model.tokenizer
    frame = pd.DataFrame({"title_natural": ["платье женское"], "description_natural": [" ".join(["хлопок"] * 10)]})
    whole = scale.token_stats(frame, "natural", tokenizer, "passage: ", scale.TextBudget(None, 32))
    cut = scale.token_stats(frame, "natural", tokenizer, "passage: ", scale.TextBudget(4, 32))
    assert whole["words_mean"] == 12 and whole["tokens_per_word"] == 1.0  # one word-level token per word
    assert whole["pipeline_tokens_mean"] == whole["tokens_mean"]  # within the cap, nothing is cut
    assert cut["pipeline_tokens_mean"] == whole["tokens_mean"] - 10 + 4  # description cut to 4 tokens
    doubled = scale.token_stats(frame, "natural", tokenizer, "passage: ", scale.TextBudget(4, 32), tokens_per_word=2.0)
    assert doubled["tokens_mean"] == whole["tokens_mean"] + 12  # title and description twice as many tokens
    assert doubled["pipeline_tokens_mean"] == cut["pipeline_tokens_mean"] + 2  # only the title grows past the budget
    capped = scale.token_stats(frame, "natural", tokenizer, "passage: ", scale.TextBudget(None, 8))
    assert capped["pipeline_tokens_mean"] == 8 and capped["reference_tokens_mean"] == whole["tokens_mean"]


def test_multiprocess_mode_measures_each_step_in_its_own_process(tiny_run, shared_models_dir, tiny_st_folder):
    """Each step a fresh process (one at a time); the success hook records that process's own peak."""
    import os

    models = str(shared_models_dir)
    run = scale.run_pipeline(
        tiny_run["raw"],
        tiny_run["root"] / "work-mp",
        shared_models_dir,
        text_encoder=_tiny_text(tiny_st_folder, models),
        image_encoder=_image(models),
        n_shards=N_SHARDS,
        executor="multiprocess",
        load_product_text=False,
    )
    assert run.executor == "multiprocess" and set(run.step_memory) == set(run.steps)
    pids = {record["pid"] for record in run.step_memory.values()}
    assert os.getpid() not in pids and len(pids) == len(run.steps)  # every step in a process of its own
    for key, step in run.steps.items():
        record = run.step_memory[key]
        assert step["peak_rss_mib"] == record["vm_hwm_mib"] > 0
        # getrusage carries the spawning parent's peak across exec: never below this process's own peak
        assert record["ru_maxrss_mib"] >= record["vm_hwm_mib"] - 1
    steps = scale.step_rows(run)
    assert {s.measured_in for s in steps} == {"own process"}
    in_process_rows = {s["step"]: s["rows"] for s in tiny_run["results"]["steps"]}
    assert {s.step: s.rows for s in steps} == in_process_rows  # the same steps and rows as the in-process run


@pytest.mark.slow  # a local dask cluster: ~50 s on 2 busy cores
def test_dask_mode_runs_the_same_steps_on_two_worker_processes(tiny_run, shared_models_dir, tiny_st_folder):
    models = str(shared_models_dir)
    run = scale.run_pipeline(
        tiny_run["raw"],
        tiny_run["root"] / "work-dask",
        shared_models_dir,
        text_encoder=_tiny_text(tiny_st_folder, models),
        image_encoder=_image(models),
        n_shards=N_SHARDS,
        executor="dask",
        load_product_text=False,
    )
    assert run.executor == "dask" and run.run_wall_s > 0 and run.cluster_start_s > 0
    assert set(run.steps) == {s["step"] for s in tiny_run["results"]["steps"]}
    assert (
        int(run.metadata["text_embeddings"]["dagster/row_count"])
        == tiny_run["results"]["run"]["metadata"]["text_embeddings"]["dagster/row_count"]
    )
