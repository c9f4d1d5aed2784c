"""Marketplace-style Russian titles and descriptions with the quirks of real listings.

HTML tags and entities, units and dimensions (``30x40``, ``30х40`` with a Cyrillic х, ``500мл``,
``2 шт``, ``1,5 л``), emoji, Latin brands, CAPS, some English titles, very long descriptions.
Which labels the text mentions is decided by the caller, so some signal lives only in the image.
"""

from __future__ import annotations

from wb_pipeline.sample_data.catalog import GENDER_INDEX, ProductType

SEX_ADJECTIVES = {
    "W": ("женский", "женская", "женское", "женские"),
    "M": ("мужской", "мужская", "мужское", "мужские"),
    "K": ("детский", "детская", "детское", "детские"),
    "G": ("для девочки",) * 4,
    "B": ("для мальчика",) * 4,
    "U": ("унисекс",) * 4,
}
SEASON_ADJECTIVES = {
    "S": ("летний", "летняя", "летнее", "летние"),
    "W": ("зимний", "зимняя", "зимнее", "зимние"),
    "D": ("демисезонный", "демисезонная", "демисезонное", "демисезонные"),
    "A": ("всесезонный", "всесезонная", "всесезонное", "всесезонные"),
}
SEX_SENTENCES = {
    "W": "Модель для женщин.",
    "M": "Модель для мужчин.",
    "K": "Подходит для детей.",
    "G": "Отличный выбор для девочек.",
    "B": "Создано для мальчиков.",
    "U": "Универсальная модель унисекс.",
}
SEASON_SENTENCES = {
    "S": "Идеально для жаркого лета.",
    "W": "Согреет даже в сильный мороз, для холодной зимы.",
    "D": "Подойдет для весны и осени, в межсезонье.",
    "A": "Можно носить круглый год.",
}
AGE_SENTENCES = {
    "A": "Товар только для лиц старше 18 лет.",
    "T": "Рекомендуется подросткам от 12 лет.",
    "C": "Рекомендуемый возраст: от 3 лет.",
    "B": "Подходит малышам с рождения.",
    "L": "Без возрастных ограничений.",
}
ENGLISH_SEX = {"W": "Women's", "M": "Men's", "K": "Kids", "G": "Girls", "B": "Boys", "U": "Unisex"}
ENGLISH_SEASON = {"S": "summer", "W": "winter", "D": "autumn", "A": "all-season"}

FRAGILE_MATERIALS = ("стекла", "керамики", "фарфора", "хрусталя", "закаленного стекла")
STURDY_MATERIALS = ("пластика", "металла", "нержавеющей стали", "силикона", "дерева", "ударопрочного ABS-пластика")
FRAGILE_SENTENCES = (
    "Товар хрупкий, при доставке упакован в пупырчатую пленку.",
    "Осторожно: хрупкое изделие, не бросать!",
    "Бьющийся материал, обращайтесь бережно.",
)
STURDY_SENTENCES = (
    "Изделие прочное и не бьется при падении.",
    "Небьющийся материал, безопасно для детей.",
    "Надежная и прочная конструкция.",
)
EMOJI = ("🔥", "✅", "❤️", "🎁", "✨", "👍", "💯", "⭐", "🌸", "❄️")
FILLER = (
    "Высокое качество по доступной цене.",
    "Отличный подарок для родных и близких на любой праздник.",
    "Товар прошел контроль качества перед отправкой.",
    "Мы ценим каждого покупателя и всегда рады помочь с выбором.",
    "Если у вас остались вопросы, напишите нам, и мы ответим в течение дня.",
    "Цвет на фото может незначительно отличаться из-за настроек монитора.",
    "Оставьте отзыв, это помогает нам становиться лучше.",
    "Добавьте товар в избранное, чтобы не потерять.",
    "Производство полного цикла позволяет контролировать каждый этап.",
    "Современный дизайн впишется в любой интерьер и подчеркнет ваш стиль.",
    "Упаковка надежно защищает товар при транспортировке.",
    "Все материалы сертифицированы и безопасны для здоровья.",
    "Подписывайтесь на наш магазин, чтобы первыми узнавать о новинках и скидках.",
    "Перед использованием внимательно ознакомьтесь с инструкцией.",
    "Гарантия качества от производителя, возврат и обмен по правилам площадки.",
    "Легко чистится и долго сохраняет первоначальный вид.",
    "Размерная сетка указана на последнем фото, уточняйте размер перед заказом.",
    "Приятный на ощупь материал не вызывает раздражения.",
    "Компактно складывается и не занимает много места при хранении.",
    "Хит продаж этого сезона, успейте купить!",
    "Наша команда тщательно отбирает каждую партию, проверяет швы, фурнитуру и внешний вид.",
    "Доставка по всей России, отправка в день заказа.",
    "Вы можете заказать несколько товаров и выбрать подходящий при получении.",
    "Идеальное сочетание цены и качества для повседневного использования.",
    "Стирка при температуре не выше 30 градусов, не отбеливать.",
)
TAIL_EXTRAS = (
    "набор",
    "2 шт",
    "универсальные",
    "10 шт",
    "премиум",
    "новинка",
    "3 шт",
    "1 шт",
    "комплект",
    "большие",
    "мини",
    "для дома",
    "PRO",
    "new 2024",
    "в подарочной упаковке",
    "оригинал",
)
DIMENSION_TEMPLATES = (
    "Размер: {a}x{b} см.",
    "Габариты {a}х{b}х{c} см.",
    "Объем {v}мл.",
    "В комплекте {k} шт.",
    "Вес {w} г.",
    "Объем 1,5 л.",
    "Размер {a} х {b} мм.",
    "Длина {a} см, ширина {b} см.",
    "Объём: {v} мл",
)


def adjective(table: dict[str, tuple[str, ...]], code: str, gender: str) -> str:
    """The adjective for a label code, agreed with the noun's grammatical gender."""
    return table[code][GENDER_INDEX[gender]]


def build_title(
    ptype: ProductType,
    *,
    sex: str,
    season: str,
    extra: str,
    colour: str,
    brand: str,
    brand_position: int,
    english: bool,
) -> str:
    """One product title. ``sex``/``season`` are codes to mention ('' = say nothing about it)."""
    if english:
        words = [ENGLISH_SEX.get(sex, ""), ENGLISH_SEASON.get(season, ""), ptype.english, brand]
        return " ".join(w for w in words if w)
    parts = [ptype.noun]
    if sex:
        parts.append(adjective(SEX_ADJECTIVES, sex, ptype.gender))
    if season:
        parts.append(adjective(SEASON_ADJECTIVES, season, ptype.gender))
    if extra:
        parts.append(extra)
    if colour:
        parts.append(colour)
    title = " ".join(parts)
    if brand_position == 1:
        return f"{brand} / {title}"
    if brand_position == 2:
        return f"{title} {brand}"
    return title


def dimension_sentence(template_index: int, numbers: tuple[int, ...]) -> str:
    """A sentence with units/dimensions in one of the spellings found in real listings."""
    a, b, c, v, k, w = numbers
    return DIMENSION_TEMPLATES[template_index % len(DIMENSION_TEMPLATES)].format(a=a, b=b, c=c, v=v, k=k, w=w)


def render_description(sentences: list[str], style: int, emoji: str) -> str:
    """Join sentences in one of the markup styles: plain, newlines, <br>, <p>, bullets with emoji."""
    if style == 0:
        return " ".join(sentences)
    if style == 1:
        return "\n".join(sentences)
    if style == 2:
        return "<br>".join(sentences).replace(". ", ".&nbsp;", 1)
    if style == 3:
        return "".join(f"<p>{s}</p>" for s in sentences)
    if style == 4:
        return "\n".join(f"{emoji} {s}" for s in sentences)
    return "<ul>" + "".join(f"<li>{s}</li>" for s in sentences) + "</ul>&nbsp;"
