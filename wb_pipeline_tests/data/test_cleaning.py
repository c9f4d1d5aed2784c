import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wb_pipeline.core.data import cleaning
from wb_pipeline.core.data.cleaning import CleaningConfig, clean_products


def _index(nms, reason=None, decodable=True, empty_detail=None):
    return pd.DataFrame(
        {
            "nm": nms,
            "decodable": decodable,
            "is_empty": reason == "empty",
            "reason": reason,
            "empty_detail": empty_detail,
        }
    )


def _raw(rows):
    return pd.DataFrame(rows, columns=["nm", "title", "description"])


def test_rules_table():
    raw = _raw(
        [
            ("1", "Платье летнее", "Лёгкое платье"),  # clean
            ("2", None, None),  # both missing
            ("3", "", "   "),  # both blank
            ("4", None, "одно два три четыре пять шесть семь восемь девять десять одиннадцать"),  # title filled
            ("5", "Кружка", None),  # description filled from title
            ("6", "ab", "описание"),  # title too short
            ("7", "Кружка", "x"),  # missing image
            ("8", "Кружка", "x"),  # empty image
            ("9", "Кружка", "x"),  # undecodable image
            ("1", "Дубль", "x"),  # duplicate nm
            (None, "Без nm", "x"),  # missing nm
        ]
    )
    index = pd.concat(
        [
            _index(["1", "2", "3", "4", "5", "6"]),
            _index(["8"], reason="empty", empty_detail="near_uniform: pixel std 0.4 < 2.0"),
            _index(["9"], reason="corrupt", decodable=False),
        ]
    )
    result = clean_products({"train": raw}, index)
    clean = result.clean.set_index("nm")
    assert sorted(clean.index) == ["1", "4", "5"]
    assert clean.loc["4", "title"] == "одно два три четыре пять шесть семь восемь девять десять"
    assert clean.loc["5", "description"] == "Кружка"
    by_nm = result.rejected.groupby(result.rejected["nm"].fillna("<none>"))["reason"].apply(list).to_dict()
    assert by_nm == {
        "<none>": [cleaning.REJECT_MISSING_NM],
        "1": [cleaning.REJECT_DUPLICATE_NM],
        "2": [cleaning.REJECT_NO_TEXT],
        "3": [cleaning.REJECT_NO_TEXT],
        "6": [cleaning.REJECT_TITLE_TOO_SHORT],
        "7": [cleaning.REJECT_MISSING_IMAGE],
        "8": [cleaning.REJECT_EMPTY_IMAGE],
        "9": [cleaning.REJECT_UNDECODABLE_IMAGE],
    }
    assert len(result.clean) + len(result.rejected) == len(raw)
    undecodable = result.rejected.set_index("nm").loc["9", "detail"]
    assert undecodable == "corrupt"
    # an empty image's detail names the rule of the content check that fired
    assert result.rejected.set_index("nm").loc["8", "detail"] == "near_uniform: pixel std 0.4 < 2.0"


def test_duplicate_nm_across_splits_rejected_in_later_split():
    train = _raw([("1", "Платье", "d")])
    test = _raw([("1", "Платье", "d"), ("2", "Юбка", "d")])
    result = clean_products({"train": train, "test": test}, _index(["1", "2"]))
    assert result.clean[["nm", "split"]].values.tolist() == [["1", "train"], ["2", "test"]]
    assert result.rejected[["nm", "split", "reason"]].values.tolist() == [["1", "test", cleaning.REJECT_DUPLICATE_NM]]


def test_non_utf8_text_bytes_rejected_with_reason():
    raw = pd.DataFrame(
        {"nm": ["1", "2"], "title": [b"\xff\xfe bad", "Кружка"], "description": ["d", b"\xd0\x9a\xd1\x80"]}
    )
    result = clean_products({"test": raw}, _index(["1", "2"]))
    assert result.rejected["reason"].tolist() == [cleaning.REJECT_TEXT_NOT_UTF8]
    assert result.clean["description"].tolist() == ["Кр"]


def test_config_thresholds_are_honoured():
    raw = _raw([("1", "abcd", "описание товара")])
    strict = clean_products({"train": raw}, _index(["1"]), CleaningConfig(min_title_chars=5))
    assert strict.rejected["reason"].tolist() == [cleaning.REJECT_TITLE_TOO_SHORT]
    no_image_needed = clean_products({"train": _raw([("9", "Кружка", "d")])}, None, CleaningConfig(require_image=False))
    assert no_image_needed.clean["nm"].tolist() == ["9"]


def test_require_image_without_index_is_a_clear_error():
    with pytest.raises(ValueError, match="image index"):
        clean_products({"train": _raw([("1", "Кружка", "d")])}, None)


def test_megabyte_description_survives():
    raw = _raw([("1", "Кружка", "слово " * 200_000)])
    result = clean_products({"train": raw}, _index(["1"]))
    assert len(result.clean) == 1 and len(result.clean.loc[0, "description"]) > 1_000_000


def test_python_whitespace_is_exactly_what_str_strip_removes():
    import sys

    every = "".join(chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace())
    assert cleaning.PYTHON_WHITESPACE == every


def test_duplicates_within_and_across_three_splits_keep_the_first():
    a = _raw([("1", "Платье", "d"), ("1", "Платье", "d"), (None, "Без nm", "d")])
    b = _raw([("2", "Юбка", "d"), (None, "Без nm", "d"), ("1", "Платье", "d")])
    c = _raw([("2", "Юбка", "d"), ("3", "Шарф", "d")])
    result = clean_products({"a": a, "b": b, "c": c}, None, CleaningConfig(require_image=False))
    assert result.clean[["nm", "split"]].values.tolist() == [["1", "a"], ["2", "b"], ["3", "c"]]
    rejected = result.rejected.fillna({"nm": "<none>"})[["nm", "split", "reason"]].values.tolist()
    assert rejected == [
        ["1", "a", cleaning.REJECT_DUPLICATE_NM],
        ["<none>", "a", cleaning.REJECT_MISSING_NM],
        ["<none>", "b", cleaning.REJECT_MISSING_NM],
        ["1", "b", cleaning.REJECT_DUPLICATE_NM],
        ["2", "c", cleaning.REJECT_DUPLICATE_NM],
    ]


_cells = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.text(alphabet=" \t\n\x0b\x1c\x85\xa0\u2028\u3000\u200baЖ", max_size=6),
    st.text(max_size=6),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_cells, max_size=8), st.booleans())
def test_arrow_text_path_equals_the_per_cell_rules(cells, as_str_dtype):
    values = pd.Series(cells, dtype="str" if as_str_dtype else object, index=range(3, 3 + len(cells)))
    text, bad = cleaning._as_text(values)
    expected_text, expected_bad = cleaning._as_text_per_cell(values)
    assert text.isna().tolist() == expected_text.isna().tolist()
    assert text.dropna().tolist() == expected_text.dropna().tolist()
    assert text.index.equals(values.index) and not bad.any() and not expected_bad.any()


def test_lone_surrogate_text_is_rejected_not_a_crash():
    raw = pd.DataFrame(
        {"nm": ["1", "2"], "title": ["Кружка \udc80", "Кружка"], "description": ["d", "d"]}, dtype=object
    )
    result = clean_products({"test": raw}, _index(["1", "2"]))
    assert result.rejected[["nm", "reason"]].values.tolist() == [["1", cleaning.REJECT_TEXT_NOT_UTF8]]
    assert result.clean["nm"].tolist() == ["2"]
