"""Shared fixtures: small generated WB samples, models built once per session, Dagster definitions
over temporary folders."""

from pathlib import Path

import dagster as dg
import pytest

from wb_pipeline.engines import keep_sigterm_deliverable
from wb_pipeline.sample_data import SampleSpec, write_sample

SMALL_SAMPLE = SampleSpec(n_products=160, seed=11)


def pytest_configure(config):
    # CI runs the suite as a background job (SIGINT ignored): without this, every process the tests
    # start after the first Dagster run (dask workers, Dagster's per-step `tail`) ignores SIGTERM.
    keep_sigterm_deliverable()


@pytest.fixture(scope="session")
def small_sample_dir(tmp_path_factory) -> Path:
    """A 160-product WB-layout sample with images and every defect kind (read-only for tests)."""
    folder = tmp_path_factory.mktemp("wb_sample") / "raw"
    write_sample(folder, SMALL_SAMPLE)
    return folder


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> Path:
    """Converted / exported models, shared by every pipeline test of the session (built once)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture()
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as test_instance:
        yield test_instance


@pytest.fixture(scope="session")
def tiny_st_folder(tmp_path_factory) -> Path:
    """A randomly initialised BERT + WordLevel tokenizer saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny_st")
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "платье",
        "женское",
        "кроссовки",
        "мужские",
        "query:",
        "passage:",
        "летнее",
        "42",
        "хлопок",
        "x",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=32,
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(root / "hf")
    hf.save_pretrained(root / "hf")
    modules = [Transformer(str(root / "hf"), max_seq_length=32), Pooling(16, pooling_mode="mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(root / "st"))
    return root / "st"
