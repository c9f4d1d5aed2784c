"""The ``characteristics`` cell exactly as the WB dump stores it: bytes in three mixed forms.

The encoders below reproduce how the real cells were produced (not an imitation of their look),
so every quirk is genuine: form 1 is a bytes repr wrapping a bytes repr wrapping JSON; form 2 is
numpy's real ``str()`` of an object array of dicts; form 3 is plain UTF-8 JSON. Raw label values
are the messy spellings seen in the dump; malformed cells exercise the parser's rejection path.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

FORM_BYTES_REPR = 1
FORM_NUMPY_REPR = 2
FORM_PLAIN_JSON = 3
FORMS = (FORM_BYTES_REPR, FORM_NUMPY_REPR, FORM_PLAIN_JSON)

# Raw spellings of each latent label code, with relative frequencies. Lists are multi-valued cells.
SEX_RAW: dict[str, tuple[tuple[Any, float], ...]] = {
    "W": (("Женский", 90), ("Women", 10)),
    "M": (("Мужской", 92), ("Men", 8)),
    "K": (("Детский", 70), ("детский", 15), (["Девочки", "Мальчики"], 15)),
    "G": (("Девочки", 88), ("Girl", 12)),
    "B": (("Мальчики", 88), ("Boy", 12)),
    "U": (("Унисекс", 60), (["Женский", "Мужской"], 40)),
}
AGE_RAW: dict[str, tuple[tuple[Any, float], ...]] = {
    "A": (("18+", 70), ("для взрослых", 20), ("21+", 10)),
    "T": (("12+", 45), ("16+", 35), ("от 14 лет", 20)),
    "C": (("3+", 30), ("6+", 25), ("от 3 лет", 15), ("от 3 до 12 лет", 10), ("для детей", 10), ("от 5 лет", 10)),
    "B": (("с рождения", 35), ("6 мес", 25), ("от 1 года", 20), ("0-3 года", 10), ("1+", 10)),
    "L": (("без ограничений", 60), ("для всех возрастов", 20), ("0+", 20)),
}
SEASON_RAW: dict[str, tuple[tuple[Any, float], ...]] = {
    "S": (("лето", 88), (["демисезон", "лето"], 12)),
    "W": (("зима", 85), (["зима", "демисезон"], 15)),
    "D": (("демисезон", 88), (["демисезон", "круглогодичный"], 12)),
    "A": (("круглогодичный", 82), ("всесезон", 18)),
}
FRAGILITY_RAW: dict[str, tuple[tuple[Any, float], ...]] = {
    "Y": (("хрупкое", 60), ("да", 20), ("не бросать", 10), (["хрупкое", "не хрупкое"], 5), ("Хрупкое", 5)),
    "N": (("не хрупкое", 55), ("нет", 25), ("прочный", 15), (["не хрупкое", "хрупкое"], 5)),
}

COUNTRIES = ("Китай", "Россия", "Турция", "Узбекистан", "Беларусь", "Киргизия", "Индия", "Вьетнам")
CLOTH_COMPOSITIONS = (
    ["хлопок 95%", "эластан 5%"],
    ["полиэстер 100%"],
    ["хлопок 100%"],
    ["вискоза 70%", "полиэстер 30%"],
    ["шерсть 30%", "акрил 70%"],
    ["лен 100%"],
    ["натуральная кожа"],
    ["экокожа", "текстиль"],
)
FEATURE_FLAGS = ("Беспроводное подключение", "Водонепроницаемость", "Наличие пульта ДУ", "Подарочная упаковка")
MALFORMED_KINDS = (
    "truncated",
    "invalid_utf8",
    "none",
    "empty",
    "garbage",
    "python_expression",
    "python_expression_in_bytes_repr",
)
INJECTED_EXPRESSION = "__import__('os').system('echo pwned')"


@lru_cache(maxsize=8192)
def _numpy_values_repr(values: tuple[str, ...]) -> str:
    return repr(np.array(values, dtype=object))


class _NumpyValues:
    """Stands in for ``np.array(values, dtype=object)`` inside a dict: its repr IS numpy's repr
    of that array (computed by numpy, cached, since the same value lists recur on many rows)."""

    __slots__ = ("values",)

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values

    def __repr__(self) -> str:
        return _numpy_values_repr(self.values)


def encode_characteristics(items: list[dict[str, Any]], form: int) -> bytes:
    """Encode a list of ``{"charcName", "charcValues"|"value"}`` dicts the way the dump did."""
    if form == FORM_BYTES_REPR:
        return str(str(json.dumps(items).encode()).encode()).encode("utf-8")
    if form == FORM_NUMPY_REPR:
        cells = [
            {**item, "charcValues": _NumpyValues(tuple(item["charcValues"]))} if "charcValues" in item else item
            for item in items
        ]
        array = np.empty(len(cells), dtype=object)  # never let numpy broadcast the dicts' contents
        array[:] = cells
        return str(array).encode("utf-8")
    if form == FORM_PLAIN_JSON:
        return json.dumps(items, ensure_ascii=False).encode("utf-8")
    raise ValueError(f"unknown characteristics form {form!r}; expected one of {FORMS}")


def malformed_cell(kind: str, items: list[dict[str, Any]], rng: np.random.Generator) -> bytes | None:
    """A broken ``characteristics`` cell of the given kind (see ``MALFORMED_KINDS``)."""
    if kind == "truncated":
        whole = encode_characteristics(
            items or [{"charcName": "Цвет", "charcValues": ["черный"]}],
            FORM_BYTES_REPR if rng.random() < 0.5 else FORM_NUMPY_REPR,
        )
        return whole[: max(3, int(len(whole) * rng.uniform(0.2, 0.8)))]
    if kind == "invalid_utf8":
        # A legacy Windows-1251 export: Cyrillic bytes that are not valid UTF-8.
        text = json.dumps(items or [{"charcName": "Цвет", "charcValues": ["черный"]}], ensure_ascii=False)
        return text.encode("cp1251", errors="replace")
    if kind == "none":
        return None
    if kind == "empty":
        return b""
    if kind == "garbage":
        return b"\x00\x9c" + rng.integers(0, 256, size=int(rng.integers(8, 40)), dtype=np.uint8).tobytes() + b"N/A"
    if kind == "python_expression":
        return INJECTED_EXPRESSION.encode("utf-8")
    if kind == "python_expression_in_bytes_repr":
        # Shaped like form 1 so a parser that slices [5:-3] and evals it would run the payload.
        return str(str(INJECTED_EXPRESSION.encode()).encode()).encode("utf-8")
    raise ValueError(f"unknown malformed kind {kind!r}; expected one of {MALFORMED_KINDS}")
