"""Label rules on real-looking raw values, and the vectorised derivation over the long table."""

from __future__ import annotations

import pandas as pd
import pytest

from wb_pipeline.core.data.schema import DERIVED_LABEL_COLUMNS, label_vocabularies
from wb_pipeline.core.labels.rules import (
    LabelRulesConfig,
    age_restrictions_label,
    derive_labels,
    fragility_label,
    season_label,
    sex_label,
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["0+"], None),  # WB's placeholder: says nothing
        (["0 +"], None),
        (["3+"], "для детей"),
        (["6+"], "для детей"),
        (["12+"], "для подростков"),
        (["16+"], "для подростков"),
        (["18+"], "для взрослых"),
        (["от 3 лет"], "для детей"),
        (["от 3 до 12 лет"], "для детей"),  # the notebook sorted strings and said 'для подростков'
        (["от 14 до 99 лет"], "для подростков"),
        (["1+"], "для малышей"),
        (["с рождения"], "для малышей"),
        (["от 6 месяцев"], "для малышей"),  # 'мес' wins over the number
        (["для малышей"], "для малышей"),
        (["без ограничений"], "для всех возрастов"),
        (["Для всех"], "для всех возрастов"),
        (["любой"], "для всех возрастов"),
        (["для детей"], "для детей"),
        (["школьникам"], "для детей"),
        (["для взрослых"], "для взрослых"),
        (["для мужчин"], "для взрослых"),
        (["подросткам"], "для подростков"),
        (["что-то непонятное"], "для всех возрастов"),  # the notebook's catch-all
        (["0+", "12+"], "для подростков"),  # the placeholder is dropped from a list
        (["3+", "18+"], "для детей"),  # a list is joined: the smallest age wins
        ([], None),
        (["  "], None),
        ("3+", "для детей"),  # a bare string is one value
        (["9" * 50], "для взрослых"),
    ],
)
def test_age_restrictions(values, expected) -> None:
    assert age_restrictions_label(values) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["Женский"], "для женщин"),
        (["Women"], "для женщин"),
        (["женский "], "для женщин"),
        (["Мужской"], "для мужчин"),
        (["Men"], "для мужчин"),
        (["Детский"], "для детей"),
        (["детский"], "для детей"),
        (["Девочки"], "для девочек"),
        (["Girl"], "для девочек"),
        (["Мальчики"], "для мальчиков"),
        (["Boy"], "для мальчиков"),
        (["Унисекс"], None),
        (["Женский", "Унисекс"], None),
        (["Женский", "Women"], "для женщин"),  # agreeing spellings
        (["Женский", "Мужской"], None),  # conflicting
        (["Девочки", "Мальчики"], None),
        (["Женский", "неизвестно"], "для женщин"),  # unknown spellings do not vote
        (["неизвестно"], None),
        ([], None),
    ],
)
def test_sex(values, expected) -> None:
    assert sex_label(values) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["лето"], "лето"),
        (["Зима"], "зима"),
        (["демисезон"], "демисезон"),
        (["круглогодичный"], "круглогодичный"),
        (["круглогодичный", "лето"], "лето"),  # the notebook's bug returned the first element
        (["демисезон", "зима"], "зима"),
        (["круглогодичный", "демисезон"], "демисезон"),
        (["зима", "лето", "демисезон"], "лето"),
        (["весна"], None),
        (["весна", "круглогодичный"], "круглогодичный"),
        ([], None),
    ],
)
def test_season_priority(values, expected) -> None:
    assert season_label(values) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["да"], "хрупкий"),
        (["Да"], "хрупкий"),
        (["хрупкое"], "хрупкий"),
        (["Хрупкий"], "хрупкий"),
        (["не бросать"], "хрупкий"),
        (["нет"], "не хрупкий"),
        (["не хрупкое"], "не хрупкий"),
        (["прочный"], "не хрупкий"),
        (["надёжная упаковка"], "не хрупкий"),
        (["стекло"], "не хрупкий"),  # the notebook's catch-all
        (["да", "хрупкое"], "хрупкий"),  # a list that agrees
        (["да", "нет"], None),  # a conflicting list
        ([], None),
    ],
)
def test_fragility(values, expected) -> None:
    assert fragility_label(values) == expected


def test_config_changes_rules_and_is_validated() -> None:
    config = LabelRulesConfig(
        age_adult_min=21,
        fragility_fallback=None,
        season_priority=("зима", "лето"),
        sex_values={"Female": "для женщин"},
    )
    assert age_restrictions_label(["18+"], config) == "для подростков"
    assert fragility_label(["стекло"], config) is None
    assert season_label(["лето", "зима"], config) == "зима"
    assert sex_label(["female"], config) == "для женщин" and sex_label(["Женский"], config) is None
    with pytest.raises(ValueError, match="outside the vocabulary"):
        LabelRulesConfig(sex_values={"x": "для котов"})
    with pytest.raises(ValueError, match="age_child_min"):
        LabelRulesConfig(age_teen_min=30)
    with pytest.raises(ValueError, match="not a valid regex"):
        LabelRulesConfig(age_teen_pattern="(")
    assert hash(LabelRulesConfig()) == hash(LabelRulesConfig())


def test_derive_labels_table() -> None:
    long = pd.DataFrame(
        [
            ("1", "Пол", "Women"),
            ("1", "Сезон", "круглогодичный"),
            ("1", "Сезон", "лето"),
            ("1", "Цвет", "красный"),
            ("1", "Возрастные ограничения", "от 3 до 12 лет"),
            ("2", "Пол", "Унисекс"),
            ("2", "Хрупкость", "да"),
            ("2", "Хрупкость", "нет"),
            ("3", "Хрупкость", "Хрупкое"),
            ("3", "Пол", "Boy"),
            ("3", "Возрастные ограничения", "0+"),
            ("4", "Пол", "Women"),
            ("4", "Сезон", "весна"),
            ("9", "Пол", "Men"),  # not among the requested nm
        ],
        columns=["nm", "name", "value"],
    )
    result = derive_labels(long, pd.Series(["1", "2", "3", "4", "5"]))
    labels = result.labels
    assert labels["nm"].tolist() == ["1", "2", "3", "4", "5"]
    vocab = label_vocabularies()
    for column in DERIVED_LABEL_COLUMNS:
        assert isinstance(labels[column].dtype, pd.CategoricalDtype)
        assert list(labels[column].cat.categories) == list(vocab[column])
    rows = labels.set_index("nm").astype(object).where(labels.set_index("nm").notna(), None)
    assert rows.loc["1"].tolist() == ["для женщин", "для детей", "лето", None]
    assert rows.loc["2"].tolist() == [None, None, None, None]
    assert rows.loc["3"].tolist() == ["для мальчиков", None, None, "хрупкий"]
    assert rows.loc["4"].tolist() == ["для женщин", None, None, None]
    assert rows.loc["5"].tolist() == [None, None, None, None]

    unmapped = {(r.label, r.raw_value): r.count for r in result.unmapped.itertuples()}
    assert unmapped == {("sex", "Унисекс"): 1, ("age_restrictions", "0+"): 1, ("season", "весна"): 1}


def test_derive_labels_maps_each_distinct_value_once(monkeypatch) -> None:
    from wb_pipeline.core.labels import rules as labels_module

    calls = []
    original = labels_module.LABEL_RULES["season"]
    monkeypatch.setitem(
        labels_module.LABEL_RULES,
        "season",
        lambda values, config: calls.append(tuple(values)) or original(values, config),
    )
    long = pd.DataFrame({"nm": [str(i) for i in range(1000)], "name": "Сезон", "value": ["лето", "зима"] * 500})
    result = derive_labels(long, pd.Series([str(i) for i in range(1000)]))
    assert result.labels["season"].value_counts().to_dict() == {
        "лето": 500,
        "зима": 500,
        "демисезон": 0,
        "круглогодичный": 0,
    }
    assert len(calls) <= 4  # two distinct values, once for the labels and once for `unmapped`


def test_derive_labels_empty_and_bad_input() -> None:
    empty = derive_labels(pd.DataFrame(columns=["nm", "name", "value"]), pd.Series(["1", "2"]))
    assert empty.labels["sex"].isna().all() and len(empty.labels) == 2 and empty.unmapped.empty
    with pytest.raises(ValueError, match="lacks columns"):
        derive_labels(pd.DataFrame({"nm": ["1"]}), pd.Series(["1"]))
