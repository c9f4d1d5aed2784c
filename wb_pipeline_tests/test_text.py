"""Text preprocessing: the notebook's regexes, tokenisation, filters and caps; totality (fuzzed)."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wb_pipeline.core.text import TextPreprocessingConfig, normalize_raw_text, preprocess_text


def one(text, kind="title", config=None) -> str:
    return preprocess_text(pd.Series([text]), kind, config).iloc[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the notebook's removal regexes (before lowercasing)
        ("коробка 20х30 синяя", "коробка синяя"),
        ("коробка 20X30 синяя", "коробка синяя"),
        ("коробка 20 x 30 синяя", "коробка синяя"),
        ("крем 50мл увлажняющий", "крем увлажняющий"),
        ("набор 10шт ручек", "набор ручек"),
        ("рис 2кг", "рис"),
        # units and pure numbers are dropped as tokens too
        ("рис 2 кг 500 г", "рис"),
        ("лента 5 м 3 см 1 штук", "лента"),
        # lowercasing, punctuation dropped (ASCII and typographic)
        ("Платье «Лето», новинка!!! — хит...", "платье лето новинка хит"),
        # joiners stay inside tokens
        ("Кто-то купил Wi-Fi роутер, размер 42-44", "кто-то купил wi-fi роутер размер 42-44"),
        ("объём 1,5 литра и 3.5 дюйма", "объём 1,5 литра и 3.5 дюйма"),
        ("т.е. и т.д.", "т е и т д"),
        ("a-b-c 1.2.3", "a-b-c 1.2.3"),
        # a hyphen or dot at a word edge separates
        ("-слово- конец.", "слово конец"),
        # words longer than 15 characters are dropped, 15 kept
        ("абвгдежзийклмно абвгдежзийклмноп", "абвгдежзийклмно"),
        # HTML markup and entities never become words
        ("<p>Мягкий&nbsp;плед</p><br/>&quot;уют&quot;", "мягкий плед уют"),
        ("цена < 5 и > 3", "цена и"),
    ],
)
def test_title_rules(text: str, expected: str) -> None:
    assert one(text, "title") == expected


def test_description_drops_stop_words_but_keeps_ne_and_dla() -> None:
    text = "Это не игрушка для детей и она в коробке"
    assert one(text, "title") == "это не игрушка для детей и она в коробке"
    assert one(text, "description") == "не игрушка для детей коробке"


def test_word_caps_apply_after_filtering() -> None:
    words = " ".join(f"слово{chr(0x430 + i % 32)}" for i in range(400))
    noisy = "и 5 кг . " + words  # dropped tokens do not count against the cap
    title, description = one(noisy, "title"), one(noisy, "description")
    assert len(title.split()) == 60 and title.split()[0] == "и"
    assert len(description.split()) == 300 and description.split()[0] == "словоа"


def test_config_changes_caps_units_and_kept_words() -> None:
    config = TextPreprocessingConfig(title_max_words=2, max_word_len=4, units=("банка",), kept_stop_words=("и",))
    assert one("одна банка и две штуки", "title", config) == "одна и"
    assert one("это и то", "description", config) == "и"
    with pytest.raises(ValueError, match="title_max_words"):
        TextPreprocessingConfig(title_max_words=-1)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="'title' or 'description'"):
        preprocess_text(pd.Series(["x"]), "body")  # type: ignore[arg-type]


def test_missing_and_odd_values_are_total_and_index_is_kept() -> None:
    texts = pd.Series(["Слово", None, "", float("nan"), b"\xd0\xbc\xd0\xb8\xd1\x80 \xff", 12, "a\ud800b"], index=list("abcdefg"))
    out = preprocess_text(texts, "description")
    assert out.index.tolist() == list("abcdefg")
    assert out.tolist() == ["слово", "", "", "", "мир", "", "a b"]
    natural = normalize_raw_text(texts)
    assert natural.tolist()[:5] == ["Слово", "", "", "", "мир \ufffd"]


def test_normalize_raw_text_keeps_natural_text() -> None:
    texts = pd.Series(["  <b>Платье</b>&nbsp;&laquo;Лето&raquo;\n\n 2х3 см, <!-- c -->для НЕ\u200bё  "])
    assert normalize_raw_text(texts).iloc[0] == "Платье «Лето» 2х3 см, для НЕё"


def test_megabyte_text_is_fine() -> None:
    big = ("слово " * 200_000)[:1_000_000] + "x" * 1_000_000
    out = preprocess_text(pd.Series([big]), "description")
    assert out.iloc[0].split() == ["слово"] * 300
    assert normalize_raw_text(pd.Series([big + "  "])).iloc[0] == big


def test_multi_chunk_arrow_strings() -> None:
    texts = pd.concat([pd.Series(["Первый-второй"], dtype="str"), pd.Series([None, "ТРЕТИЙ"], dtype="str")])
    assert preprocess_text(texts, "title").tolist() == ["первый-второй", "", "третий"]
    assert normalize_raw_text(texts).tolist() == ["Первый-второй", "", "ТРЕТИЙ"]


def test_empty_series() -> None:
    assert preprocess_text(pd.Series([], dtype=object), "title").empty
    assert normalize_raw_text(pd.Series([], dtype=object)).empty


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
any_text = st.one_of(st.none(), st.text(), st.text(alphabet="аб вx-.,5Х<>&;!"))


@FUZZ
@given(st.lists(any_text, max_size=8), st.sampled_from(["title", "description"]), st.integers(0, 5), st.integers(1, 6))
def test_preprocess_text_is_total_and_respects_caps(texts, kind, cap, max_len) -> None:
    config = TextPreprocessingConfig(title_max_words=cap, description_max_words=cap, max_word_len=max_len)
    out = preprocess_text(pd.Series(texts, dtype=object), kind, config)
    assert len(out) == len(texts)
    for value in out:
        assert isinstance(value, str)
        words = value.split(" ") if value else []
        assert len(words) <= cap
        assert all(0 < len(word) <= max_len for word in words)
        assert value == value.lower()


@FUZZ
@given(st.lists(any_text, max_size=8))
def test_normalize_raw_text_is_total(texts) -> None:
    out = normalize_raw_text(pd.Series(texts, dtype=object))
    assert len(out) == len(texts)
    for value in out:
        assert isinstance(value, str)
        assert value == value.strip() and "  " not in value and "\n" not in value


def reference_tokens(text: str) -> list[str]:
    """The documented tokenisation, spelled out character by character (slow, for comparison)."""

    def is_word(ch: str) -> bool:
        return ch.isalnum()  # the alphabet below has no combining marks

    tokens, current = [], ""
    for i, ch in enumerate(text):
        before, after = text[i - 1] if i else "", text[i + 1] if i + 1 < len(text) else ""
        joins = (ch == "-" and is_word(before) and is_word(after)) or (
            ch in ".," and before.isnumeric() and after.isnumeric()
        )
        if is_word(ch) or joins:
            current += ch
        else:
            if current:
                tokens.append(current)
            current = ""
    return tokens + ([current] if current else [])


@FUZZ
@given(st.lists(st.text(alphabet="ab5٣Ж -.,_!\n\t\u00a0«»—", max_size=30), max_size=6))
def test_tokenize_matches_the_documented_grammar(texts) -> None:
    import pyarrow as pa

    from wb_pipeline.core.text import tokenize

    tokens = tokenize(pa.array(texts, type=pa.large_string())).to_pylist()
    assert tokens == [reference_tokens(text) for text in texts]
