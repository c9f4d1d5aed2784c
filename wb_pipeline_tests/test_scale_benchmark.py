"""The scale benchmark's core (`benchmarks.scale.run_benchmark`) on a tiny generated dataset, with a
tiny random text model: every stage is measured, row counts match the data, the outputs are written.
No timing assertions."""

import json

import pytest

from benchmarks import scale
from wb_pipeline.core import images, schema
from wb_pipeline.core.cleaning import clean_products
from wb_pipeline.core.encoders.text import SentenceTransformerTextEncoder
from wb_pipeline.core.ingestion import read_wb_table
from wb_pipeline.core.storage import as_upath
from wb_pipeline.defs.embeddings.resources import ImageEncoderResource, TextEncoderResource
from wb_pipeline.sample_data import SampleSpec, write_sample

N_PRODUCTS = 60


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_st_folder, shared_models_dir):
    root = tmp_path_factory.mktemp("scale")
    raw = root / "raw"
    manifest = write_sample(raw, SampleSpec(n_products=N_PRODUCTS, seed=5))
    models = str(shared_models_dir)
    results = scale.run_benchmark(
        raw, root / "work", shared_models_dir, n_products=N_PRODUCTS, baseline_subset=8,
        text_encoder=TextEncoderResource(model=str(tiny_st_folder), max_seq_length=32, cache_dir=models),
        image_encoder=ImageEncoderResource(engine="torch", cache_dir=models),
        reference_factory=lambda: SentenceTransformerTextEncoder(str(tiny_st_folder), max_seq_length=32),
    )
    return {"raw": raw, "manifest": manifest, "results": results, "root": root}


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
    expected_labels = [label for _, label, _ in scale.STAGES]
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


def test_total_line_and_projection_add_up(tiny_run):
    results = tiny_run["results"]
    header, lines = results["table"]["header"], results["table"]["lines"]
    assert header[:5] == ["stage", "rows", "wall s", "rows/s", "peak RSS MiB"]
    assert lines[-1][0].startswith("total") and len(lines) == len(results["stages"]) + 1
    projection = results["projection"]
    assert projection["total_s"] == pytest.approx(sum(s["projected_s"] for s in results["stages"]))
    assert projection["product_scale"] == pytest.approx(scale.REAL_PRODUCTS / N_PRODUCTS)
    # the run's wall time covers its steps
    assert results["run"]["wall_s"] >= sum(s["wall_s"] for s in results["stages"][:len(scale.STAGES)])


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
    results.update({
        "machine": scale.machine_info(), "load_average": {"start": (0.5, 0, 0), "end": (0.7, 0, 0)},
        "data": {"bytes": 1000, "reused": False, "seconds": 1.0},
        "process_peak_rss_mib": scale.process_peak_rss_mib(),
    })
    json_path, md_path = scale.write_outputs(results, tmp_path)
    assert json.loads(json_path.read_text())["products"] == N_PRODUCTS
    markdown = md_path.read_text()
    assert "| stage" in markdown and "embeddings: image_embeddings" in markdown and "Projection" in markdown


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
