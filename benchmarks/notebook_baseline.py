"""The seed notebook's preprocessing, re-implemented faithfully, PER ROW, as the speed baseline.

What is kept from the notebook (``000_3c0909260af0758e.txt``): ``clean_dataset`` (vectorised pandas
there too, incl. its both-texts-required bug; no image filter because the benchmark has no
images), ``TextPreprocessor._process_text`` applied row by row (per-row ``re.sub``, tokenize, list
filtering against a plain *list* of excluded words), ``_process_characteristics`` with its string
surgery per row, ``CharExtractor._get_characteristic`` per row, and the label functions
(``get_age_restrictions``, the sex ``replace``, ``get_from_list``, ``get_fragility``) with their bugs.

What had to change, and why:

* ``eval`` -> ``ast.literal_eval`` (never run data as code); for the numpy form that means
  ``array(`` -> ``(`` and ``, dtype=object)`` -> ``)`` instead of ``array`` -> ``np.array``.
* nltk's ``word_tokenize`` needs the ``punkt`` download, so ``razdel.tokenize`` stands in; nltk's
  Russian stop words likewise -> the ``stop-words`` package's list (the same list the pipeline uses).
* A cell or value that would raise in the notebook (and stop its whole run) yields ``None`` here,
  flagged in ``crashed``, so the benchmark can finish.
* ``None`` text -> ``""`` (the notebook only ever saw cleaned text).

``NotebookFixes`` switches on the documented bug fixes one by one; the benchmark uses
"buggy output != fixed output" to define the rows where the notebook is buggy.
"""

from __future__ import annotations

import ast
import html
import re
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd
import razdel
from stop_words import get_stop_words

UNITS = ["мг", "г", "гр", "кг", "мл", "л", "мм", "см", "м", "км", "шт", "штук"]
CHAR_NAMES = ["Пол", "Возрастные ограничения", "Сезон", "Хрупкость"]
COL_NAMES = ["sex", "age_restrictions", "season", "fragility"]
SEASONS = ["лето", "зима", "демисезон", "круглогодичный"]


@dataclass(frozen=True)
class NotebookFixes:
    """Which of the notebook's bugs to fix (all False = the notebook as written)."""

    punctuation: bool = False  # drop every token without a letter/digit, not only string.punctuation
    html: bool = False  # strip tags and unescape entities before tokenising
    age_numeric_sort: bool = False  # sort ages as numbers, drop '0+' from lists
    sex_all_spellings: bool = False  # map Men/Boy/Girl too; Унисекс and conflicting lists -> None
    season_priority: bool = False  # get_from_list checks the whole priority list
    fragility: bool = False  # lowercase before matching; assign list results
    cleaning: bool = False  # drop only rows missing BOTH texts, then fill the missing one (fill_missing_text)

    @classmethod
    def all(cls) -> NotebookFixes:
        return cls(True, True, True, True, True, True, True)


# ------------------------------------------------------------------------------ cleaning


def clean_dataset(df: pd.DataFrame, cols_to_drop=("brand", "price")) -> pd.DataFrame:
    """The notebook's ``clean_dataset`` (without the empty-image filter)."""
    df = df.copy()
    df.loc[df.title == "", "title"] = np.nan
    df.loc[df.description == "", "description"] = np.nan
    df = df[df[["title", "description"]].notna().all(axis=1)]
    df = df.copy()
    df["description"] = df.description.fillna(df.title)
    df["title"] = df["title"].fillna(df["description"].str.split().str[:10].str.join(" "))
    df = df[df["title"].str.len() > 2]
    for col in df.columns:
        if col in cols_to_drop:
            df = df.drop(col, axis=1)
    return df


def fill_missing_text(titles: pd.Series, descriptions: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The intended rule of ``clean_dataset`` (its fill, without the bug that dropped these rows)."""
    titles = titles.where(titles.notna() & (titles != ""), None)
    descriptions = descriptions.where(descriptions.notna() & (descriptions != ""), None)
    descriptions = descriptions.fillna(titles)
    titles = titles.fillna(descriptions.str.split().str[:10].str.join(" "))
    return titles, descriptions


def fill_empty_preprocessed(title: pd.Series, description: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The notebook's fill after preprocessing (``train.loc[train.description == '', ...]``)."""
    title, description = title.copy(), description.copy()
    description.loc[description == ""] = title.loc[description == ""]
    title.loc[title == ""] = description.loc[title == ""].apply(lambda x: " ".join(x.split()[:7]))
    return title, description


# ------------------------------------------------------------------------------ text


class TextPreprocessor:
    """``TextPreprocessor._process_text``, applied per row with ``Series.apply``."""

    def __init__(self, max_word_len=15, title_size=60, description_size=300, fixes=NotebookFixes()):
        self.title_size = title_size
        self.description_size = description_size
        self.max_word_len = max_word_len
        self.fixes = fixes
        stop_words = get_stop_words("ru")
        stop_words.remove("не")
        stop_words.remove("для")
        self.title_exclude_list = list(string.punctuation) + UNITS
        self.description_exclude_list = self.title_exclude_list + stop_words

    def transform(self, texts: pd.Series, text_type: str) -> pd.Series:
        return texts.apply(lambda x: self._process_text("" if x is None or x is np.nan else x, text_type))

    def _process_text(self, text: str, text_type: str) -> str:
        if text_type == "title":
            exclude_list, size = self.title_exclude_list, self.title_size
        elif text_type == "description":
            exclude_list, size = self.description_exclude_list, self.description_size
        else:
            raise ValueError("text_type must be 'title' or 'description'")
        if self.fixes.html:
            text = html.unescape(re.sub(r"<!--.*?-->|</?[A-Za-z][^<>]*>|<![A-Za-z][^<>]*>", " ", text, flags=re.S))
        text = re.sub(r"\d+[хХxX]\d+|\d+[кмглршт]+|\d+ [xXхХ] \d+", "", text)
        words = [token.text for token in razdel.tokenize(text.lower())]
        return " ".join(
            [
                word
                for word in words
                if word not in exclude_list
                and not word.isdigit()
                and len(word) <= self.max_word_len
                and (not self.fixes.punctuation or any(ch.isalnum() for ch in word))
            ][:size]
        )


# ------------------------------------------------------------------------------ characteristics


def process_characteristics(raw: bytes) -> list[dict]:
    """``_process_characteristics`` with ``ast.literal_eval`` in place of ``eval``."""
    text = raw.decode("utf-8")
    if "'b\\'" in text:
        return ast.literal_eval(re.sub(r"\\+", r"\\", text)[5:-3].replace("true", "True").replace("false", "False"))
    text = text.replace("}\n", "},")
    text = re.sub(r"\n\s+", " ", text)
    text = re.sub(r"array\(", "(", text).replace(", dtype=object)", ")")
    return ast.literal_eval(text)


def get_characteristic(char_list: list[dict]) -> list:
    """``CharExtractor._get_characteristic``."""
    res = [np.nan] * len(CHAR_NAMES)
    for char in char_list:
        if char["charcName"] in CHAR_NAMES:
            if "value" in char and char["value"] is not None:
                if isinstance(char["value"], str):
                    char["value"] = float(char["value"].replace(",", "."))
                res[CHAR_NAMES.index(char["charcName"])] = char["value"]
            if "charcValues" in char and char["charcValues"] is not None:
                if len(char["charcValues"]) == 1:
                    res[CHAR_NAMES.index(char["charcName"])] = char["charcValues"][0]
                else:
                    res[CHAR_NAMES.index(char["charcName"])] = list(char["charcValues"])
    return res


def extract_characteristics(raw: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Per-row parse + extraction; returns (sex/age/season/fragility raw values, crashed flags)."""

    def one(cell):
        try:
            return get_characteristic(process_characteristics(cell)), False
        except Exception:  # the notebook would stop here; record and go on
            return [np.nan] * len(CHAR_NAMES), True

    results = raw.apply(one)
    values = pd.DataFrame([r[0] for r in results], columns=COL_NAMES, index=raw.index)
    return values, pd.Series([r[1] for r in results], index=raw.index)


# ------------------------------------------------------------------------------ labels


def get_age_restrictions(ar, fixes: NotebookFixes):
    if ar in ["0+", "0 +"]:
        return np.nan
    ar = ar.lower()
    if re.findall(r"без огран|нет огран|для всех|любо[йг]", ar):
        return "для всех возрастов"
    if re.findall(r"мес|годик|рожден|малыш|реб[её]н", ar):
        return "для малышей"
    nums = re.findall(r"\d+", ar)
    nums = sorted(nums, key=int) if fixes.age_numeric_sort else sorted(nums)
    if nums:
        num = int(nums[0])
        if num >= 18:
            return "для взрослых"
        elif 12 <= num < 18:
            return "для подростков"
        elif 3 <= num < 12:
            return "для детей"
        else:
            return "для малышей"
    if re.findall(r"дет[ямскей]{2}|школ|девоч|мальчик", ar):
        return "для детей"
    if re.findall(r"мужч|женщ|взросл", ar):
        return "для взрослых"
    if re.findall(r"подрост", ar):
        return "для подростков"
    return "для всех возрастов"


def get_from_list(x, params_seq, fixes: NotebookFixes):
    if isinstance(x, list):
        for param in params_seq:
            if param in x:
                return param
            if not fixes.season_priority:
                return x[0]
        return x[0]
    return x


def get_fragility(x, fixes: NotebookFixes):
    if x is None:
        return "не указано"
    if fixes.fragility:
        x = x.lower()
    if re.match(r"не х[рупкое]+|нет|прочн|над[её]ж", x) is not None:
        return "не хрупкий"
    elif re.match(r"х[рупкое]+|да|не брос", x) is not None:
        return "хрупкий"
    else:
        return "не хрупкий"


_SEX_FIXED = {
    "Детский": "для детей",
    "детский": "для детей",
    "Женский": "для женщин",
    "Women": "для женщин",
    "Девочки": "для девочек",
    "Girl": "для девочек",
    "Мужской": "для мужчин",
    "Men": "для мужчин",
    "Мальчики": "для мальчиков",
    "Boy": "для мальчиков",
}


def _sex_fixed(x):
    values = x if isinstance(x, list) else [x]
    labels = {_SEX_FIXED.get(v) for v in values if isinstance(v, str)}
    if "Унисекс" in values or None in labels or len(labels) != 1:
        return np.nan
    return labels.pop()


def derive_labels(train: pd.DataFrame, fixes: NotebookFixes = NotebookFixes()) -> pd.DataFrame:
    """The notebook's label cells, in order, on the extracted raw values."""
    train = train.copy()
    if fixes.age_numeric_sort:

        def drop_placeholder(x):
            if isinstance(x, list):
                kept = [v for v in x if str(v).replace(" ", "") != "0+"]
                return kept if kept else "0+"
            return x

        train["age_restrictions"] = train.age_restrictions.apply(drop_placeholder)
    train["age_restrictions"] = train.age_restrictions.apply(lambda x: " ".join(x) if isinstance(x, list) else x)
    train["age_restrictions"] = train.age_restrictions.dropna().apply(lambda x: get_age_restrictions(str(x), fixes))

    if fixes.sex_all_spellings:
        train["sex"] = train.sex.apply(lambda x: _sex_fixed(x) if x is not np.nan and x is not None else np.nan)
    else:
        train["sex"] = train.sex.replace(["детский", "Women"], ["Детский", "Женский"])
        train["sex"] = train.sex.replace(
            ["Детский", "Женский", "Девочки", "Мужской", "Мальчики"],
            ["для детей", "для женщин", "для девочек", "для мужчин", "для мальчиков"],
        )

    train["season"] = train.season.apply(lambda x: get_from_list(x, SEASONS, fixes))

    is_list = train.fragility.apply(lambda value: isinstance(value, list))
    fragility = train[~is_list].fragility.dropna().apply(lambda x: get_fragility(str(x), fixes))
    fragility_lists = (
        train[is_list]
        .fragility.apply(lambda x: set(get_fragility(i, fixes) for i in x))
        .apply(lambda x: list(x)[0] if len(x) == 1 else None)
    )
    train["fragility"] = fragility
    if fixes.fragility:
        train.loc[fragility_lists.index, "fragility"] = fragility_lists
    return train[COL_NAMES]
