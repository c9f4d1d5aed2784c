"""What every text encoder does to its input the same way: texts validated (a list of str), a model folder's
content hash (its weights id), a plain tokenizer from a folder or a tokenizer object, and truncation to a
token budget."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wb_pipeline.core.embeddings.encoders.e5_convert import CONVERSION_RECORD

# Files of a model folder that are not the model (the conversion record is written after the weights).
_NON_MODEL_FILES = frozenset({"README.md", ".gitattributes", CONVERSION_RECORD})


def validate_texts(texts: Sequence[str]) -> list[str]:
    """Return ``texts`` as a list, or raise ``TypeError`` naming the first non-string item.

    A bare ``str`` is rejected too: it is a sequence of characters, almost always a caller bug.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings, not a single string")
    items = list(texts)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"texts[{index}] is {type(item).__name__}, expected str (fill missing text first)")
    return items


def folder_content_hash(folder: str | os.PathLike[str]) -> str:
    """sha256 over (relative path, file sha256) of every file under ``folder``, README-like files excluded.

    Identity of a local model folder's weights + configs + tokenizer: equal on any machine for
    equal files, different when any file that can change the vectors changes.
    """
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name in _NON_MODEL_FILES:
            continue
        file_digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                file_digest.update(chunk)
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def plain_tokenizer(source: Any) -> Any:
    """A fresh ``tokenizers.Tokenizer`` without truncation or padding, for counting tokens.

    ``source`` is a ``tokenizer.json`` path, a ``tokenizers.Tokenizer`` or a transformers fast
    tokenizer; a copy is made, so the caller's tokenizer settings are never changed.
    """
    from tokenizers import Tokenizer

    if isinstance(source, (str, os.PathLike)):
        tokenizer = Tokenizer.from_file(str(source))
    else:
        backend = getattr(source, "backend_tokenizer", source)
        if not isinstance(backend, Tokenizer):
            raise TypeError(f"cannot count tokens with {type(source).__name__}: a fast tokenizer is needed")
        tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def truncate_to_tokens(texts: Sequence[str], tokenizer: Any, max_tokens: int) -> list[str]:
    """Each text cut after its first ``max_tokens`` tokens (no special tokens counted).

    The cut falls at the end of the last kept token's span in the ORIGINAL text (the tokenizer's
    offsets), so the kept prefix re-tokenises to the same tokens; trailing spaces are dropped.
    Texts within the budget come back unchanged (same string).

    Args:
        texts: strings to cut.
        tokenizer: a ``tokenizers.Tokenizer`` without truncation (see :func:`plain_tokenizer`).
        max_tokens: tokens to keep per text; 0 gives empty strings.

    Raises:
        ValueError: if ``max_tokens`` is negative.
        TypeError: if a text is not a string (index named).
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    items = validate_texts(texts)
    if max_tokens == 0:
        return ["" for _ in items]
    out = list(items)
    for row, encoding in enumerate(tokenizer.encode_batch(items, add_special_tokens=False)):
        if len(encoding.ids) > max_tokens:
            out[row] = items[row][: encoding.offsets[max_tokens - 1][1]].rstrip()
    return out
