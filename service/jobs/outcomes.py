"""Notification texts: Russian by default, English for English-language users, HTML-escaped."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

# Telegram allows 4096 characters after entity parsing; names are cut far below that so that
# the rest of the message always fits.
MAX_NAME_CHARS = 64

# Callback data understood by the bot (service/bot); the webhook service only renders it.
CALLBACK_MY_AVATARS = "avatars:list"
CALLBACK_GENERATE = "avatar:generate:{avatar_id}"
CALLBACK_CREATE = "avatar:create"

_TYPE_NAMES = {
    "ru": {"portrait": "портретный", "style": "стилевой"},
    "en": {"portrait": "portrait", "style": "style"},
}

_TEXTS = {
    "ru": {
        "completed": "✅ Аватар <b>{name}</b> ({kind}) готов!\n\n"
        "Обучение завершено, можно создавать изображения.",
        "failed": "❌ Не удалось обучить аватар <b>{name}</b> ({kind}).\n\n"
        "Попробуйте создать аватар заново: лучше всего подходят 10–20 чётких фотографий "
        "одного человека с разных ракурсов, без других людей в кадре. "
        "Если ошибка повторится, напишите /help.",
        "cancelled": "Обучение аватара <b>{name}</b> ({kind}) отменено.",
        "my_avatars": "Мои аватары",
        "generate": "Создать изображение",
        "try_again": "Создать заново",
    },
    "en": {
        "completed": "✅ Your avatar <b>{name}</b> ({kind}) is ready!\n\n"
        "Training has finished; you can start generating images.",
        "failed": "❌ Training of your avatar <b>{name}</b> ({kind}) failed.\n\n"
        "Please create the avatar again: 10–20 sharp photos of one person from different "
        "angles, with nobody else in the frame, work best. If it fails again, send /help.",
        "cancelled": "Training of your avatar <b>{name}</b> ({kind}) was cancelled.",
        "my_avatars": "My avatars",
        "generate": "Generate",
        "try_again": "Create again",
    },
}


@dataclass(frozen=True)
class Rendered:
    text: str
    reply_markup: dict[str, Any]


def language(language_code: str | None) -> str:
    return "en" if (language_code or "").lower().startswith("en") else "ru"


def shorten(name: str, limit: int = MAX_NAME_CHARS) -> str:
    name = " ".join(name.split())
    return name if len(name) <= limit else name[: limit - 1] + "…"


def render_outcome(
    kind: str, avatar_id: str, name: str, training_type: str, language_code: str | None
) -> Rendered:
    """The HTML message and inline keyboard telling a person how their training ended."""
    lang = language(language_code)
    texts = _TEXTS[lang]
    kind_name = _TYPE_NAMES[lang].get(training_type, training_type)
    text = texts[kind].format(name=html.escape(shorten(name)), kind=html.escape(kind_name))
    buttons = [[{"text": texts["my_avatars"], "callback_data": CALLBACK_MY_AVATARS}]]
    if kind == "completed":
        generate = CALLBACK_GENERATE.format(avatar_id=avatar_id)
        buttons.insert(0, [{"text": texts["generate"], "callback_data": generate}])
    elif kind == "failed":
        buttons.insert(0, [{"text": texts["try_again"], "callback_data": CALLBACK_CREATE}])
    return Rendered(text=text, reply_markup={"inline_keyboard": buttons})
