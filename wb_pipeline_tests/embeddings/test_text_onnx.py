"""The fast text path: the onnxruntime encoder (float32 and int8) against the sentence-transformers
reference, its cached export, and the per-field token budget (title whole, description cut)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wb_pipeline.core.embeddings.encoders import onnx_export
from wb_pipeline.core.embeddings.encoders.text import SentenceTransformerTextEncoder, default_e5_encoder
from wb_pipeline.core.embeddings.encoders.text_inputs import plain_tokenizer, truncate_to_tokens
from wb_pipeline.core.embeddings.encoders.text_onnx import OnnxTextEncoder, read_sentence_transformer_layout
from wb_pipeline.core.text.product_text import encoder_text

# Words of the tiny WordLevel vocabulary (see conftest.tiny_st_folder) in texts of varied length.
TEXTS = [
    "платье женское летнее хлопок",
    "x",
    "кроссовки мужские 42",
    "",
    "платье " * 12,
    "хлопок летнее",
    "женское платье кроссовки мужские летнее x 42 хлопок",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("text_onnx_cache")


@pytest.fixture(scope="module")
def tiny_reference(tiny_st_folder) -> SentenceTransformerTextEncoder:
    return SentenceTransformerTextEncoder(str(tiny_st_folder), max_seq_length=32, device="cpu", num_threads=1)


def _onnx(folder, cache, **kwargs) -> OnnxTextEncoder:
    return OnnxTextEncoder(folder, max_seq_length=32, cache_dir=cache, num_threads=1, **kwargs)


# --------------------------------------------------------------------------- tiny model


def test_onnx_float32_matches_torch_and_restores_input_order(tiny_st_folder, tiny_reference, onnx_cache):
    encoder = _onnx(tiny_st_folder, onnx_cache, quantization="none", batch_size=2)
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 16) and vectors.dtype == np.float32 and encoder.dim == 16
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, tiny_reference.encode(TEXTS), atol=1e-5)
    # batches of 2 after sorting by length hold texts from all over the input: each row must still
    # be its own text's vector (encoded alone, no padding at all)
    one_by_one = np.vstack([encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert encoder.encode([]).shape == (0, 16)


def test_onnx_int8_stays_close_to_torch(tiny_st_folder, tiny_reference, onnx_cache):
    encoder = _onnx(tiny_st_folder, onnx_cache, quantization="int8")
    cosines = np.sum(encoder.encode(TEXTS) * tiny_reference.encode(TEXTS), axis=1)
    assert cosines.min() > 0.99, cosines
    assert encoder.onnx_path is not None and "int8" in encoder.onnx_path.name


def test_onnx_tokenizes_like_sentence_transformers(tiny_st_folder, tiny_reference, onnx_cache):
    encoder = _onnx(tiny_st_folder, onnx_cache)
    hf_tokenizer = tiny_reference.model.tokenizer
    texts = TEXTS + ["  платье  по краям  ", "x " * 50]
    expected = [hf_tokenizer("passage: " + t, truncation=True, max_length=32)["input_ids"] for t in texts]
    assert encoder.tokenize(texts) == expected
    assert max(len(ids) for ids in encoder.tokenize(texts)) == 32  # truncated like the reference


def test_fingerprint_differs_per_engine_and_quantization_not_per_speed_setting(tiny_st_folder, onnx_cache):
    torch_fp = SentenceTransformerTextEncoder(str(tiny_st_folder), max_seq_length=32).fingerprint
    fp32 = _onnx(tiny_st_folder, onnx_cache, quantization="none").fingerprint
    int8 = _onnx(tiny_st_folder, onnx_cache, quantization="int8").fingerprint
    assert len({torch_fp, fp32, int8}) == 3
    assert int8 == OnnxTextEncoder(tiny_st_folder, max_seq_length=32, num_threads=2).fingerprint
    # int8 scales activations per batch, so its batch size changes vectors (and the fingerprint); fp32's does not
    assert int8 != OnnxTextEncoder(tiny_st_folder, max_seq_length=32, batch_size=5).fingerprint
    assert fp32 == _onnx(tiny_st_folder, onnx_cache, quantization="none", batch_size=5).fingerprint
    assert int8 != _onnx(tiny_st_folder, onnx_cache, prompt="query: ").fingerprint
    assert int8 != OnnxTextEncoder(tiny_st_folder, max_seq_length=16).fingerprint
    assert int8 != OnnxTextEncoder(tiny_st_folder, max_seq_length=32, fuse=False).fingerprint


def test_unfused_graph_matches_torch_too(tiny_st_folder, tiny_reference, tmp_path):
    encoder = _onnx(tiny_st_folder, tmp_path, quantization="none", fuse=False)
    np.testing.assert_allclose(encoder.encode(TEXTS), tiny_reference.encode(TEXTS), atol=1e-5)
    assert not encoder.fused and "fused" not in encoder.onnx_path.name


def test_exported_graph_is_cached_and_reused(tiny_st_folder, tmp_path, monkeypatch):
    first = _onnx(tiny_st_folder, tmp_path)
    reference = first.encode(TEXTS)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and not any(name.endswith(".tmp") for name in files)  # fused fp32 + int8; no temp files
    assert first.onnx_path is not None and first.onnx_path.name in files

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached graph was built again")

    monkeypatch.setattr(onnx_export, "export_to_onnx", must_not_run)
    monkeypatch.setattr(OnnxTextEncoder, "_fuse_graph", must_not_run)
    second = _onnx(tiny_st_folder, tmp_path)
    np.testing.assert_array_equal(second.encode(TEXTS), reference)
    assert second.onnx_path == first.onnx_path


def test_a_corrupt_cached_graph_is_built_again(tiny_st_folder, tmp_path):
    first = _onnx(tiny_st_folder, tmp_path, quantization="none")
    reference = first.encode(TEXTS)
    first.onnx_path.write_bytes(b"not an onnx graph")
    second = _onnx(tiny_st_folder, tmp_path, quantization="none")
    np.testing.assert_allclose(second.encode(TEXTS), reference, atol=1e-6)
    assert second.onnx_path == first.onnx_path


def test_unsupported_folders_and_settings_are_named(tiny_st_folder, tmp_path):
    copy = tmp_path / "cls"
    shutil.copytree(tiny_st_folder, copy)
    pooling = json.loads((copy / "1_Pooling" / "config.json").read_text())
    (copy / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode": "cls"}))
    with pytest.raises(ValueError, match="mean pooling"):
        read_sentence_transformer_layout(copy)
    modules = json.loads((copy / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (copy / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense"):
        read_sentence_transformer_layout(copy)
    with pytest.raises(FileNotFoundError, match="modules.json"):
        OnnxTextEncoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="quantization"):
        OnnxTextEncoder(tiny_st_folder, quantization="int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit of 32 tokens"):
        OnnxTextEncoder(tiny_st_folder, max_seq_length=64)
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        OnnxTextEncoder(tiny_st_folder, max_seq_length=32).encode(["платье", None])  # type: ignore[list-item]


# --------------------------------------------------------------------------- token budget


def test_truncate_to_tokens_cuts_at_token_boundaries(tiny_st_folder):
    tokenizer = plain_tokenizer(tiny_st_folder / "tokenizer.json")
    texts = ["платье женское летнее хлопок", "хлопок", "платье,  женское"]
    assert truncate_to_tokens(texts, tokenizer, 2) == ["платье женское", "хлопок", "платье,"]
    assert truncate_to_tokens(texts, tokenizer, 100) == texts
    assert truncate_to_tokens(texts, tokenizer, 0) == ["", "", ""]
    with pytest.raises(ValueError, match=">= 0"):
        truncate_to_tokens(texts, tokenizer, -1)


def test_budget_cuts_only_the_description_and_keeps_a_long_title_whole(tiny_st_folder):
    tokenizer = OnnxTextEncoder(tiny_st_folder, max_seq_length=32).budget_tokenizer
    long_title = " ".join(["платье женское летнее"] * 5)  # 15 tokens, far over the budget
    frame = pd.DataFrame(
        {
            "title_natural": [long_title, "хлопок", "x"],
            "description_natural": ["кроссовки мужские 42 летнее", "хлопок", None],
        }
    )
    budgeted = encoder_text(frame, description_token_budget=2, tokenizer=tokenizer).tolist()
    assert budgeted == [long_title + ". кроссовки мужские", "хлопок", "x"]
    full = encoder_text(frame).tolist()  # no budget: the old behaviour
    assert full == [long_title + ". кроссовки мужские 42 летнее", "хлопок", "x"]
    assert encoder_text(frame, "title", description_token_budget=2, tokenizer=tokenizer).tolist() == [
        long_title,
        "хлопок",
        "x",
    ]
    assert encoder_text(frame, description_token_budget=0, tokenizer=tokenizer).tolist() == [long_title, "хлопок", "x"]
    with pytest.raises(ValueError, match="tokenizer"):
        encoder_text(frame, description_token_budget=2)
    with pytest.raises(ValueError, match=">= 0"):
        encoder_text(frame, description_token_budget=-1, tokenizer=tokenizer)


def test_encoder_input_applies_the_budget_only_with_the_encoders_own_counter(tiny_st_folder):
    """The one helper `text_embeddings` and a service's card feed the encoder through."""
    from wb_pipeline.core.text.product_text import TextInputs, encoder_input

    encoder = OnnxTextEncoder(tiny_st_folder, max_seq_length=32)
    frame = pd.DataFrame({"title_natural": ["платье"], "description_natural": ["кроссовки мужские 42 летнее"]})
    texts, budget = encoder_input(frame, encoder, TextInputs(description_token_budget=2))
    assert (texts.tolist(), budget) == (["платье. кроссовки мужские"], 2)
    texts, budget = encoder_input(frame, object(), TextInputs(description_token_budget=2))  # no token counter
    assert (texts.tolist(), budget) == (["платье. кроссовки мужские 42 летнее"], None)
    texts, budget = encoder_input(frame, encoder, TextInputs(fields="title", description_token_budget=2))
    assert (texts.tolist(), budget) == (["платье"], None)
    texts, budget = encoder_input(frame, encoder, TextInputs(description_token_budget=None))
    assert (texts.tolist(), budget) == (["платье. кроссовки мужские 42 летнее"], None)


def test_torch_encoder_offers_the_same_budget_tokenizer(tiny_st_folder, tiny_reference):
    text = ["платье женское летнее хлопок кроссовки"]
    onnx_tokenizer = OnnxTextEncoder(tiny_st_folder, max_seq_length=32).budget_tokenizer
    assert truncate_to_tokens(text, tiny_reference.budget_tokenizer, 3) == truncate_to_tokens(text, onnx_tokenizer, 3)


# --------------------------------------------------------------------------- the real e5


@pytest.fixture(scope="module")
def product_texts() -> list[str]:
    """~50 generated Russian product texts (title + description), varied lengths up to the 512 window."""
    from wb_pipeline.sample_data import SampleSpec, generate_tables

    train, _ = generate_tables(SampleSpec(n_products=120, seed=5, with_images=False))
    texts = (train["title"].fillna("") + ". " + train["description"].fillna("")).tolist()
    return texts[:48] + train["title"].fillna("").tolist()[:4]


@pytest.mark.slow
def test_real_e5_onnx_engines_match_the_fp32_reference(shared_models_dir, product_texts):
    reference = default_e5_encoder(shared_models_dir / "e5", engine="torch", device="cpu", num_threads=2)
    expected = reference.encode(product_texts)
    cosines = {}
    for engine in ("onnx", "onnx_int8"):
        encoder = default_e5_encoder(
            shared_models_dir / "e5", engine=engine, num_threads=2, onnx_cache_dir=shared_models_dir / "onnx"
        )
        assert encoder.fingerprint != reference.fingerprint and encoder.dim == 384
        cosines[engine] = np.sum(encoder.encode(product_texts) * expected, axis=1)
    assert cosines["onnx"].min() > 0.9999, cosines["onnx"].min()
    assert cosines["onnx_int8"].min() >= 0.99, np.sort(cosines["onnx_int8"])[:5]
    # the budget tokenizer of the converted e5 cuts a description at its token count
    tokenizer = default_e5_encoder(shared_models_dir / "e5", engine="onnx_int8").budget_tokenizer
    cut = truncate_to_tokens(product_texts[:8], tokenizer, 64)
    counts = [len(e.ids) for e in tokenizer.encode_batch(cut, add_special_tokens=False)]
    assert max(counts) <= 65 and max(counts) >= 60  # one token of slack where a re-tokenised cut merges


def test_int8_vectors_one_text_per_batch_do_not_depend_on_the_other_texts(tiny_st_folder, onnx_cache):
    """Dynamic int8 quantisation picks each batch's activation scale from the batch: with batch_size=1
    (the pipeline's int8 default) a text's vector is the same whatever it is embedded with (another
    shard, a drop, a re-run); in shared batches it is not."""
    alone = _onnx(tiny_st_folder, onnx_cache, quantization="int8", batch_size=1)
    assert np.array_equal(alone.encode(TEXTS)[:3], alone.encode(TEXTS[:3]))
    shared = _onnx(tiny_st_folder, onnx_cache, quantization="int8", batch_size=len(TEXTS))
    assert not np.array_equal(shared.encode(TEXTS)[:3], shared.encode(TEXTS[:3]))
