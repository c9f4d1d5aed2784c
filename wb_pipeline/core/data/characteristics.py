"""Safe parsing of the WB ``characteristics`` cells (bytes) into a long table.

The dump stores each cell in one of three forms (REFERENCE.md §1):

1. the repr of a bytes literal of the repr of a bytes literal of JSON, exactly
   ``str(str(json.dumps(items).encode()).encode()).encode()`` -- text starting ``b'b\\'``;
2. ``str()`` of a numpy object array of dicts -- elements separated by whitespace/newlines (no
   commas), list values printed as ``array([...], dtype=object)``, numpy 2 scalars as
   ``np.float64(1.5)``;
3. plain JSON bytes.

Each item has ``charcName`` and either ``charcValues`` (list of str) or ``value`` (a number, or a
string with a decimal comma). Items are normalised to ``{"name": str, "values": list[str]}``.

Nothing is ever executed: bytes literals are unwrapped by ``ast.literal_eval`` (only a bytes
constant is accepted); the numpy repr is rewritten into a Python literal (string-aware, so text
inside values is never touched) and read by ``ast.literal_eval``; JSON by ``json.loads``. Cells
above ``max_bytes`` are rejected before parsing.

:func:`characteristics_table` first tries vectorised (pyarrow) rewrites of whole columns to JSON:
form 1 where a regex proves the literal is a double escape of printable-ASCII JSON (undone by
three literal replacements), form 2 where the cell has no ``"`` or backslash, so every ``'`` is a
string delimiter and a string-skipping regex rewrites only the numpy syntax. JSON that a regex
proves to be in the dump's simple grammar (``_SIMPLE_JSON_ROW``: items of exactly charcName plus
charcValues or value, no surrogate escapes) is read by ONE Arrow JSON read and normalised with
column kernels. Any other cell, or one whose rewrite is not valid JSON or fails normalisation, is
parsed by ``json.loads`` or :func:`parse_characteristics`, which gives the definitive result or
rejection reason; tests check the paths agree.

Deviations from the notebook (``_process_characteristics`` + ``CharExtractor``), on purpose:

* ``eval`` on file data is gone (arbitrary code execution); malformed cells are rejected with a
  machine-readable reason (:data:`REJECTION_REASONS`) instead of crashing the run.
* Form 1 is unwrapped as what it is (two nested bytes literals) instead of collapsing every run of
  backslashes into one, which corrupted values containing a backslash or a quote.
* Form 2 elements on one line (numpy puts short dicts side by side: ``{...} {...}``) are split
  too; the notebook only handled ``}\\n``.
* ``value`` numbers become one canonical string (``1.5``, ``'1,5'`` -> ``"1.5"``; ``2.0`` -> ``"2"``)
  instead of a float next to strings; empty and missing values are dropped; names are stripped.
* An item that repeats a name adds values; the notebook kept the last one only.

One module over 500 lines on purpose: one parser (three cell formats, each unwrapped without executing
anything, then one normalisation); its pieces are only used together and tested as one.
"""

from __future__ import annotations

import ast
import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from wb_pipeline.core.data.cleaning import PYTHON_WHITESPACE

# A real cell is a few KB; the cap bounds the parser's time and memory on a hostile cell.
DEFAULT_MAX_CHARACTERISTICS_BYTES = 1 << 20
# Bytes literals nested deeper than this are not a stored form.
MAX_BYTES_LITERAL_DEPTH = 4

REJECTION_REASONS = frozenset(
    {
        "empty",  # None / NaN / blank cell
        "unsupported_type",  # neither bytes nor str
        "too_large",  # over max_bytes
        "not_utf8",  # undecodable bytes, at any wrapping level
        "unrecognised_form",  # not a bytes literal, JSON or numpy repr
        "malformed_bytes_literal",  # starts like form 1 but is not a valid bytes literal
        "malformed_json",  # JSON text that does not parse
        "malformed_numpy_repr",  # numpy repr that does not rewrite into a literal
        "truncated_numpy_repr",  # numpy summarised the array with '...': items are lost
        "not_a_list",  # parsed, but the top level is not a list
        "malformed_item",  # an element is not {charcName: str, charcValues: [...] | value: scalar}
    }
)


class CharacteristicsParseError(ValueError):
    """A characteristics cell that cannot be parsed; ``reason`` is one of :data:`REJECTION_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CharacteristicsTable(NamedTuple):
    """Result of :func:`characteristics_table`.

    ``long``: nm, name, value (str), one row per value. ``rejections``: nm, reason, detail.
    ``parsed``: nm, n_items, n_values -- one row per input row that parsed (with zero items too),
    so ``len(parsed) + len(rejections) == len(input)``.
    """

    long: pd.DataFrame
    rejections: pd.DataFrame
    parsed: pd.DataFrame


# --------------------------------------------------------------------------------------------
# Normalisation of parsed items

_NUMBER_TEXT = re.compile(r"[+-]?[0-9]+(?:[.,][0-9]+)?")


def canonical_value(value: object) -> str | None:
    """One canonical string for a ``value`` field: numbers and decimal-comma numbers as ``"1.5"``.

    ``None`` and non-finite floats -> ``None`` (no value); other strings are stripped.
    """
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return None
        return _canonical_decimal(repr(float(value)))
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER_TEXT.fullmatch(text):
            return _canonical_decimal(text.replace(",", "."))
        return text or None
    raise CharacteristicsParseError("malformed_item", f"value of type {type(value).__name__}")


def _canonical_decimal(text: str) -> str:
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - callers pass numeric text only
        return text
    return format(number.normalize(), "f")


def _normalise_items(items: object, check_encoding: bool = True) -> list[dict]:
    if type(items) is not list:
        raise CharacteristicsParseError("not_a_list", f"top level is {type(items).__name__}")
    if Ellipsis in items:
        raise CharacteristicsParseError("truncated_numpy_repr", "numpy printed '...' instead of items")
    normalised = []
    for position, item in enumerate(items):
        if type(item) is not dict or type(name := item.get("charcName")) is not str:
            raise CharacteristicsParseError("malformed_item", f"item {position} has no str charcName")
        values = item.get("charcValues")
        if values is None:
            text = canonical_value(item.get("value"))
            texts = [] if text is None else [text]
        elif type(values) is list or type(values) is tuple:
            if Ellipsis in values:
                raise CharacteristicsParseError("truncated_numpy_repr", f"item {position} values elided")
            if all(type(value) is str for value in values):  # the usual case
                texts = [text for value in values if (text := value.strip())]
            else:
                texts = [
                    text
                    for value in values
                    if value is not None
                    and (text := value.strip() if isinstance(value, str) else canonical_value(value))
                ]
        else:
            raise CharacteristicsParseError("malformed_item", f"item {position} charcValues is not a list")
        normalised.append({"name": name.strip(), "values": texts})
    if check_encoding:
        _require_encodable(normalised)
    return normalised


def _require_encodable(items: list[dict]) -> None:
    """JSON and Python escapes can smuggle lone surrogates, which no UTF-8 table can store."""
    text = "".join(item["name"] + "".join(item["values"]) for item in items)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise CharacteristicsParseError("not_utf8", f"escaped lone surrogate: {error}") from None


# --------------------------------------------------------------------------------------------
# Per-cell parsing


def _decode(raw: object, max_bytes: int) -> str:
    if raw is None:
        raise CharacteristicsParseError("empty", "missing cell")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > max_bytes:
            raise CharacteristicsParseError("too_large", f"{len(raw)} bytes > {max_bytes}")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CharacteristicsParseError("not_utf8", str(error)) from None
    if isinstance(raw, str):
        if len(raw) > max_bytes:
            raise CharacteristicsParseError("too_large", f"{len(raw)} characters > {max_bytes}")
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise CharacteristicsParseError("not_utf8", str(error)) from None
        if size > max_bytes:
            raise CharacteristicsParseError("too_large", f"{size} bytes > {max_bytes}")
        return raw
    if isinstance(raw, float) and math.isnan(raw):
        raise CharacteristicsParseError("empty", "missing cell")
    raise CharacteristicsParseError("unsupported_type", type(raw).__name__)


def _is_bytes_literal(text: str) -> bool:
    return len(text) >= 3 and text[0] in "bB" and text[1] in "'\""


def _unwrap_bytes_literals(text: str) -> str:
    depth = 0
    while _is_bytes_literal(text):
        depth += 1
        if depth > MAX_BYTES_LITERAL_DEPTH:
            raise CharacteristicsParseError("malformed_bytes_literal", f"nested deeper than {MAX_BYTES_LITERAL_DEPTH}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
            raise CharacteristicsParseError("malformed_bytes_literal", _short(error)) from None
        if not isinstance(value, bytes):
            raise CharacteristicsParseError("malformed_bytes_literal", f"evaluates to {type(value).__name__}")
        try:
            text = value.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise CharacteristicsParseError("not_utf8", f"inside bytes literal: {error}") from None
    return text


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:200]


# Python string literals (kept verbatim) or the numpy-only syntax to rewrite.
_NUMPY_REPR_TOKENS = re.compile(
    r"""(?P<string>[bBuU]?(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"))"""
    r"""|(?P<elided>\}\s+\.\.\.\s+\{)"""
    r"""|(?P<between>\}\s+\{)"""
    r"""|(?P<dtype>,\s*dtype=(?:[A-Za-z_][\w.]*|'[^'\n]*'|"[^"\n]*")\s*\))"""
    r"""|(?P<call>\b(?:np\.|numpy\.)?(?:array|float\d*|int\d*|uint\d*|str_|bool_?|object_)\()"""
    r"""|(?P<nan>-?\b(?:nan|inf)\b)"""
)
_NUMPY_REPR_REWRITE = {"elided": "}, ..., {", "between": "}, {", "dtype": ")", "call": "(", "nan": "None"}


def _numpy_repr_to_literal(text: str) -> str:
    """Rewrite ``str(np.array([...dicts...], dtype=object))`` into a Python list literal."""

    def rewrite(match: re.Match[str]) -> str:
        kind = match.lastgroup
        return match.group(0) if kind == "string" else _NUMPY_REPR_REWRITE[kind]

    return _NUMPY_REPR_TOKENS.sub(rewrite, text)


def _parse_unwrapped(text: str, was_bytes_literal: bool) -> object:
    if not text:
        raise CharacteristicsParseError("empty", "blank text")
    if text[0] not in "[{":
        raise CharacteristicsParseError("unrecognised_form", repr(text[:40]))
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        json_error = error
    if was_bytes_literal or '"charcName"' in text:
        # Form 1 always wraps JSON, and double-quoted keys mean JSON: no Python fallback.
        raise CharacteristicsParseError("malformed_json", _short(json_error))
    try:
        return ast.literal_eval(_numpy_repr_to_literal(text))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        reason = "malformed_numpy_repr" if "'" in text else "malformed_json"
        detail = _short(error) if reason == "malformed_numpy_repr" else _short(json_error)
        raise CharacteristicsParseError(reason, detail) from None


def parse_characteristics(raw: bytes | str | None, max_bytes: int = DEFAULT_MAX_CHARACTERISTICS_BYTES) -> list[dict]:
    """Parse one cell in any stored form into ``[{"name": str, "values": list[str]}, ...]``.

    Raises :class:`CharacteristicsParseError` (with ``.reason``) for anything else; never executes
    input. ``max_bytes`` caps the cell size before any parsing.
    """
    text = _decode(raw, max_bytes).strip()
    if not text:
        raise CharacteristicsParseError("empty", "blank cell")
    was_bytes_literal = _is_bytes_literal(text)
    if was_bytes_literal:
        text = _unwrap_bytes_literals(text)
    return _normalise_items(_parse_unwrapped(text, was_bytes_literal))


# --------------------------------------------------------------------------------------------
# Whole column

# Form 1 as produced by the dump: b'b\'<the JSON escaped twice>\''.
_FORM1_PREFIX, _FORM1_SUFFIX = "b'b\\'", "\\''"
# Escaping printable-ASCII JSON twice as a bytes literal turns \ into \\\\ and ' into \\\',
# and leaves every other printable character alone. A content made only of those tokens is such
# a double escape, and undoing it is three literal replacements (NUL cannot occur in it).
_TWICE_ESCAPED_PRINTABLE_ASCII = r"^(?:[ -&(-\[\]-~]|\\\\\\\\|\\\\\\')*$"


def _fast_unwrap_form1(texts: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Vectorised unwrapping of the standard form 1 whose JSON is printable ASCII.

    Returns (positions of the rows handled, their JSON text). Other rows fall back to the per-cell
    parser.
    """
    positions = np.flatnonzero(_mask(pc.and_(pc.starts_with(texts, _FORM1_PREFIX), pc.ends_with(texts, _FORM1_SUFFIX))))
    content = pc.utf8_slice_codeunits(texts.take(pa.array(positions)), len(_FORM1_PREFIX), -len(_FORM1_SUFFIX))
    exact = _mask(pc.match_substring_regex(content, _TWICE_ESCAPED_PRINTABLE_ASCII))
    positions, content = positions[exact], content.filter(pa.array(exact))
    content = pc.replace_substring(content, "\\\\\\\\", "\x00")
    content = pc.replace_substring(content, "\\\\\\'", "'")
    return positions, pc.replace_substring(content, "\x00", "\\")


# numpy reprs whose strings are all simple ('...' without quotes or backslashes inside) rewrite
# to JSON with regexes alone: each alternative below either consumes a whole string literal
# (output as is, followed by a private-use mark) or a piece of numpy/Python syntax outside
# strings, which becomes the captured text (if any) and the mark; "}<mark>", "True<mark>" etc.
# can then only come from syntax, and are replaced by their JSON spelling.
_NUMPY_SYNTAX = r"('[^']*')|(\})\s+\{|(True|False|None|nan|inf)|array\(|,\s*dtype=object\)"
_MARK = "\ue000"
# Only a \uD800-\uDFFF escape can put a lone surrogate into text decoded from valid UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_NOT_SIMPLE_NUMPY_REPR = r'["\\\x{E000}]'
_NUMPY_TO_JSON = (
    ("}", "}, {"),
    ("True", "true"),
    ("False", "false"),
    ("None", "null"),
    ("nan", "NaN"),
    ("inf", "Infinity"),
)


def _fast_numpy_repr_to_json(texts: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Vectorised rewrite of form 2 into JSON for rows with simple strings (see ``_NUMPY_SYNTAX``).

    Returns (positions of the candidate rows, their rewrite). A rewrite that is not valid JSON
    (np.float64(...), '...', odd shapes) falls back to the per-cell parser.
    """
    positions = np.flatnonzero(_mask(pc.and_(pc.starts_with(texts, "[{'"), pc.ends_with(texts, "}]"))))
    candidates = texts.take(pa.array(positions))
    simple = _mask(pc.invert(pc.match_substring_regex(candidates, _NOT_SIMPLE_NUMPY_REPR)))
    positions, candidates = positions[simple], candidates.filter(pa.array(simple))
    rewritten = pc.replace_substring_regex(candidates, _NUMPY_SYNTAX, "\\1\\2\\3" + _MARK)
    rewritten = pc.replace_substring(rewritten, "}" + _MARK, "}, {")
    # True/None/nan/inf are rare: rewrite them only in the rows that have them.
    rare = pc.match_substring_regex(rewritten, "(?:True|False|None|nan|inf)" + _MARK)
    if pc.any(rare).as_py():
        rows = rewritten.filter(rare)
        for syntax, json_spelling in _NUMPY_TO_JSON[1:]:
            rows = pc.replace_substring(rows, syntax + _MARK, json_spelling)
        rewritten = pc.replace_with_mask(rewritten, rare, rows)
    rewritten = pc.replace_substring(rewritten, _MARK, "")
    return positions, pc.replace_substring(rewritten, "'", '"')


def _mask(condition: pa.Array) -> np.ndarray:
    return pc.fill_null(condition, False).to_numpy(zero_copy_only=False)


def _replace_where_matching(array: pa.Array, pattern: str, replacement: str) -> pa.Array:
    """``replace_substring_regex`` on only the rows that match (finding is cheaper than rewriting)."""
    matches = pc.fill_null(pc.match_substring_regex(array, pattern), False)
    if not pc.any(matches).as_py():
        return array
    return pc.replace_with_mask(array, matches, pc.replace_substring_regex(array.filter(matches), pattern, replacement))


# The JSON the dump writes, as a grammar a regex can check: a list of items, each exactly
# {"charcName": <string>, "charcValues": [<strings>]} or {"charcName": <string>, "value": <scalar>}.
# A row in this grammar has no duplicate keys, no odd types and no raw newline inside a string, so
# Arrow's JSON reader parses it exactly like json.loads + _normalise_items (checked by the tests).
_JSON_WS = r"[ \t\n\r]*"
# \uD800-\uDFFF escapes are left out: they need the per-cell surrogate check.
_JSON_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-CeEfF][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))*"'
_JSON_SCALAR = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null"
_JSON_ITEM = (
    rf'\{{{_JSON_WS}"charcName"{_JSON_WS}:{_JSON_WS}{_JSON_STRING}{_JSON_WS},{_JSON_WS}(?:'
    rf'"charcValues"{_JSON_WS}:{_JSON_WS}\[{_JSON_WS}(?:{_JSON_STRING}(?:{_JSON_WS},{_JSON_WS}{_JSON_STRING})*)?{_JSON_WS}\]'
    rf'|"value"{_JSON_WS}:{_JSON_WS}(?:{_JSON_STRING}|{_JSON_SCALAR})){_JSON_WS}\}}'
)
_SIMPLE_JSON_ROW = (
    rf"^{_JSON_WS}\[{_JSON_WS}(?:{_JSON_ITEM}(?:{_JSON_WS},{_JSON_WS}{_JSON_ITEM})*)?{_JSON_WS}\]{_JSON_WS}$"
)
# Arrow reads `value` as a string column, so a non-string scalar value is renamed and quoted:
# `"value": 1.5` -> `"value_json": "1.5"` (the grammar admits no other key, so this is unambiguous).
_VALUE_SCALAR = rf'"value"({_JSON_WS}:{_JSON_WS})({_JSON_SCALAR})'
_BULK_SCHEMA = pa.schema(
    [
        (
            "items",
            pa.list_(
                pa.struct(
                    [
                        ("charcName", pa.string()),
                        ("charcValues", pa.list_(pa.string())),
                        ("value", pa.string()),
                        ("value_json", pa.string()),
                    ]
                )
            ),
        )
    ]
)


class _LongParts(NamedTuple):
    """Long-table rows of some input rows: input position of each value, name, value; per row counts."""

    value_positions: np.ndarray
    names: pa.Array
    values: pa.Array
    row_positions: np.ndarray
    n_items: np.ndarray
    n_values: np.ndarray


def _bulk_eligible(json_texts: pa.Array) -> np.ndarray:
    """Rows whose JSON is in the simple grammar (see _parse_json_in_bulk)."""
    return _mask(pc.match_substring_regex(json_texts, _SIMPLE_JSON_ROW))


def _parse_json_in_bulk(json_texts: pa.Array, positions: np.ndarray) -> _LongParts:
    """Parse rows accepted by :func:`_bulk_eligible` with one Arrow JSON read, normalised like
    :func:`_normalise_items` (names and values stripped, empty values dropped, scalars canonical)."""
    quoted = _replace_where_matching(json_texts, _VALUE_SCALAR, '"value_json"\\1"\\2"')
    # The grammar allows newlines only between tokens, where a space means the same.
    one_line = _replace_where_matching(quoted, r"[\n\r]", " ")
    large = pa.large_string()
    lines = pc.binary_join_element_wise(
        pa.scalar('{"items":', large), one_line, pa.scalar("}\n", large), pa.scalar("", large)
    )
    longest = int(pc.max(pc.binary_length(lines)).as_py() or 0)
    # The character data of a string array is its strings back to back: the NDJSON document.
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    document = lines.buffers()[2][int(offsets[0]) : int(offsets[-1])]
    table = pa_json.read_json(
        pa.BufferReader(document),
        read_options=pa_json.ReadOptions(block_size=max(1 << 22, 2 * longest + 2)),
        parse_options=pa_json.ParseOptions(explicit_schema=_BULK_SCHEMA, unexpected_field_behavior="error"),
    )
    if table.num_rows != len(json_texts):
        raise ValueError(f"bulk JSON read gave {table.num_rows} rows for {len(json_texts)}")
    items_per_row = table.column("items").combine_chunks()
    n_items = pc.list_value_length(items_per_row).to_numpy(zero_copy_only=False).astype(np.int64)
    items = pc.list_flatten(items_per_row)
    item_rows = pc.list_parent_indices(items_per_row).to_numpy(zero_copy_only=False).astype(np.int64)
    names = pc.utf8_trim(items.field("charcName"), PYTHON_WHITESPACE)

    listed = items.field("charcValues")
    listed_values = pc.utf8_trim(pc.list_flatten(listed), PYTHON_WHITESPACE)
    listed_items = pc.list_parent_indices(listed).to_numpy(zero_copy_only=False).astype(np.int64)
    non_empty = _mask(pc.greater(pc.binary_length(listed_values), 0))
    listed_values, listed_items = listed_values.filter(pa.array(non_empty)), listed_items[non_empty]

    # Each item has exactly one of charcValues, value (a string) or value_json (a scalar's JSON).
    texts, scalar_json = items.field("value"), items.field("value_json")
    scalar_items = np.flatnonzero(_mask(pc.or_(texts.is_valid(), scalar_json.is_valid())))
    raw_scalars = list(
        zip(texts.take(pa.array(scalar_items)).to_pylist(), scalar_json.take(pa.array(scalar_items)).to_pylist())
    )
    canonical = {raw: canonical_value(raw[0] if raw[1] is None else json.loads(raw[1])) for raw in set(raw_scalars)}
    scalar_values = [canonical[raw] for raw in raw_scalars]
    has_value = np.array([value is not None for value in scalar_values], dtype=bool)
    scalar_items = scalar_items[has_value]
    scalar_values = pa.array([v for v in scalar_values if v is not None], type=listed_values.type)

    # An item has listed values or a scalar, never both: a stable sort by item restores text order.
    value_items = np.concatenate([listed_items, scalar_items])
    order = np.argsort(value_items, kind="stable")
    value_items = value_items[order]
    values = pa.concat_arrays([listed_values, scalar_values]).take(pa.array(order))
    value_rows = item_rows[value_items]
    return _LongParts(
        value_positions=positions[value_rows],
        names=names.take(pa.array(value_items)),
        values=values,
        row_positions=positions,
        n_items=n_items,
        n_values=np.bincount(value_rows, minlength=len(json_texts)),
    )


def _long_parts_of_items(parsed: list[tuple[int, list[dict]]]) -> _LongParts:
    """The same parts from per-cell parse results (input position, normalised items)."""
    value_positions, names, values, n_items, n_values = [], [], [], [], []
    for position, items in parsed:
        count = 0
        for item in items:
            for value in item["values"]:
                value_positions.append(position)
                names.append(item["name"])
                values.append(value)
                count += 1
        n_items.append(len(items))
        n_values.append(count)
    return _LongParts(
        value_positions=np.array(value_positions, dtype=np.int64),
        names=pa.array(names, type=pa.string()),
        values=pa.array(values, type=pa.string()),
        row_positions=np.array([position for position, _ in parsed], dtype=np.int64),
        n_items=np.array(n_items, dtype=np.int64),
        n_values=np.array(n_values, dtype=np.int64),
    )


def characteristics_table(
    nm: pd.Series, raw: pd.Series, max_bytes: int = DEFAULT_MAX_CHARACTERISTICS_BYTES
) -> CharacteristicsTable:
    """Parse a whole column: long table (nm, name, value), rejections (nm, reason, detail), parsed rows.

    Every input row ends in exactly one of ``parsed`` (its values, if any, in ``long``) or
    ``rejections``. Rows in the standard forms 1 and 2 are rewritten to JSON by vectorised
    regexes (only where that is provably exact); JSON in the dump's simple grammar is then read by
    one Arrow JSON read; anything else goes through :func:`parse_characteristics`, which records
    the reason if it fails.
    """
    if len(nm) != len(raw):
        raise ValueError(f"nm ({len(nm)} rows) and raw ({len(raw)} rows) differ in length")
    nm_values = nm.astype(str).to_numpy(dtype=object)
    raw_values = raw.to_numpy(dtype=object)
    n_rows = len(raw_values)

    decoded: list[str | None] = [None] * n_rows
    rejections: list[tuple[str, str, str]] = []
    pending: list[int] = []
    for position, cell in enumerate(raw_values):
        try:
            decoded[position] = _decode(cell, max_bytes).strip()
        except CharacteristicsParseError as error:
            rejections.append((nm_values[position], error.reason, error.detail))
        else:
            pending.append(position)

    parts: list[_LongParts] = []
    per_cell: list[int] = list(range(len(pending)))  # indices into `pending` the bulk path leaves
    json_texts: list[str | None] = [None] * len(pending)
    if pending:
        texts = pa.array([decoded[p] for p in pending], type=pa.large_string())
        form1_at, form1_json = _fast_unwrap_form1(texts)
        form2_at, form2_json = _fast_numpy_repr_to_json(texts)
        is_json = pc.or_(pc.starts_with(texts, "[{"), pc.starts_with(texts, "[]"))  # form 3 is JSON already
        form3_at = np.setdiff1d(np.flatnonzero(_mask(is_json)), np.concatenate([form1_at, form2_at]))
        json_at = np.concatenate([form1_at, form2_at, form3_at])
        order = np.argsort(json_at, kind="stable")
        json_at = json_at[order]
        json_array = pa.concat_arrays([form1_json, form2_json, texts.take(pa.array(form3_at))]).take(pa.array(order))

        eligible = _bulk_eligible(json_array)
        if eligible.any():
            try:
                parts.append(
                    _parse_json_in_bulk(json_array.filter(pa.array(eligible)), np.asarray(pending)[json_at[eligible]])
                )
            except (pa.ArrowException, ValueError):  # a safety net: the per-cell parser decides
                eligible[:] = False
        per_cell = np.setdiff1d(np.arange(len(pending)), json_at[eligible]).tolist()
        not_bulk = ~eligible
        for i, text in zip(json_at[not_bulk].tolist(), json_array.filter(pa.array(not_bulk)).to_pylist()):
            json_texts[i] = text

    parsed_items: list[tuple[int, list[dict]]] = []
    for i in per_cell:
        position, text = pending[i], json_texts[i]
        if text is not None:
            try:
                surrogate_escape = _SURROGATE_ESCAPE.search(text) is not None
                parsed_items.append((position, _normalise_items(json.loads(text), check_encoding=surrogate_escape)))
                continue
            except (ValueError, RecursionError, CharacteristicsParseError):
                pass  # the per-cell parser below gives the definitive answer and reason
        try:
            parsed_items.append((position, parse_characteristics(decoded[position], max_bytes)))
        except CharacteristicsParseError as error:
            rejections.append((nm_values[position], error.reason, error.detail))
    parts.append(_long_parts_of_items(parsed_items))

    nm_array = pa.array(nm_values, type=pa.large_string()) if n_rows else pa.array([], type=pa.large_string())
    value_positions = np.concatenate([part.value_positions for part in parts])
    value_order = np.argsort(value_positions, kind="stable")
    row_positions = np.concatenate([part.row_positions for part in parts])
    row_order = np.argsort(row_positions, kind="stable")

    string = pd.StringDtype("pyarrow", na_value=np.nan)

    def column(array: pa.Array) -> pd.api.extensions.ExtensionArray:
        return pd.array(array, dtype=string)

    long = pd.DataFrame(
        {
            "nm": column(nm_array.take(pa.array(value_positions[value_order]))),
            "name": column(
                pa.concat_arrays([part.names.cast(pa.large_string()) for part in parts]).take(pa.array(value_order))
            ),
            "value": column(
                pa.concat_arrays([part.values.cast(pa.large_string()) for part in parts]).take(pa.array(value_order))
            ),
        }
    )
    rejected = pd.DataFrame(rejections, columns=["nm", "reason", "detail"]).astype(
        {"nm": string, "reason": string, "detail": string}
    )
    parsed = pd.DataFrame(
        {
            "nm": column(nm_array.take(pa.array(row_positions[row_order]))),
            "n_items": np.concatenate([part.n_items for part in parts])[row_order],
            "n_values": np.concatenate([part.n_values for part in parts])[row_order],
        }
    ).astype({"n_items": "int64", "n_values": "int64"})
    return CharacteristicsTable(long=long, rejections=rejected, parsed=parsed)
