"""Label rules: raw characteristic values -> ``sex``, ``age_restrictions``, ``season``, ``fragility``.

One small pure function per rule takes the raw values a product has for that characteristic (a
list of str, usually one) and returns a vocabulary value (``schema.label_vocabularies()``) or
``None``. :func:`derive_labels` applies them to the long characteristics table, mapping each
distinct raw value (or distinct list of values) once.

Deviations from the seed notebook, on purpose:

* age: the notebook sorted the numbers as strings (``sorted(['3', '12'])`` is ``['12', '3']``), so
  'от 3 до 12 лет' gave 'для подростков'; here the smallest number wins ('для детей').
  Uninformative values ('0+', spacing ignored) are dropped from a list before joining instead of
  only when the whole joined text is exactly '0+'/'0 +'.
* sex: the notebook mapped only Детский/детский/Женский/Women/Девочки/Мужской/Мальчики and left
  Men/Boy/Girl as stray categories; here every known spelling maps (case-insensitively). 'Унисекс'
  and lists whose values map to different labels -> ``None`` (no single label is right).
* season: ``get_from_list`` returned inside its loop, so a list only ever checked 'лето' and then
  returned its first element; here the whole priority лето > зима > демисезон > круглогодичный
  applies. Values outside the vocabulary -> ``None`` (the notebook kept them as categories).
* fragility: the notebook computed the list results and never assigned them (every list became
  missing); here a list whose values agree gives that value, a conflicting list ``None``. Values
  are lowercased before the (start-anchored, like ``re.match``) patterns, so 'Да'/'Хрупкое' match.
* Blank values are ignored everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd

from wb_pipeline.core.data.schema import CHARACTERISTIC_LABELS, DERIVED_LABEL_COLUMNS, label_vocabularies

DEFAULT_SEX_VALUES: Mapping[str, str] = {
    "женский": "для женщин",
    "women": "для женщин",
    "мужской": "для мужчин",
    "men": "для мужчин",
    "детский": "для детей",
    "девочки": "для девочек",
    "girl": "для девочек",
    "мальчики": "для мальчиков",
    "boy": "для мальчиков",
}


@dataclass(frozen=True)
class LabelRulesConfig:
    """Settings of the label rules; defaults are the seed notebook's rules and thresholds.

    Raw values are compared after ``strip().casefold()``; patterns are Python regexes searched in
    the lowercased text (fragility: matched at the start, like the notebook's ``re.match``).
    """

    sex_values: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SEX_VALUES))
    sex_ambiguous_values: tuple[str, ...] = ("унисекс", "unisex")
    age_uninformative_values: tuple[str, ...] = ("0+",)
    age_all_ages_pattern: str = r"без огран|нет огран|для всех|любо[йг]"
    age_infant_pattern: str = r"мес|годик|рожден|малыш|реб[её]н"
    age_child_pattern: str = r"дет[ямскей]{2}|школ|девоч|мальчик"
    age_adult_pattern: str = r"мужч|женщ|взросл"
    age_teen_pattern: str = r"подрост"
    age_adult_min: int = 18
    age_teen_min: int = 12
    age_child_min: int = 3
    age_fallback: str | None = "для всех возрастов"
    season_priority: tuple[str, ...] = ("лето", "зима", "демисезон", "круглогодичный")
    fragility_not_fragile_pattern: str = r"не х[рупкое]+|нет|прочн|над[её]ж"
    fragility_fragile_pattern: str = r"х[рупкое]+|да|не брос"
    fragility_fallback: str | None = "не хрупкий"

    def __post_init__(self) -> None:
        sex_values = {str(raw).strip().casefold(): label for raw, label in dict(self.sex_values).items()}
        object.__setattr__(self, "sex_values", sex_values)
        for name in ("sex_ambiguous_values", "age_uninformative_values", "season_priority"):
            object.__setattr__(self, name, tuple(str(v).strip().casefold() for v in getattr(self, name)))
        vocab = label_vocabularies()
        _require_in_vocabulary("sex_values", sex_values.values(), vocab["sex"])
        _require_in_vocabulary("season_priority", self.season_priority, vocab["season"])
        _require_in_vocabulary("age_fallback", [self.age_fallback], vocab["age_restrictions"])
        _require_in_vocabulary("fragility_fallback", [self.fragility_fallback], vocab["fragility"])
        if not 0 <= self.age_child_min <= self.age_teen_min <= self.age_adult_min:
            raise ValueError("LabelRulesConfig needs 0 <= age_child_min <= age_teen_min <= age_adult_min")
        for name, value in vars(self).items():
            if name.endswith("_pattern"):
                try:
                    re.compile(value)
                except re.error as error:
                    raise ValueError(f"LabelRulesConfig.{name} is not a valid regex: {error}") from None

    def __hash__(self) -> int:  # sex_values is a dict; hash the settings by value
        return hash(
            tuple(sorted(self.sex_values.items()))
            + tuple((name, value) for name, value in vars(self).items() if name != "sex_values")
        )


def _require_in_vocabulary(name: str, values, vocabulary: tuple[str, ...]) -> None:
    outside = [v for v in values if v is not None and v not in vocabulary]
    if outside:
        raise ValueError(f"LabelRulesConfig.{name} has values outside the vocabulary {vocabulary}: {outside}")


DEFAULT_RULES = LabelRulesConfig()


def _clean(values: Sequence[str] | str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def sex_label(values: Sequence[str] | str, config: LabelRulesConfig = DEFAULT_RULES) -> str | None:
    """'для женщин' etc. from raw 'Пол' values; unisex, conflicting or unknown -> None."""
    keys = [v.casefold() for v in _clean(values)]
    if any(key in config.sex_ambiguous_values for key in keys):
        return None
    labels = {config.sex_values[key] for key in keys if key in config.sex_values}
    return labels.pop() if len(labels) == 1 else None


def _age_from_number(age: int, config: LabelRulesConfig) -> str:
    if age >= config.age_adult_min:
        return "для взрослых"
    if age >= config.age_teen_min:
        return "для подростков"
    if age >= config.age_child_min:
        return "для детей"
    return "для малышей"


def age_restrictions_label(values: Sequence[str] | str, config: LabelRulesConfig = DEFAULT_RULES) -> str | None:
    """The notebook's ``get_age_restrictions`` on the space-joined values, smallest age winning."""
    informative = [v for v in _clean(values) if re.sub(r"\s+", "", v).casefold() not in config.age_uninformative_values]
    if not informative:
        return None
    text = " ".join(informative).lower()
    if _compiled(config.age_all_ages_pattern).search(text):
        return "для всех возрастов"
    if _compiled(config.age_infant_pattern).search(text):
        return "для малышей"
    numbers = re.findall(r"[0-9]+", text)
    if numbers:
        # Over-long digit runs are not ages; cap them instead of building huge ints.
        return _age_from_number(min(int(n) if len(n) < 10 else 10**9 for n in numbers), config)
    if _compiled(config.age_child_pattern).search(text):
        return "для детей"
    if _compiled(config.age_adult_pattern).search(text):
        return "для взрослых"
    if _compiled(config.age_teen_pattern).search(text):
        return "для подростков"
    return config.age_fallback


def season_label(values: Sequence[str] | str, config: LabelRulesConfig = DEFAULT_RULES) -> str | None:
    """The highest-priority season among the values (лето > зима > демисезон > круглогодичный)."""
    present = {v.casefold() for v in _clean(values)}
    return next((season for season in config.season_priority if season in present), None)


def _fragility_of_value(value: str, config: LabelRulesConfig) -> str | None:
    text = value.lower()
    if _compiled(config.fragility_not_fragile_pattern).match(text):
        return "не хрупкий"
    if _compiled(config.fragility_fragile_pattern).match(text):
        return "хрупкий"
    return config.fragility_fallback


def fragility_label(values: Sequence[str] | str, config: LabelRulesConfig = DEFAULT_RULES) -> str | None:
    """The notebook's ``get_fragility`` per value; a list whose values disagree -> None."""
    labels = {_fragility_of_value(v, config) for v in _clean(values)} - {None}
    return labels.pop() if len(labels) == 1 else None


LABEL_RULES = {
    "sex": sex_label,
    "age_restrictions": age_restrictions_label,
    "season": season_label,
    "fragility": fragility_label,
}


@dataclass(frozen=True)
class LabelDerivation:
    """``labels``: nm + one Categorical per label (categories = the vocabulary), one row per input nm.

    ``unmapped``: label, raw_value, count -- raw values that map to nothing on their own (unknown
    spellings, and the deliberately uninformative ones such as '0+' or 'Унисекс'), for metadata.
    """

    labels: pd.DataFrame
    unmapped: pd.DataFrame


def derive_labels(
    characteristics_long: pd.DataFrame, nm: pd.Series, config: LabelRulesConfig | None = None
) -> LabelDerivation:
    """Labels for every nm in ``nm`` from the long characteristics table (columns nm, name, value).

    Values of a product for one characteristic are passed to the rule together, in table order.
    Each distinct value (or distinct list of values) is mapped once. Products without the
    characteristic, or whose values map to nothing, get a missing label.
    """
    config = config or DEFAULT_RULES
    missing = {"nm", "name", "value"} - set(characteristics_long.columns)
    if missing:
        raise ValueError(f"characteristics_long lacks columns {sorted(missing)}")
    vocab = label_vocabularies()
    nm_text = nm.astype(str).reset_index(drop=True)
    relevant = characteristics_long.loc[
        characteristics_long["name"].isin(list(CHARACTERISTIC_LABELS)), ["nm", "name", "value"]
    ].astype({"nm": str, "name": str, "value": str})
    relevant["label"] = relevant["name"].map(CHARACTERISTIC_LABELS)

    labels = pd.DataFrame({"nm": nm_text})
    unmapped_parts = []
    for label in DERIVED_LABEL_COLUMNS:
        rule = LABEL_RULES[label]
        rows = relevant[relevant["label"] == label]
        per_nm = _label_per_nm(rows, lambda values, rule=rule: rule(values, config))
        labels[label] = pd.Categorical(nm_text.map(per_nm), categories=list(vocab[label]))

        counts = rows["value"].value_counts()
        single = pd.Series({value: rule([value], config) for value in counts.index}, dtype=object)
        nothing = counts[single.reindex(counts.index).isna().to_numpy()] if len(counts) else counts
        unmapped_parts.append(
            pd.DataFrame({"label": label, "raw_value": nothing.index.astype(str), "count": nothing.to_numpy()})
        )
    unmapped = pd.concat(unmapped_parts, ignore_index=True).astype({"count": "int64"})
    unmapped = unmapped.sort_values(["label", "count", "raw_value"], ascending=[True, False, True])
    return LabelDerivation(labels=labels, unmapped=unmapped.reset_index(drop=True))


def _label_per_nm(rows: pd.DataFrame, rule) -> pd.Series:
    """nm -> label, calling ``rule`` once per distinct value (single-valued nm) or value tuple."""
    if rows.empty:
        return pd.Series(dtype=object)
    sizes = rows.groupby("nm", sort=False)["value"].transform("size")
    single = rows[sizes == 1]
    single_map = {value: rule([value]) for value in single["value"].unique()}
    result = pd.Series(single["value"].map(single_map).to_numpy(dtype=object), index=single["nm"].to_numpy())
    multi = rows[sizes > 1]
    if not multi.empty:
        tuples = multi.groupby("nm", sort=False)["value"].agg(tuple)
        tuple_map = {values: rule(list(values)) for values in tuples.unique()}
        result = pd.concat([result, tuples.map(tuple_map)])
    return result
