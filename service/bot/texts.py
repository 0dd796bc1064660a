"""What the bot says: Russian by default, English for English-language Telegram users.

Every text is HTML (the bot's parse mode). `t()` escapes every value it fills in, so a name
like `<b>Ann_2</b> & Co` shows literally and can never break the markup; button labels are
plain text and go through `label()` instead, which does not escape.
"""

from __future__ import annotations

import html
from typing import Any

from service.bot.texts_en import EN
from service.bot.texts_ru import RU
from service.jobs.outcomes import language, shorten

Lang = str

_TEXTS = {"ru": RU, "en": EN}
# Button labels carry names too; Telegram shows about 30 characters of a button.
BUTTON_NAME_CHARS = 20


def lang_of(language_code: str | None) -> Lang:
    return language(language_code)


def t(lang: Lang, key: str, **values: Any) -> str:
    """The HTML text `key` in `lang`, with every value HTML-escaped."""
    escaped = {name: html.escape(str(value), quote=False) for name, value in values.items()}
    return _TEXTS[lang][key].format(**escaped)


def label(lang: Lang, key: str, name: str | None = None) -> str:
    """A button label (plain text: Telegram does not parse markup in buttons)."""
    text = _TEXTS[lang][key]
    return text.format(name=shorten(name, BUTTON_NAME_CHARS)) if name is not None else text


def word(lang: Lang, key: str) -> str:
    return _TEXTS[lang][key]


def kind_name(lang: Lang, training_type: str) -> str:
    return _TEXTS[lang].get(f"type_{training_type}", training_type)


def status_name(lang: Lang, status: str) -> str:
    return _TEXTS[lang].get(f"status_{status}", status)


def age(lang: Lang, seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return word(lang, "age_now")
    if minutes < 60:
        return word(lang, "age_minutes").format(n=minutes)
    if minutes < 48 * 60:
        return word(lang, "age_hours").format(n=minutes // 60)
    return word(lang, "age_days").format(n=minutes // (24 * 60))
