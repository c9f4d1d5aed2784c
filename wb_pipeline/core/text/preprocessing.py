"""Text preprocessing of product titles and descriptions (the seed notebook's ``TextPreprocessor``).

Two outputs per text column:

* :func:`normalize_raw_text` -- natural text for transformer encoders: HTML tags removed, HTML
  entities unescaped, invisible format characters removed, whitespace collapsed.
* :func:`preprocess_text` -- the notebook's bag-of-words normalisation: remove the
  ``<number>x<number>`` / ``<number><unit>`` patterns, lowercase, tokenize, drop punctuation, units,
  (description only) stop words except the kept ones, pure numbers and over-long words, then cap the
  number of words.

Both work on whole columns with pyarrow compute kernels (RE2 regular expressions); there is no
per-row Python in the hot path. Work is done once per distinct text (titles repeat a lot), the
markup/entity/removal rewrites only on the rows that match, and tokenising and filtering once per
distinct whitespace-separated word (:func:`preprocess_and_normalize` also shares the markup pass
between the two outputs). Both are total: ``None``/NaN/empty -> ``""``, any Unicode string
(lone surrogates are replaced), megabyte-long strings are fine (RE2 runs in linear time).

Tokenisation (defined here, because nltk's ``word_tokenize`` needs data that cannot be downloaded):

* word characters are Unicode letters (``\\p{L}``), marks (``\\p{M}``) and numbers (``\\p{N}``);
* a token is a maximal run of word characters, where a hyphen between two word characters
  (``кто-то``, ``wi-fi``, ``42-44``) and a ``.`` or ``,`` between two number characters (``1,5``,
  ``3.5``) stay inside the token;
* every other character separates tokens and is dropped (so all punctuation is dropped);
* a token without any letter or number (a lone combining mark, e.g. an emoji's variation
  selector) is dropped.

Deviations from the notebook, on purpose:

* The notebook drops only single ASCII punctuation tokens (``string.punctuation``); tokens such as
  ``«``, ``»``, ``—``, ``...`` or nltk's ```` `` ```` survived into its output. Here no token
  contains punctuation except the joiners above.
* Stop words come from the ``stop-words`` package (``ru``: 421 words, ships its data) instead of
  nltk's list (151 words, needs a download); 'не' and 'для' are kept, as in the notebook.
* HTML is stripped and entities unescaped before tokenising (``config.strip_html``), so markup
  (``br``, ``nbsp``, ``quot``) never becomes a word. The notebook tokenised the markup.
* "Pure number" means every character is a Unicode number (``\\p{N}``); the notebook used
  ``str.isdigit`` which differs only on rare characters (``½`` is dropped here, kept there).
* Missing text gives ``""`` instead of an exception.

The dimension/unit removal regex is the notebook's (applied before lowercasing, so like the
notebook it removes ``5кг`` but not ``5КГ``); ``\\d`` is spelled ``\\p{Nd}`` because RE2's ``\\d`` is
ASCII-only while Python's is Unicode.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from stop_words import get_stop_words

TextKind = Literal["title", "description"]

NOTEBOOK_UNITS = ("мг", "г", "гр", "кг", "мл", "л", "мм", "см", "м", "км", "шт", "штук")
# The notebook's `\d+[хХxX]\d+|\d+[кмглршт]+|\d+ [xXхХ] \d+` in RE2 syntax.
NOTEBOOK_REMOVAL_PATTERN = r"\p{Nd}+[хХxX]\p{Nd}+|\p{Nd}+[кмглршт]+|\p{Nd}+ [xXхХ] \p{Nd}+"

_WORD = r"[\p{L}\p{M}\p{N}]"
# Private-use code points stand in for joiners while splitting (they are separators themselves,
# so none survives into a piece from the input).
_HYPHEN_MARK, _DOT_MARK, _COMMA_MARK = "\ue000", "\ue001", "\ue002"
# Pieces are runs of word characters and possible joiners; everything else separates. Turning
# non-space separators into spaces and splitting on whitespace is faster than a regex split.
_NON_SPACE_SEPARATOR = r"[^\p{L}\p{M}\p{N}\-.,\s]+"
_PURE_NUMBER = r"^\p{N}+$"
_HTML_MARKUP = r"<!--(?s:.*?)-->|</?[A-Za-z][^<>]*>|<![A-Za-z][^<>]*>"
_ENTITY = r"&(?:#[0-9]+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);?"
# Zero-width characters, soft hyphens, BOMs: invisible, and they would split or glue words.
_INVISIBLE = r"\p{Cf}"
_WHITESPACE = r"[\s\p{Z}\p{Cc}]+"
# The runs of _WHITESPACE that collapsing actually changes: two or more characters, or one that is
# not a plain space. Rewriting only those (not every single space) is ~4x faster and gives the
# same text as replacing every run by " ".
_WHITESPACE_TO_COLLAPSE = r"[\s\p{Z}\p{Cc}]{2,}|[^\PZ ]|\p{Cc}"


@dataclass(frozen=True)
class TextPreprocessingConfig:
    """Settings of :func:`preprocess_text`; defaults are the seed notebook's values."""

    max_word_len: int = 15
    title_max_words: int = 60
    description_max_words: int = 300
    units: tuple[str, ...] = NOTEBOOK_UNITS
    kept_stop_words: tuple[str, ...] = ("не", "для")
    stop_word_language: str = "ru"
    removal_pattern: str = NOTEBOOK_REMOVAL_PATTERN
    strip_html: bool = True

    def __post_init__(self) -> None:
        for name in ("max_word_len", "title_max_words", "description_max_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"TextPreprocessingConfig.{name} must be an int >= 0, got {value!r}")
        # Accept lists from config systems but store tuples so the config stays hashable.
        for name in ("units", "kept_stop_words"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def max_words(self, kind: TextKind) -> int:
        """Word cap for a text kind."""
        if kind == "title":
            return self.title_max_words
        if kind == "description":
            return self.description_max_words
        raise ValueError(f"text kind must be 'title' or 'description', got {kind!r}")

    def excluded_words(self, kind: TextKind) -> frozenset[str]:
        """Words dropped from a text kind: units, plus stop words (minus the kept ones) for descriptions."""
        self.max_words(kind)  # validates kind
        excluded = frozenset(self.units)
        if kind == "description":
            excluded |= _stop_words(self.stop_word_language) - frozenset(self.kept_stop_words)
        return excluded


@lru_cache(maxsize=8)
def _stop_words(language: str) -> frozenset[str]:
    return frozenset(get_stop_words(language))


def _as_arrow_strings(texts: pd.Series) -> pa.Array:
    """A large_string array with missing values as "" (bytes decoded, other scalars via ``str``)."""
    try:
        array = pa.array(texts, type=pa.large_string(), from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError, UnicodeError):
        array = pa.array([_coerce_text(value) for value in texts], type=pa.large_string())
    if isinstance(array, pa.ChunkedArray):  # pyarrow-backed pandas strings, e.g. after pd.concat
        array = array.combine_chunks()
    return pc.fill_null(array, "") if array.null_count else array


def _coerce_text(value: object) -> str:
    if value is None or (not isinstance(value, (str, bytes)) and pd.isna(value)):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else str(value)
    # Lone surrogates cannot be encoded as UTF-8; replace them instead of failing the column.
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _to_series(array: pa.Array, index: pd.Index) -> pd.Series:
    return pd.Series(pd.array(array, dtype=pd.StringDtype("pyarrow", na_value=np.nan)), index=index)


def _replace_where_matching(array: pa.Array, pattern: str, replacement: str) -> pa.Array:
    """``replace_substring_regex`` on only the rows that contain a match.

    Finding a match is several times cheaper than rewriting a string, and most rows have none.
    """
    matches = pc.fill_null(pc.match_substring_regex(array, pattern), False)
    positions = np.flatnonzero(matches.to_numpy(zero_copy_only=False))
    if positions.size == 0:
        return array
    replaced = pc.replace_substring_regex(array.take(pa.array(positions)), pattern, replacement)
    return pc.replace_with_mask(array, matches, replaced)


def _unescape_entities(array: pa.Array) -> pa.Array:
    """``html.unescape`` on the (usually few) rows that contain an entity."""
    has_entity = pc.fill_null(pc.match_substring_regex(array, _ENTITY), False)
    positions = np.flatnonzero(has_entity.to_numpy(zero_copy_only=False))
    if positions.size == 0:
        return array
    unescaped = [_coerce_text(html.unescape(text)) for text in array.take(pa.array(positions)).to_pylist()]
    return pc.replace_with_mask(array, has_entity, pa.array(unescaped, type=array.type))


def _strip_markup(array: pa.Array) -> pa.Array:
    """HTML tags and comments -> space, entities unescaped, invisible format characters removed."""
    array = _replace_where_matching(array, _HTML_MARKUP, " ")
    array = _unescape_entities(array)
    return _replace_where_matching(array, _INVISIBLE, "")


def _collapse_whitespace(array: pa.Array) -> pa.Array:
    return pc.utf8_trim(_replace_where_matching(array, _WHITESPACE_TO_COLLAPSE, " "), " ")


def _normalize(array: pa.Array, collapse_whitespace: bool = True) -> pa.Array:
    array = _strip_markup(array)
    return _collapse_whitespace(array) if collapse_whitespace else array


def _unique_rows(array: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The distinct strings and, per row, the position of its string among them.

    Titles repeat a lot (one product in several colours), so every step runs once per distinct text.
    """
    encoded = pc.dictionary_encode(array)
    return encoded.dictionary, encoded.indices


def normalize_raw_text(texts: pd.Series) -> pd.Series:
    """Natural text for transformer encoders: HTML tags removed, entities unescaped, whitespace collapsed.

    Case and punctuation are kept. ``None``/NaN/empty -> ``""``. Same index as ``texts``.
    """
    unique, row_to_unique = _unique_rows(_as_arrow_strings(texts))
    return _to_series(_normalize(unique).take(row_to_unique), texts.index)


def _protect_joiners(array: pa.Array) -> pa.Array:
    """Replace in-token joiners by private-use marks so that splitting on punctuation keeps them.

    Each rule runs twice: a match consumes the character after the joiner, so in chains such as
    ``a-b-c`` or ``1.2.3`` the first pass marks every other joiner and the second the rest.
    """
    rules = (
        (rf"({_WORD})-({_WORD})", _HYPHEN_MARK),
        (r"(\p{N})\.(\p{N})", _DOT_MARK),
        (r"(\p{N}),(\p{N})", _COMMA_MARK),
    )
    for pattern, mark in rules:
        for _ in range(2):
            array = pc.replace_substring_regex(array, pattern, rf"\1{mark}\2")
    return array


def _split_joined_pieces(pieces: pa.Array) -> pa.ListArray:
    """Split pieces made of word characters and ``-.,`` into tokens (joiners kept where they join).

    Splitting a piece cannot change a joiner's neighbours (a piece ends at a character that is not
    a word character), so this equals protecting joiners in the whole text, at a fraction of the
    cost: only the few pieces with an inner ``-.,`` are scanned.
    """
    protected = _protect_joiners(pieces)
    parts = pc.split_pattern_regex(protected, r"[-.,]+")
    flat = pc.list_flatten(parts)
    for mark, joiner in ((_HYPHEN_MARK, "-"), (_DOT_MARK, "."), (_COMMA_MARK, ",")):
        flat = pc.replace_substring(flat, mark, joiner)
    offsets = parts.offsets
    return pa.LargeListArray.from_arrays(pc.cast(offsets, pa.int64()), flat)


def _tokens_and_parents(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Flat tokens of all strings and the row index of each token (ascending)."""
    pieces = pc.utf8_split_whitespace(pc.replace_substring_regex(texts, _NON_SPACE_SEPARATOR, " "))
    flat = pc.utf8_trim(pc.list_flatten(pieces), "-.,")
    parents = pc.list_parent_indices(pieces).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    has_inner_joiner = pc.match_substring_regex(flat, "[-.,]").to_numpy(zero_copy_only=False)
    inner = np.flatnonzero(has_inner_joiner)
    if inner.size:
        split = _split_joined_pieces(flat.take(pa.array(inner)))
        sub_counts = np.diff(split.offsets.to_numpy())
        counts = np.ones(len(flat), dtype=np.int64)
        counts[inner] = sub_counts
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        simple = np.flatnonzero(~has_inner_joiner)
        # Interleave the untouched pieces and the split ones back into text order.
        source = np.empty(int(counts.sum()), dtype=np.int64)
        source[starts[simple]] = np.arange(simple.size)
        sub_positions = np.repeat(starts[inner], sub_counts) + _ranks(sub_counts)
        source[sub_positions] = simple.size + np.arange(sub_positions.size)
        combined = pa.concat_arrays([flat.take(pa.array(simple)), pc.list_flatten(split).cast(flat.type)])
        flat = combined.take(pa.array(source))
        parents = np.repeat(parents, counts)
    # A token needs a letter or number: a lone mark (an emoji's variation selector) is not a word.
    keep = pc.match_substring_regex(flat, r"[\p{L}\p{N}]")
    return pc.filter(flat, keep), parents[keep.to_numpy(zero_copy_only=False)]


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0..count-1 for each group, concatenated."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(starts, counts)


def tokenize(texts: pa.Array) -> pa.LargeListArray:
    """Tokens of each (already lowercased) string, per the module docstring's definition."""
    flat, parents = _tokens_and_parents(texts)
    return _regroup(flat, parents, len(texts), cap=None)


def _regroup(values: pa.Array, parents: pa.Array, n_rows: int, cap: int | None) -> pa.ListArray:
    """Lists of ``values`` per row (``parents`` ascending), keeping at most ``cap`` per row."""
    parent_index = np.asarray(parents, dtype=np.int64)
    counts = np.bincount(parent_index, minlength=n_rows)
    if cap is not None:
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        rank = np.arange(parent_index.size) - starts[parent_index]
        values = values.filter(pa.array(rank < cap))
        counts = np.minimum(counts, cap)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


def preprocess_text(texts: pd.Series, kind: TextKind, config: TextPreprocessingConfig | None = None) -> pd.Series:
    """The notebook's TextPreprocessor on a whole column: space-joined kept tokens, ``""`` if none.

    ``kind`` selects the word cap and whether stop words are dropped (descriptions only).
    Same index as ``texts``; every output has at most ``config.max_words(kind)`` words, none longer
    than ``config.max_word_len`` characters.
    """
    config = config or TextPreprocessingConfig()
    config.max_words(kind)  # validates kind before any work
    unique, row_to_unique = _unique_rows(_as_arrow_strings(texts))
    if config.strip_html:
        unique = _strip_markup(unique)
    return _to_series(_preprocess_unique(unique, kind, config).take(row_to_unique), texts.index)


def preprocess_and_normalize(
    texts: pd.Series, kind: TextKind, config: TextPreprocessingConfig | None = None
) -> tuple[pd.Series, pd.Series]:
    """``(preprocess_text(texts, kind, config), normalize_raw_text(texts))`` with the shared work done once.

    Both outputs start by stripping markup and entities (when ``config.strip_html``); here that
    runs once per distinct text instead of twice per row.
    """
    config = config or TextPreprocessingConfig()
    config.max_words(kind)
    unique, row_to_unique = _unique_rows(_as_arrow_strings(texts))
    stripped = _strip_markup(unique)
    preprocessed = _preprocess_unique(stripped if config.strip_html else unique, kind, config)
    natural = _collapse_whitespace(stripped)
    return (
        _to_series(preprocessed.take(row_to_unique), texts.index),
        _to_series(natural.take(row_to_unique), texts.index),
    )


def _preprocess_unique(array: pa.Array, kind: TextKind, config: TextPreprocessingConfig) -> pa.Array:
    """Removal regex, lowercase, tokenize, filter and cap (markup already handled).

    Tokens never span whitespace, and lowercasing maps code point by code point, so the text is
    split on whitespace first and each distinct word (a few ten thousand in a 100k-row column,
    against millions of occurrences) is lowercased, tokenized and filtered once; the kept tokens
    are then laid out per row again and capped.
    """
    cap = config.max_words(kind)
    if config.removal_pattern:
        array = _replace_where_matching(array, config.removal_pattern, "")
    words = pc.utf8_split_whitespace(array)
    word_rows = pc.list_parent_indices(words).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    encoded = pc.dictionary_encode(pc.list_flatten(words))
    vocabulary = pc.utf8_lower(encoded.dictionary)
    word_codes = encoded.indices.to_numpy(zero_copy_only=False)

    # Kept tokens of each distinct word, contiguous, word by word.
    tokens, token_words = _tokens_and_parents(vocabulary)
    excluded = pa.array(sorted(config.excluded_words(kind)), type=pa.large_string())
    keep = pc.and_(
        pc.and_(
            pc.invert(pc.is_in(tokens, value_set=excluded)),
            pc.invert(pc.match_substring_regex(tokens, _PURE_NUMBER)),
        ),
        pc.less_equal(pc.utf8_length(tokens), config.max_word_len),
    )
    keep_mask = keep.to_numpy(zero_copy_only=False)
    kept_tokens = pc.filter(tokens, keep)
    kept_per_word = np.bincount(token_words[keep_mask], minlength=len(vocabulary))
    first_kept_of_word = np.cumsum(kept_per_word) - kept_per_word

    # Every occurrence of a word contributes its kept tokens, in text order.
    per_occurrence = kept_per_word[word_codes]
    contributes = per_occurrence > 0
    codes, rows, counts = word_codes[contributes], word_rows[contributes], per_occurrence[contributes]
    if counts.size and counts.max() > 1:  # a word with several kept tokens ('х/б'): expand
        token_index = np.repeat(first_kept_of_word[codes], counts) + _ranks(counts)
        token_rows = np.repeat(rows, counts)
    else:
        token_index, token_rows = first_kept_of_word[codes], rows
    within_cap = _ranks(np.bincount(token_rows, minlength=len(array))) < cap
    token_index, token_rows = token_index[within_cap], token_rows[within_cap]
    kept = _regroup(kept_tokens.take(pa.array(token_index)), token_rows, len(array), cap=None)
    return pc.binary_join(kept, pa.scalar(" ", type=pa.large_string()))
