"""A generation's outcome as its owner gets it: a photo, an album or a text, in their language."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from service.jobs.outcomes import language, shorten
from service.outbox.messages import Message, MessageType

# Telegram allows 1024 characters of caption after entity parsing.
MAX_CAPTION_CHARS = 1024
# A failure's reason is FAL's words, cut to what a message can carry beside its sentence.
MAX_REASON_CHARS = 300

# Callback data understood by the bot (service/bot), each well under Telegram's 64 bytes.
CALLBACK_AGAIN = "gen:again:{generation_id}"
CALLBACK_NEW = "gen:new:{avatar_id}"
CALLBACK_MINE = "gen:mine"

_TEXTS = {
    "ru": {
        "held_back": "Скрыто фильтром безопасности: {count}.",
        "all_held_back": "Фильтр безопасности скрыл все фото ({count}). Попробуйте другой запрос.",
        "left": "Осталось фото на сегодня: {left}.",
        "ready": "Готово: {count} фото.",
        "failed": "❌ Не удалось создать фото: {reason}.\n\nЭти фото не засчитаны в дневной "
        "лимит, можно попробовать снова.",
        "timeout": "сервис генерации не успел их сделать",
        "interrupted": "запрос прервался до отправки в сервис генерации",
        "refused": "сервис генерации отклонил запрос",
        "unknown": "сервис генерации вернул ошибку",
        "again": "Ещё похожие",
        "try_again": "Попробовать снова",
        "new": "Новый запрос",
        "mine": "Мои фото",
    },
    "en": {
        "held_back": "{count} photo(s) held back by the safety filter.",
        "all_held_back": "The safety filter held back all {count} photo(s). Please try another "
        "prompt.",
        "left": "Photos left today: {left}.",
        "ready": "Done: {count} photos.",
        "failed": "❌ The photos could not be made: {reason}.\n\nThey do not count toward "
        "today's limit; you can try again.",
        "timeout": "the image service did not finish in time",
        "interrupted": "the request was interrupted before it reached the image service",
        "refused": "the image service refused the request",
        "unknown": "the image service reported an error",
        "again": "More like this",
        "try_again": "Try again",
        "new": "New prompt",
        "mine": "My photos",
    },
}

# Words of a failure's cause (FAL's or the reconciler's) -> the sentence the person reads.
_REASONS = (
    (("did not finish", "timeout", "timed out"), "timeout"),
    (("interrupted",), "interrupted"),
    (("422", "invalid", "refused", "validation"), "refused"),
)


def caption(text: str, held_back: int, language: str) -> str:
    """A photo's caption (HTML): the style's name or the prompt, escaped, within 1024."""
    note = ""
    if held_back:
        note = "\n\n" + _TEXTS["en" if language == "en" else "ru"]["held_back"].format(
            count=held_back
        )
    # Telegram counts the caption after entity parsing, where "&amp;" is one character: the
    # limit applies to the text as shown, so it is cut before escaping.
    room = MAX_CAPTION_CHARS - len(note)
    shown = text if len(text) <= room else text[: room - 1] + "…"
    return html.escape(shown) + note


def _buttons(
    texts: dict[str, str], generation_id: str, avatar_id: str, failed: bool
) -> dict[str, Any]:
    again = texts["try_again" if failed else "again"]
    rows = [
        [{"text": again, "callback_data": CALLBACK_AGAIN.format(generation_id=generation_id)}],
        [
            {"text": texts["new"], "callback_data": CALLBACK_NEW.format(avatar_id=avatar_id)},
            {"text": texts["mine"], "callback_data": CALLBACK_MINE},
        ],
    ]
    return {"inline_keyboard": rows}


def completed(
    chat_id: int,
    generation_id: str,
    avatar_id: str,
    label: str,
    urls: Sequence[str],
    held_back: int,
    photos_left: int,
    language_code: str | None,
) -> Message:
    """The photos that passed the safety checker: one photo, an album, or a text if none."""
    lang = language(language_code)
    texts = _TEXTS[lang]
    markup = _buttons(texts, generation_id, avatar_id, failed=False)
    left = texts["left"].format(left=photos_left)
    if not urls:
        text = texts["all_held_back"].format(count=held_back) + "\n" + left
        return Message(chat_id, text, markup)
    if len(urls) == 1:
        text = caption(label, held_back, lang)
        return Message(chat_id, text, markup, MessageType.PHOTO, ({"url": urls[0]},))
    media = tuple(
        {"url": url, "caption": caption(label, 0, lang)} if index == 0 else {"url": url}
        for index, url in enumerate(urls)
    )
    lines = [texts["ready"].format(count=len(urls))]
    if held_back:
        lines.append(texts["held_back"].format(count=held_back))
    lines.append(left)
    return Message(chat_id, "\n".join(lines), markup, MessageType.ALBUM, media)


def failed(
    chat_id: int, generation_id: str, avatar_id: str, error: str | None, language_code: str | None
) -> Message:
    """The failure in plain words, with a button to try the same again."""
    texts = _TEXTS[language(language_code)]
    words = (error or "").lower()
    reason = next((key for keys, key in _REASONS if any(k in words for k in keys)), "unknown")
    text = texts["failed"].format(reason=texts[reason])
    if error and reason in ("refused", "unknown"):
        # FAL's own words, short and escaped, for the person who wants to know (or /help).
        text += f"\n\n<i>{html.escape(shorten(error, MAX_REASON_CHARS))}</i>"
    return Message(chat_id, text, _buttons(texts, generation_id, avatar_id, failed=True))
