"""Inline keyboards and the callback data their buttons carry (at most 64 bytes each)."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from service.bot.texts import Lang, label
from service.jobs.outcomes import CALLBACK_CREATE, CALLBACK_GENERATE, CALLBACK_MY_AVATARS

CREATE = CALLBACK_CREATE
AVATARS = CALLBACK_MY_AVATARS
GENERATE = CALLBACK_GENERATE
HELP = "help"
TYPE = "type:{training_type}"
PHOTOS_DONE = "photos:done"
TRAIN_START = "train:start"
TRAIN_CANCEL = "train:cancel"
REFRESH = "avatar:refresh:{avatar_id}"
STOP = "avatar:cancel:{avatar_id}"
RETRY = "avatar:retry:{avatar_id}"
DISCARD = "avatar:discard:{avatar_id}"

# Patterns for the handlers; the avatar id is the last part.
TYPE_PATTERN = r"^type:(portrait|style)$"
AVATAR_ACTION_PATTERN = r"^avatar:(refresh|cancel|retry|discard|generate):([0-9a-f]{1,32})$"


def _button(text: str, data: str) -> InlineKeyboardButton:
    return InlineKeyboardButton(text, callback_data=data)


def main_menu(lang: Lang) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [_button(label(lang, "btn_create"), CREATE)],
            [_button(label(lang, "btn_avatars"), AVATARS)],
            [_button(label(lang, "btn_help"), HELP)],
        ]
    )


def training_types(lang: Lang) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                _button(label(lang, "btn_portrait"), TYPE.format(training_type="portrait")),
                _button(label(lang, "btn_style"), TYPE.format(training_type="style")),
            ]
        ]
    )


def photos_done(lang: Lang) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[_button(label(lang, "btn_done"), PHOTOS_DONE)]])


def summary(lang: Lang) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [_button(label(lang, "btn_start"), TRAIN_START)],
            [_button(label(lang, "btn_cancel"), TRAIN_CANCEL)],
        ]
    )


def draft_actions(lang: Lang, avatar_id: str, name: str) -> list[InlineKeyboardButton]:
    return [
        _button(label(lang, "btn_retry", name), RETRY.format(avatar_id=avatar_id)),
        _button(label(lang, "btn_discard", name), DISCARD.format(avatar_id=avatar_id)),
    ]


def training_actions(lang: Lang, avatar_id: str, name: str) -> list[InlineKeyboardButton]:
    return [
        _button(label(lang, "btn_refresh", name), REFRESH.format(avatar_id=avatar_id)),
        _button(label(lang, "btn_stop", name), STOP.format(avatar_id=avatar_id)),
    ]


def rows(buttons: list[list[InlineKeyboardButton]]) -> InlineKeyboardMarkup | None:
    return InlineKeyboardMarkup(buttons) if buttons else None
