"""Text preprocessing: the notebook's regexes, tokenisation, filters and caps; totality (fuzzed)."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wb_pipeline.core.text.preprocessing import TextPreprocessingConfig, normalize_raw_text, preprocess_text


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
    texts = pd.Series(
        ["Слово", None, "", float("nan"), b"\xd0\xbc\xd0\xb8\xd1\x80 \xff", 12, "a\ud800b"], index=list("abcdefg")
    )
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

    from wb_pipeline.core.text.preprocessing import tokenize

    tokens = tokenize(pa.array(texts, type=pa.large_string())).to_pylist()
    assert tokens == [reference_tokens(text) for text in texts]


# --- the fast paths agree with the straightforward definitions --------------------------------

FUZZ_SLOW = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

tricky_text = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet="аБ вXх-.,5٣ΣςİK\u00a0\u2028\t\x0b\x00\x85\u3000  <>&;/!pb#x2FЁ\u00ad\u200b", max_size=40),
    st.lists(
        st.sampled_from(
            [
                "<p>",
                "</b>",
                "<!-- c -->",
                "&nbsp;",
                "&#x41;",
                "&amp",
                "5",
                "кг",
                "20х30",
                " x ",
                "10\u00a0x\u00a020",
                "  ",
                "\n",
                "Слово",
                "и",
                "не",
                "-",
                "1,5",
                "Wi-Fi",
                "\u200b",
            ]
        ),
        max_size=12,
    ).map("".join),
)


def reference_preprocess(text: str | None, kind: str, config: TextPreprocessingConfig) -> str:
    """Removal regex, lowercase and the token grammar on the WHOLE text, then the filters in Python."""
    import unicodedata

    import pyarrow as pa
    import pyarrow.compute as pc

    from wb_pipeline.core.text.preprocessing import tokenize

    array = pc.replace_substring_regex(pa.array([text or ""], type=pa.large_string()), config.removal_pattern, "")
    excluded = config.excluded_words(kind)
    kept = [
        token
        for token in tokenize(pc.utf8_lower(array)).to_pylist()[0]
        if token not in excluded
        and not all(unicodedata.category(ch).startswith("N") for ch in token)
        and len(token) <= config.max_word_len
    ]
    return " ".join(kept[: config.max_words(kind)])


@FUZZ_SLOW
@given(st.lists(tricky_text, max_size=8), st.sampled_from(["title", "description"]), st.integers(0, 4))
def test_word_by_word_preprocessing_equals_whole_text_tokenisation(texts, kind, cap) -> None:
    # The pipeline tokenizes each distinct whitespace-separated word once; that must equal
    # lowercasing and tokenizing each text as a whole.
    config = TextPreprocessingConfig(strip_html=False, title_max_words=cap, description_max_words=cap, max_word_len=5)
    out = preprocess_text(pd.Series(texts, dtype=object), kind, config).tolist()
    assert out == [reference_preprocess(text, kind, config) for text in texts]


@FUZZ
@given(st.lists(tricky_text, max_size=8))
def test_whitespace_collapse_equals_replacing_every_run(texts) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    markup_free = [
        (text or "").replace("<", "").replace("&", "").replace("\u00ad", "").replace("\u200b", "") for text in texts
    ]
    every_run = pc.replace_substring_regex(pa.array(markup_free, type=pa.large_string()), r"[\s\p{Z}\p{Cc}]+", " ")
    assert normalize_raw_text(pd.Series(markup_free)).tolist() == pc.utf8_trim(every_run, " ").to_pylist()


@FUZZ_SLOW
@given(st.lists(tricky_text, max_size=8), st.sampled_from(["title", "description"]), st.booleans())
def test_preprocess_and_normalize_equals_the_two_separate_calls(texts, kind, strip_html) -> None:
    from wb_pipeline.core.text.preprocessing import preprocess_and_normalize

    config = TextPreprocessingConfig(strip_html=strip_html)
    series = pd.Series(texts, dtype=object, index=range(10, 10 + len(texts)))
    preprocessed, natural = preprocess_and_normalize(series, kind, config)
    pd.testing.assert_series_equal(preprocessed, preprocess_text(series, kind, config))
    pd.testing.assert_series_equal(natural, normalize_raw_text(series))


def test_duplicate_texts_get_the_same_output_at_every_row() -> None:
    texts = pd.Series(["<b>Платье</b> 5кг", None, "<b>Платье</b> 5кг", "", "Юбка"], index=[5, 3, 9, 1, 0])
    out = preprocess_text(texts, "title")
    assert out.tolist() == ["платье", "", "платье", "", "юбка"]
    assert out.index.tolist() == [5, 3, 9, 1, 0]


@FUZZ_SLOW
@given(st.lists(st.tuples(tricky_text, tricky_text), min_size=1, max_size=6), st.booleans())
def test_build_product_text_equals_its_definition(rows, strip_html) -> None:
    from wb_pipeline.core.text.product_text import PREPROCESSED_TITLE_FILL_WORDS, build_product_text

    config = TextPreprocessingConfig(strip_html=strip_html, title_max_words=3)
    clean = pd.DataFrame(
        {
            "nm": [str(i) for i in range(len(rows))],
            "split": "train",
            "title": [title for title, _ in rows],
            "description": [description for _, description in rows],
        },
        index=range(7, 7 + len(rows)),
    )
    out = build_product_text(clean, config)
    title = preprocess_text(clean["title"], "title", config).tolist()
    description = preprocess_text(clean["description"], "description", config).tolist()
    description = [d if d else t for t, d in zip(title, description)]
    title = [t if t else " ".join(d.split()[:PREPROCESSED_TITLE_FILL_WORDS]) for t, d in zip(title, description)]
    assert out["title_preprocessed"].tolist() == title
    assert out["description_preprocessed"].tolist() == description
    assert out["title_natural"].tolist() == normalize_raw_text(clean["title"]).tolist()
    assert out["description_natural"].tolist() == normalize_raw_text(clean["description"]).tolist()
    assert out["nm"].tolist() == clean["nm"].tolist()
    natural = build_product_text(clean, config, natural_only=True)  # a card's: the natural columns alone
    assert list(natural.columns) == ["nm", "split", "title_natural", "description_natural"]
    pd.testing.assert_frame_equal(natural, out[list(natural.columns)])
