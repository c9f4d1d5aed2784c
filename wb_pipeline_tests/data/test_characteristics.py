"""Characteristics cells: the three stored forms, every malformed case, the column table, fuzzing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wb_pipeline.core.data.characteristics import (
    REJECTION_REASONS,
    CharacteristicsParseError,
    canonical_value,
    characteristics_table,
    parse_characteristics,
)

ITEMS = [
    {"charcName": "Пол", "charcValues": ["Женский"]},
    {"charcName": "Сезон", "charcValues": ["лето", "демисезон"]},
    {"charcName": "Вес товара", "value": 1.5},
    {"charcName": "Длина", "value": "12,5"},
    {"charcName": "Количество", "value": 2},
    {"charcName": "Состав", "charcValues": ["хлопок 95%", "эластан '5%'", 'a "b"', "back\\slash", "true"]},
    {"charcName": "Пусто", "charcValues": []},
    {"charcName": "Флаг", "isVariable": True, "value": None},
]
EXPECTED = [
    {"name": "Пол", "values": ["Женский"]},
    {"name": "Сезон", "values": ["лето", "демисезон"]},
    {"name": "Вес товара", "values": ["1.5"]},
    {"name": "Длина", "values": ["12.5"]},
    {"name": "Количество", "values": ["2"]},
    {"name": "Состав", "values": ["хлопок 95%", "эластан '5%'", 'a "b"', "back\\slash", "true"]},
    {"name": "Пусто", "values": []},
    {"name": "Флаг", "values": []},
]


def form1(items, ensure_ascii: bool = True) -> bytes:
    """Exactly how the dump stored form 1: a bytes repr of a bytes repr of JSON."""
    return str(str(json.dumps(items, ensure_ascii=ensure_ascii).encode()).encode()).encode()


def form2(items) -> bytes:
    """Exactly how the dump stored form 2: str() of a numpy object array, values as numpy arrays."""
    elements = [
        {**item, "charcValues": np.array(item["charcValues"], dtype=object)} if "charcValues" in item else item
        for item in items
    ]
    return str(np.array(elements, dtype=object)).encode()


def form3(items) -> bytes:
    return json.dumps(items, ensure_ascii=False).encode()


def reason_of(raw, **kwargs) -> str:
    with pytest.raises(CharacteristicsParseError) as caught:
        parse_characteristics(raw, **kwargs)
    assert caught.value.reason in REJECTION_REASONS
    return caught.value.reason


def test_form1_looks_like_the_dump_and_parses() -> None:
    raw = form1(ITEMS)
    assert raw.startswith(b"b'b\\'")
    assert parse_characteristics(raw) == EXPECTED
    assert parse_characteristics(form1(ITEMS, ensure_ascii=False)) == EXPECTED
    assert parse_characteristics(raw.decode()) == EXPECTED  # str input too


def test_form2_looks_like_the_dump_and_parses() -> None:
    raw = form2(ITEMS)
    assert b"array([" in raw and b"dtype=object)" in raw and b"}\n {" in raw
    assert parse_characteristics(raw) == EXPECTED


def test_form2_variants_numpy_prints() -> None:
    short = str(np.array([{"charcName": "a", "value": 1}, {"charcName": "b", "value": 2}], dtype=object))
    assert "} {" in short  # short dicts share a line: no newline between them
    assert parse_characteristics(short) == [{"name": "a", "values": ["1"]}, {"name": "b", "values": ["2"]}]
    wrapped = form2([{"charcName": "Цвет", "charcValues": [f"оттенок {i}" for i in range(40)]}])
    assert b"\n       " in wrapped  # numpy wrapped the value array over lines
    assert parse_characteristics(wrapped)[0]["values"] == [f"оттенок {i}" for i in range(40)]
    scalars = form2([{"charcName": "Вес", "value": np.float64(2.5)}, {"charcName": "Шт", "value": np.int64(3)}])
    assert b"np.float64(2.5)" in scalars
    assert parse_characteristics(scalars) == [{"name": "Вес", "values": ["2.5"]}, {"name": "Шт", "values": ["3"]}]
    strings = str(np.array([{"charcName": "a", "charcValues": np.array(["x", "y"])}], dtype=object))
    assert "dtype='<U1'" in strings
    assert parse_characteristics(strings) == [{"name": "a", "values": ["x", "y"]}]
    tricky = form2([{"charcName": "} {", "charcValues": ["array(", "dtype=object)", "nan"]}])
    assert parse_characteristics(tricky) == [{"name": "} {", "values": ["array(", "dtype=object)", "nan"]}]


def test_form3_plain_json_parses() -> None:
    assert parse_characteristics(form3(ITEMS)) == EXPECTED
    assert parse_characteristics(b"  []  ") == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, "1.5"),
        ("1,5", "1.5"),
        (" 12,50 ", "12.5"),
        (2.0, "2"),
        (3, "3"),
        ("-7", "-7"),
        ("100", "100"),
        ("12345678901234567890", "12345678901234567890"),
        ("abc", "abc"),
        ("  ", None),
        (None, None),
        (float("nan"), None),
        (True, "true"),
    ],
)
def test_canonical_value(value, expected) -> None:
    assert canonical_value(value) == expected


def test_code_in_a_cell_is_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"[__import__('os').system('touch {marker}')]",
        f"[{{'charcName': 'x', 'value': __import__('os').system('touch {marker}')}}]",
        f"b'b\\'[__import__(\"os\").system(\"touch {marker}\")]\\''",
        f"b'b\\'[1]\\'' + __import__('os').system('touch {marker}')",
    ]
    for payload in payloads:
        assert reason_of(payload.encode()) in {
            "unrecognised_form",
            "malformed_numpy_repr",
            "malformed_json",
            "malformed_bytes_literal",
        }
    assert not marker.exists()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (float("nan"), "empty"),
        (b"", "empty"),
        (b"   \n", "empty"),
        (12, "unsupported_type"),
        (b"\xff\xfe[]", "not_utf8"),
        ("[\ud800]", "not_utf8"),
        (b'[{"charcName": "\\ud800", "value": 1}]', "not_utf8"),
        (b"hello", "unrecognised_form"),
        (b'{"charcName": "a"}', "not_a_list"),
        (b"[1, 2]", "malformed_item"),
        (b'[{"charcName": 5}]', "malformed_item"),
        (b'[{"charcName": "a", "charcValues": "x"}]', "malformed_item"),
        (b'[{"charcName": "a", "value": {"k": 1}}]', "malformed_item"),
        (b'[{"charcName": "a", "charcValues": [[["deep"]]]}]', "malformed_item"),
        (b'[{"charcName": "a"', "malformed_json"),
        (b"[" * 100_000, "malformed_json"),
        (b"b'b\\'[{\"charcName\": \"a\"\\''", "malformed_json"),
        (b"b'unterminated", "malformed_bytes_literal"),
        (b"b'\\xff'", "not_utf8"),
        (
            b"b'b\\'b\\\\\\'b\\\\\\\\\\\\\\'b\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\'[]\\\\\\\\\\\\\\\\\\\\\\\\\\\\\\'\\\\\\\\\\\\\\'\\\\\\'\\''",
            "malformed_bytes_literal",
        ),
        (b"[{'charcName': 'a', 'charcValues': array(['x'], dtype=object)}", "malformed_numpy_repr"),
        (b"[{'charcName': 'a', 'value': (1, {2: [3]})}]", "malformed_item"),
    ],
)
def test_malformed_cells_are_rejected_with_a_reason(raw, reason) -> None:
    assert reason_of(raw) == reason


def test_truncated_cells() -> None:
    whole = form1(ITEMS)
    for cut in (len(whole) // 2, len(whole) - 3, 7):
        assert reason_of(whole[:cut]) in {"malformed_bytes_literal", "malformed_json"}
    assert reason_of(form2(ITEMS)[:-20]) == "malformed_numpy_repr"
    assert reason_of(form3(ITEMS)[:-5]) == "malformed_json"
    summarised = str(np.array([{"charcName": f"c{i}", "value": i} for i in range(1500)], dtype=object))
    assert " ... " in summarised  # numpy elided items: they cannot be recovered
    assert reason_of(summarised) == "truncated_numpy_repr"


def test_size_cap() -> None:
    big = form3([{"charcName": "a", "charcValues": ["x" * 1_100_000]}])
    assert reason_of(big) == "too_large"
    assert reason_of(big.decode()) == "too_large"
    assert parse_characteristics(big, max_bytes=2_000_000)[0]["values"][0] == "x" * 1_100_000
    assert reason_of(b"[]" * 10, max_bytes=5) == "too_large"


def test_characteristics_table_accounts_for_every_row() -> None:
    raw = pd.Series(
        [
            form1(ITEMS),
            form2(ITEMS[:2]),
            form3(ITEMS[:1]),
            None,
            b"[]",
            b"junk",
            form1(ITEMS, ensure_ascii=False),
            form1(ITEMS)[:-4],
            b"\xff",
        ],
        dtype=object,
    )
    nm = pd.Series([101, 102, 103, 104, 105, 106, 107, 108, 109])
    table = characteristics_table(nm, raw)
    assert len(table.parsed) + len(table.rejections) == len(raw)
    assert set(table.parsed["nm"]) | set(table.rejections["nm"]) == {str(n) for n in nm}
    assert dict(zip(table.rejections["nm"], table.rejections["reason"])) == {
        "104": "empty",
        "106": "unrecognised_form",
        "108": "malformed_bytes_literal",
        "109": "not_utf8",
    }
    assert table.parsed.set_index("nm").loc["105", ["n_items", "n_values"]].tolist() == [0, 0]
    assert table.parsed.set_index("nm").loc["101", ["n_items", "n_values"]].tolist() == [8, 11]
    assert list(table.long.columns) == ["nm", "name", "value"]
    first = table.long[table.long["nm"] == "101"]
    assert list(zip(first["name"], first["value"])) == [
        (item["name"], value) for item in EXPECTED for value in item["values"]
    ]
    # the fast (vectorised) path and the per-cell parser agree
    for nm_value in ("101", "107"):
        rows = table.long[table.long["nm"] == nm_value]
        assert [(n, v) for n, v in zip(rows["name"], rows["value"])] == [
            (item["name"], value) for item in parse_characteristics(form1(ITEMS)) for value in item["values"]
        ]
    assert set(table.long.loc[table.long["nm"] == "102", "value"]) == {"Женский", "лето", "демисезон"}


def test_characteristics_table_needs_aligned_inputs() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        characteristics_table(pd.Series(["1"]), pd.Series([b"[]", b"[]"]))


def test_characteristics_table_empty_input() -> None:
    table = characteristics_table(pd.Series([], dtype=str), pd.Series([], dtype=object))
    assert table.long.empty and table.rejections.empty and table.parsed.empty


item_strategy = st.fixed_dictionaries(
    {"charcName": st.text(max_size=10)},
    optional={
        "charcValues": st.lists(st.text(max_size=10), max_size=3),
        "value": st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)),
    },
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.none(),
        st.lists(item_strategy, max_size=3).map(form1),
        st.lists(item_strategy, max_size=3).map(lambda items: form1(items)[: len(form1(items)) // 2]),
    )
)
def test_parse_returns_a_list_or_raises_the_parse_error(raw) -> None:
    try:
        items = parse_characteristics(raw)
    except CharacteristicsParseError as error:
        assert error.reason in REJECTION_REASONS
    else:
        assert isinstance(items, list)
        for item in items:
            assert isinstance(item["name"], str)
            assert all(isinstance(value, str) and value for value in item["values"])


@FUZZ
@given(st.lists(item_strategy, max_size=4), st.sampled_from([form1, form2, form3]))
def test_every_form_round_trips(items, form) -> None:
    expected = [
        {
            "name": item["charcName"].strip(),
            "values": [v.strip() for v in item["charcValues"] if v.strip()]
            if item.get("charcValues") is not None
            else [v for v in [canonical_value(item.get("value"))] if v is not None],
        }
        for item in items
    ]
    assert parse_characteristics(form(items)) == expected
    table = characteristics_table(pd.Series(["1"]), pd.Series([form(items)], dtype=object))
    assert table.rejections.empty
    assert table.long["value"].tolist() == [v for item in expected for v in item["values"]]


TRICKY_FORM2_ITEMS = [
    [
        {"charcName": "Флаг", "value": True},
        {"charcName": "Нет", "value": None},
        {"charcName": "x", "value": float("nan")},
    ],
    [{"charcName": "} {", "charcValues": ["True", "None", "nan", "inf", "array(", ", dtype=object)", "}\n {"]}],
    [{"charcName": "a", "charcValues": ["it's", 'say "hi"', "back\\slash"]}, {"charcName": "b", "value": 1}],
    [
        {"charcName": "Длина", "value": "12,5"},
        {"charcName": "Вес", "value": 0.25},
        {"charcName": "Пусто", "charcValues": []},
    ],
    [{"charcName": "Пол", "charcValues": ["Женский", "Унисекс"]}] * 3,
]


@pytest.mark.parametrize("items", TRICKY_FORM2_ITEMS)
def test_column_fast_paths_agree_with_the_per_cell_parser(items) -> None:
    cells = [form1(items), form2(items), form3(items), form1(items, ensure_ascii=False)]
    table = characteristics_table(pd.Series(range(len(cells))), pd.Series(cells, dtype=object))
    assert table.rejections.empty
    for position, cell in enumerate(cells):
        rows = table.long[table.long["nm"] == str(position)]
        expected = [(item["name"], value) for item in parse_characteristics(cell) for value in item["values"]]
        assert list(zip(rows["name"], rows["value"])) == expected
    assert parse_characteristics(cells[1]) == parse_characteristics(cells[2])


# --- the bulk (Arrow JSON) path gives exactly the per-cell parser's result ---------------------


def _table_rows(table) -> tuple[list, list]:
    long = list(zip(table.long["nm"], table.long["name"], table.long["value"]))
    parsed = list(zip(table.parsed["nm"], table.parsed["n_items"], table.parsed["n_values"]))
    return long, parsed


def _per_cell_rows(cells) -> tuple[list, list]:
    long, parsed = [], []
    for position, cell in enumerate(cells):
        try:
            items = parse_characteristics(cell)
        except CharacteristicsParseError:
            continue
        long += [(str(position), item["name"], value) for item in items for value in item["values"]]
        parsed.append((str(position), len(items), sum(len(item["values"]) for item in items)))
    return long, parsed


def _bulk_takes(text: str) -> bool:
    import pyarrow as pa

    from wb_pipeline.core.data.characteristics import _bulk_eligible

    return bool(_bulk_eligible(pa.array([text], type=pa.large_string()))[0])


bulk_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**25), 10**25),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=" 0123456789,.-e\u00a0x", max_size=6),
)
bulk_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8) | st.text(
    alphabet=' \t\n\\"/\x00\x1f\u00a0\u2028\ue001aЖ', max_size=6
)
bulk_item = st.one_of(
    st.fixed_dictionaries({"charcName": bulk_text, "charcValues": st.lists(bulk_text, max_size=3)}),
    st.fixed_dictionaries({"charcName": bulk_text, "value": bulk_scalar}),
)
json_style = st.sampled_from([{}, {"ensure_ascii": False}, {"indent": 1}, {"separators": (",", ":")}])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(bulk_item, max_size=4), json_style), min_size=1, max_size=6))
def test_bulk_json_path_equals_the_per_cell_parser(rows) -> None:
    cells = [json.dumps(items, **style).encode() for items, style in rows]
    table = characteristics_table(pd.Series(range(len(cells))), pd.Series(cells, dtype=object))
    assert _table_rows(table) == _per_cell_rows(cells)
    assert table.rejections.empty


EDGE_JSON_CELLS = [
    '[{"charcName": "a", "value": 1E400}, {"charcName": "b", "value": -0}, {"charcName": "c", "value": 1.0}]',
    '[{"charcName": "d", "value": 0.1000000000000000055511151231257827}, {"charcName": "e", "value": 12345678901234567890123}]',  # noqa: E501
    '[{"charcName": "f", "value": 2.5e-3}, {"charcName": "g", "value": true}, {"charcName": "h", "value": null}]',
    '[{"charcName": "value", "value": "value"}, {"charcName": " \\u00a0x ", "value": " 1,5 "}]',
    '[{"charcName": "i", "charcValues": ["\\u0000", "\\/", " \\t ", "\\u00a0y\\u2028", "\\"value\\": 5"]}]',
    '[\n  {"charcName": "j",\n   "charcValues": ["k"]}\n]',
    "[]",
]


@pytest.mark.parametrize("cell", EDGE_JSON_CELLS)
def test_bulk_json_path_edge_cells(cell) -> None:
    assert _bulk_takes(cell)  # these exercise the bulk path, not the fallback
    cells = [cell.encode(), cell.encode()]
    table = characteristics_table(pd.Series(range(2)), pd.Series(cells, dtype=object))
    assert _table_rows(table) == _per_cell_rows(cells)


@pytest.mark.parametrize(
    "cell",
    [
        '[{"charcValues": ["x"], "charcName": "a"}]',  # other key order
        '[{"charcName": "a", "value": 1, "value": "2"}]',  # duplicate key: json.loads keeps the last
        '[{"charcName": "a", "charcValues": ["x", 5, null]}]',  # non-string values
        '[{"charcName": "a", "charcValues": null}]',
        '[{"charcName": "\\ud83d\\ude00", "charcValues": ["\\ud800"]}]',  # surrogate escapes
    ],
)
def test_cells_outside_the_bulk_grammar_still_match_the_per_cell_parser(cell) -> None:
    assert not _bulk_takes(cell)
    cells = [cell.encode(), b'[{"charcName": "ok", "value": 3}]']
    table = characteristics_table(pd.Series(range(2)), pd.Series(cells, dtype=object))
    assert _table_rows(table) == _per_cell_rows(cells)
    assert list(table.rejections["nm"]) == [
        str(i) for i, c in enumerate(cells) if c.startswith(b'[{"charcName": "\\ud83d')
    ]


def test_a_failing_bulk_read_falls_back_to_the_per_cell_parser(monkeypatch) -> None:
    import pyarrow as pa

    from wb_pipeline.core.data import characteristics

    def broken_read(*args, **kwargs):
        raise pa.ArrowInvalid("JSON parse error (simulated)")

    monkeypatch.setattr(characteristics.pa_json, "read_json", broken_read)
    cells = [form3(ITEMS[:5]), b"not json", form1(ITEMS), form2(ITEMS)]
    table = characteristics_table(pd.Series(range(len(cells))), pd.Series(cells, dtype=object))
    assert _table_rows(table) == _per_cell_rows(cells)
    assert table.rejections["nm"].tolist() == ["1"]
