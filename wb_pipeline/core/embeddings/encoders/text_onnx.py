"""The fast text path: a sentence-transformers BERT-like model run through onnxruntime.

Pure core (no dagster). :class:`OnnxTextEncoder` reads a sentence-transformers folder
(Transformer -> mean Pooling -> optional Normalize), exports the transformer with mean pooling
inside the graph to ONNX once, fuses its attention / LayerNorm / GELU ops with onnxruntime's
transformer optimizer, optionally quantises the weights of its matrix products to int8, and caches
every file atomically (see :mod:`wb_pipeline.core.embeddings.encoders.onnx_export`). Texts are tokenised by the
folder's own fast tokenizer (the same ids as sentence-transformers, prompt included), sorted by
token count and batched, so each batch is padded only to its own longest text; rows come back in
input order.

Quantisation choices, measured on e5-small over generated Russian title + description texts
(cosine to the fp32 torch reference): int8 weights per tensor, embeddings included -> min 0.976;
uint8 per channel -> 0.992; int8 per channel on the matrix products only, embedding tables kept in
float32 (``"int8"`` here) -> min 0.994, mean 0.996, and the fastest of the int8 variants.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wb_pipeline.core.embeddings.encoders.base import config_fingerprint, l2_normalize
from wb_pipeline.core.embeddings.encoders.text_inputs import folder_content_hash, plain_tokenizer, validate_texts
from wb_pipeline.core.runtime.memory import run_isolated

__all__ = [
    "QUANTIZATIONS",
    "OnnxTextEncoder",
    "SentenceTransformerLayout",
    "read_sentence_transformer_layout",
]

logger = logging.getLogger(__name__)

Quantization = Literal["none", "int8"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8")
#: Everything about the int8 derivation that changes the vectors (part of the file name and the fingerprint).
INT8_RECIPE = "int8-qint8-perchannel-matmul"
FUSED_TAG = "fused"
INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"
OUTPUT_NAME = "mean_pooled"
_SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}
#: Model types whose exported graph onnxruntime's BERT optimizer is checked to fuse correctly here
#: (the converted e5 is a BertModel). Others run the plain export (RoBERTa-style position ids unchecked).
_FUSABLE_MODEL_TYPES = ("bert",)
#: Models with more weight bytes than this build their graph (export, fusion, int8) one stage per fresh
#: process, so the calling process (a pipeline run) never holds the builders' memory; smaller ones in process.
ISOLATE_ABOVE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class SentenceTransformerLayout:
    """What :class:`OnnxTextEncoder` needs to know about a sentence-transformers folder."""

    transformer_dir: Path  # holds config.json, the weights and tokenizer.json
    tokenizer_file: Path
    do_lower_case: bool
    model_type: str
    hidden_size: int
    num_heads: int
    max_position_embeddings: int
    has_token_types: bool  # the model takes token_type_ids (config type_vocab_size > 0)


def read_sentence_transformer_layout(folder: str | Path) -> SentenceTransformerLayout:
    """Read and check a local sentence-transformers folder: Transformer, mean Pooling, [Normalize].

    Raises:
        FileNotFoundError: if the folder, ``modules.json`` or ``tokenizer.json`` is missing.
        ValueError: on a module or pooling mode this engine does not reproduce (named), e.g. a
            Dense layer, CLS pooling or mean pooling that excludes the prompt.
    """
    root = Path(folder)
    if not (root / "modules.json").is_file():
        raise FileNotFoundError(f"{root} is not a local sentence-transformers folder (no modules.json)")
    modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in _SUPPORTED_MODULES]
    if unsupported or not kinds or kinds[0] != "Transformer" or "Pooling" not in kinds:
        raise ValueError(
            f"{root}: the onnx text engine supports Transformer -> Pooling -> [Normalize], got modules {kinds}"
        )
    by_kind = {kind: root / module.get("path", "") for kind, module in zip(kinds, modules)}
    pooling = json.loads((by_kind["Pooling"] / "config.json").read_text(encoding="utf-8"))
    mode = pooling.get("pooling_mode") or ("mean" if pooling.get("pooling_mode_mean_tokens") else None)
    if mode != "mean" or not pooling.get("include_prompt", True):
        raise ValueError(
            f"{root}: the onnx text engine reproduces mean pooling over every token only, got pooling config {pooling}"
        )
    transformer_dir = by_kind["Transformer"]
    st_config_path = transformer_dir / "sentence_bert_config.json"
    st_config = json.loads(st_config_path.read_text(encoding="utf-8")) if st_config_path.is_file() else {}
    tokenizer_file = transformer_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{transformer_dir} has no tokenizer.json (a fast tokenizer is required)")
    config = json.loads((transformer_dir / "config.json").read_text(encoding="utf-8"))
    return SentenceTransformerLayout(
        transformer_dir=transformer_dir,
        tokenizer_file=tokenizer_file,
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        model_type=str(config.get("model_type", "")),
        hidden_size=int(config["hidden_size"]),
        num_heads=int(config["num_attention_heads"]),
        max_position_embeddings=int(config.get("max_position_embeddings", 512)),
        has_token_types=int(config.get("type_vocab_size", 0) or 0) > 0,
    )


def _mean_pooled_transformer(transformer_dir: Path):
    """``(torch module, hf model)``: the HF transformer followed by attention-masked mean pooling."""
    import torch
    from transformers import AutoModel

    # Eager attention: the exporter traces it into plain MatMul/Softmax ops that the onnxruntime
    # optimizer fuses into its Attention kernel.
    model = AutoModel.from_pretrained(str(transformer_dir), attn_implementation="eager").eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    return MeanPooled().eval(), model


class OnnxTextEncoder:
    """A local sentence-transformers folder (mean pooling) as a text :class:`Encoder` on onnxruntime.

    Args:
        model_folder: a local sentence-transformers folder (e.g. the converted e5-small).
        prompt: prepended to every text (``"passage: "`` for e5), exactly as sentence-transformers does.
        max_seq_length: tokens per text incl. special tokens; longer texts are truncated.
        quantization: ``"int8"`` (default: int8 per-channel weights of the matrix products, dynamic
            activation quantisation) or ``"none"`` (float32 graph, same vectors as torch to ~1e-6).
        batch_size: texts per forward pass (after sorting by token count).
        num_threads: onnxruntime intra-op threads; None lets onnxruntime use every core.
        weights_id: identity of the weights for the fingerprint; default: content hash of the folder.
        cache_dir: where exported / derived ``.onnx`` files live (required to encode; the pipeline's:
            ``<models dir>/onnx``).
        fuse: run onnxruntime's transformer optimizer (fused Attention / SkipLayerNorm / BiasGelu)
            before quantising; falls back to the plain graph, with a warning, for model types it
            does not know.

    Raises:
        ValueError: on a bad ``quantization`` or a non-positive size.
    """

    kind = "sentence-transformers"
    engine = "onnxruntime"

    def __init__(
        self,
        model_folder: str | Path,
        prompt: str = "passage: ",
        max_seq_length: int = 512,
        quantization: Quantization = "int8",
        batch_size: int = 32,
        num_threads: int | None = None,
        *,
        weights_id: str | None = None,
        cache_dir: str | Path | None = None,
        fuse: bool = True,
    ) -> None:
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
        for name, value in (("max_seq_length", max_seq_length), ("batch_size", batch_size)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if num_threads is not None and num_threads <= 0:
            raise ValueError(f"num_threads must be positive or None, got {num_threads}")
        self.model_folder = Path(model_folder)
        self.layout = read_sentence_transformer_layout(self.model_folder)
        if max_seq_length > self.layout.max_position_embeddings:
            raise ValueError(
                f"max_seq_length {max_seq_length} exceeds {self.model_folder}'s limit of "
                f"{self.layout.max_position_embeddings} tokens"
            )
        self.prompt = prompt
        self.max_seq_length = max_seq_length
        self.quantization = quantization
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.fuse = fuse
        self._weights_id = weights_id
        self._fingerprint: str | None = None
        self._tokenizer: Any = None
        self._budget_tokenizer: Any = None
        self._session: Any = None
        self._input_names: tuple[str, ...] = ()
        self.onnx_path: Path | None = None
        self._lock = threading.Lock()

    # --- identity -------------------------------------------------------------------------------

    @property
    def weights_id(self) -> str:
        """Identity of the weights (content hash of the folder unless given)."""
        if self._weights_id is None:
            self._weights_id = "sha256:" + folder_content_hash(self.model_folder)
        return self._weights_id

    @property
    def fingerprint(self) -> str:
        """sha256 of (weights, prompt, max_seq_length, engine, quantisation, fusion, and for int8 the
        batch size); no model load.

        Differs from the torch path's fingerprint for the same folder, so caches never mix vectors
        of the two engines."""
        if self._fingerprint is None:
            config = {
                "prompt": self.prompt,
                "max_seq_length": self.max_seq_length,
                "normalize": "l2",
                "engine": self.engine,
                "quantization": self._quantization_recipe(),
                "fused": self.fused,
            }
            if self.quantization == "int8":
                # dynamic int8 quantisation scales activations per batch: a vector depends on its batch
                # mates unless batch_size is 1, so caches of other batch sizes must not mix
                config["batch_size"] = self.batch_size
            self._fingerprint = config_fingerprint(self.kind, config, self.weights_id)
        return self._fingerprint

    @property
    def fused(self) -> bool:
        """Whether the graph run has fused transformer ops (asked for, and the model type allows it)."""
        return self.fuse and self.layout.model_type in _FUSABLE_MODEL_TYPES

    def _quantization_recipe(self) -> str:
        return INT8_RECIPE if self.quantization == "int8" else "float32"

    # --- tokenizer ------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        """The folder's ``tokenizers.Tokenizer``, truncating to :attr:`max_seq_length`, no padding."""
        with self._lock:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(str(self.layout.tokenizer_file))
                tokenizer.no_padding()
                tokenizer.enable_truncation(max_length=self.max_seq_length)
                self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def budget_tokenizer(self):
        """A separate ``tokenizers.Tokenizer`` of this model without truncation, for token budgets."""
        if self._budget_tokenizer is None:
            self._budget_tokenizer = plain_tokenizer(self.layout.tokenizer_file)
        return self._budget_tokenizer

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``prompt + text`` per text (special tokens included, truncated)."""
        items = [self.prompt + t for t in texts]
        if self.layout.do_lower_case:
            items = [t.lower() for t in items]
        return [encoding.ids for encoding in self.tokenizer.encode_batch(items)]

    # --- graph ----------------------------------------------------------------------------------

    def _export_module(self):
        return _export_example(self.layout.transformer_dir, self.layout.has_token_types)

    def _isolated(self) -> bool:
        """Whether the one-time graph build runs each stage in its own process (`core.runtime.memory.
        run_isolated`): for models whose weights exceed `ISOLATE_ABOVE_BYTES` (multilingual-e5-small:
        470 MB, whose export / fusion / quantisation peak at 2.5-4.6 GB in the calling process)."""
        weights = sum(p.stat().st_size for p in self.layout.transformer_dir.glob("*.safetensors")) + sum(
            p.stat().st_size for p in self.layout.transformer_dir.glob("*.bin")
        )
        return weights > ISOLATE_ABOVE_BYTES

    def _graph_path(self) -> Path:
        """The graph to run, built on a cache miss: export -> fused float32 graph -> [int8 graph].

        The unfused export is deleted once the fused graph exists (it is never run); the fused
        float32 graph stays, as it is both the ``"none"`` engine's graph and the int8 source.
        """
        from wb_pipeline.core.embeddings.encoders import onnx_export

        inputs = (INPUT_IDS, ATTENTION_MASK, *((TOKEN_TYPE_IDS,) if self.layout.has_token_types else ()))
        axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
        axes[OUTPUT_NAME] = {0: "batch"}
        key = f"sentence-transformers-mean|weights={self.weights_id}|inputs={','.join(inputs)}"
        stem = f"st-{self.model_folder.parent.name}-{self.model_folder.name}"[-80:]
        export_path = onnx_export.onnx_cache_path(key, stem, self.cache_dir)
        fusable = self.fused
        if self.fuse and not fusable:
            logger.warning("no fused graph for model type %r; running the plain export", self.layout.model_type)
        base = export_path.with_name(f"{export_path.stem}-{FUSED_TAG}.onnx") if fusable else export_path
        target = base.with_name(f"{base.stem}-{INT8_RECIPE}.onnx") if self.quantization == "int8" else base
        if _usable(target):
            return target
        isolated = self._isolated()
        if not _usable(base):
            export = dict(
                cache_key=key,
                file_stem=stem,
                cache_dir=self.cache_dir,
                input_names=inputs,
                output_names=(OUTPUT_NAME,),
                dynamic_axes=axes,
                open_session=False,
            )
            if isolated:
                run_isolated(_export_graph, self.layout.transformer_dir, self.layout.has_token_types, export)
            else:
                onnx_export.cached_onnx_export(build_module=self._export_module, **export)
            if fusable:
                onnx_export.cached_derived_file(export_path, FUSED_TAG, self._fuse_graph)
                export_path.unlink(missing_ok=True)
        if self.quantization == "int8":
            quantize = partial(run_isolated, _quantize_int8) if isolated else _quantize_int8
            onnx_export.cached_derived_file(base, INT8_RECIPE, quantize)
        return target

    def _build_session(self):
        from wb_pipeline.core.embeddings.encoders import onnx_export

        path = self._graph_path()
        try:
            session = onnx_export.open_onnx_session(path, self.num_threads)
        except Exception as error:  # a broken cache entry must not break the run: build it again, once
            logger.warning("cached ONNX file %s is unreadable (%s); building it again", path, error)
            path.unlink(missing_ok=True)
            path = self._graph_path()
            session = onnx_export.open_onnx_session(path, self.num_threads)
        self.onnx_path = path
        self._input_names = tuple(i.name for i in session.get_inputs())
        return session

    def _fuse_graph(self, source: Path, destination: Path) -> None:
        fuse = partial(run_isolated, fuse_bert_graph) if self._isolated() else fuse_bert_graph
        fuse(source, destination, self.layout.num_heads, self.layout.hidden_size)

    @property
    def session(self):
        """The onnxruntime session (exported / derived / loaded on first access)."""
        with self._lock:
            if self._session is None:
                self._session = self._build_session()
        return self._session

    @property
    def dim(self) -> int:
        """Output vector length (the transformer's hidden size; no model load needed)."""
        return self.layout.hidden_size

    # --- encoding -------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts`` (with :attr:`prompt` prepended) -> float32 ``[n, dim]``, unit rows, input order.

        Texts are sorted by token count and batched, so padding stays within a batch of similar
        lengths; rows are written back to their input positions.

        Raises:
            TypeError: if ``texts`` is a single string or holds a non-string (index named).
        """
        items = validate_texts(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        session = self.session
        ids = self.tokenize(items)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        step = batch_size or self.batch_size
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            width = int(lengths[rows].max())
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for slot, row in enumerate(rows):
                input_ids[slot, : lengths[row]] = ids[row]
                mask[slot, : lengths[row]] = 1
            feed = {INPUT_IDS: input_ids, ATTENTION_MASK: mask}
            if TOKEN_TYPE_IDS in self._input_names:
                feed[TOKEN_TYPE_IDS] = np.zeros_like(input_ids)
            out[rows] = session.run([OUTPUT_NAME], feed)[0]
        return l2_normalize(out)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.model_folder)!r}, prompt={self.prompt!r}, "
            f"max_seq_length={self.max_seq_length}, quantization={self.quantization!r})"
        )


def _usable(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _export_example(transformer_dir: Path, has_token_types: bool):
    """``(module, example inputs)`` of the mean-pooled transformer, for the ONNX export."""
    import torch

    module, _ = _mean_pooled_transformer(transformer_dir)
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padding in the example keeps the mask path in the traced graph
    if has_token_types:
        return module, (ids, mask, torch.zeros_like(ids))
    return module, (ids, mask)


def _export_graph(transformer_dir: Path, has_token_types: bool, export: dict) -> None:
    """`onnx_export.cached_onnx_export` of the mean-pooled transformer (module level: `run_isolated`)."""
    from wb_pipeline.core.embeddings.encoders import onnx_export

    onnx_export.cached_onnx_export(build_module=lambda: _export_example(transformer_dir, has_token_types), **export)


def fuse_bert_graph(source: Path, destination: Path, num_heads: int, hidden_size: int) -> None:
    """onnxruntime's transformer optimizer (fused Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm;
    opt_level 0) over ``source``, written to ``destination``: the same file ``optimize_model`` writes,
    byte for byte, at a quarter of its memory.

    The optimizer's passes copy the whole model for shape inference again and again (for
    multilingual-e5-small, 470 MB of which 384 MB is the word-embedding table: 3.3 GB peak). Here the
    weights are moved to a side file first, so those copies hold the graph only, and they are read
    back into the fused model at the end (1.0 GB peak). The passes read the weights they merge from
    that side file relative to the working directory, which this function changes for its duration:
    run it in its own process (`run_isolated`) or where nothing else depends on the working directory.
    """
    import os
    import tempfile

    import onnx
    from onnx import external_data_helper
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    destination = Path(destination)
    with tempfile.TemporaryDirectory(prefix=".fuse-", dir=destination.parent) as side:
        model = onnx.load_model(str(source))
        external_data_helper.convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024
        )
        onnx.save_model(model, os.path.join(side, "graph.onnx"))
        del model
        graph = onnx.load_model(os.path.join(side, "graph.onnx"), load_external_data=False)
        working_dir = os.getcwd()
        os.chdir(side)
        try:
            optimizer = optimize_by_fusion(graph, "bert", num_heads, hidden_size)
            optimizer.topological_sort()  # what save_model_to_file does first
            external_data_helper.load_external_data_for_model(optimizer.model, side)
        finally:
            os.chdir(working_dir)
        for tensor in external_data_helper._get_all_tensors(optimizer.model):
            if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.DEFAULT:
                tensor.ClearField("data_location")  # explicitly set by the load: would change the bytes
        OnnxModel.save(optimizer.model, str(destination))


def _quantize_int8(source: Path, destination: Path) -> None:
    """int8 weights, one scale per output channel, for MatMul / fused Attention only.

    The embedding tables stay float32: quantising the 250k-row word table with one scale cost the
    most accuracy (min cosine 0.976 -> 0.994 without it) and saves no compute.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(destination),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        # Fused contrib ops (Attention, SkipLayerNormalization) carry no inferred output types.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
