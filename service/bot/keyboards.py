"""Inline keyboards and the callback data their buttons carry (at most 64 bytes each)."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from service.bot.styles import FRAMES, STYLES, frame_label
from service.bot.texts import Lang, label
from service.fal.flux_lora import MAX_IMAGES, MIN_IMAGES
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
# Generation: the conversation's steps, and the buttons under its results (the outbox renders
# those too, so their data is fixed by the contract between the two processes).
GEN_STYLE = "gen:style:{key}"
GEN_OWN = "gen:own"
GEN_FRAME = "gen:frame:{frame}"
GEN_COUNT = "gen:count:{count}"
GEN_AGAIN = "gen:again:{generation_id}"
GEN_NEW = "gen:new:{avatar_id}"
GEN_MINE = "gen:mine"
GEN_SEND = "gen:send:{generation_id}"

# Patterns for the handlers; the avatar id is the last part.
TYPE_PATTERN = r"^type:(portrait|style)$"
AVATAR_ACTION_PATTERN = r"^avatar:(refresh|cancel|retry|discard):([0-9a-f]{1,32})$"
GEN_ENTRY_PATTERN = r"^(avatar:generate|gen:new):([0-9a-f]{1,32})$"
GEN_STYLE_PATTERN = r"^gen:style:([a-z]{1,16})$"
GEN_OWN_PATTERN = r"^gen:own$"
GEN_FRAME_PATTERN = r"^gen:frame:(portrait|square|landscape)$"
GEN_COUNT_PATTERN = r"^gen:count:([1-4])$"
GEN_AGAIN_PATTERN = r"^gen:again:([0-9a-f]{1,32})$"
GEN_MINE_PATTERN = r"^gen:mine$"
GEN_SEND_PATTERN = r"^gen:send:([0-9a-f]{1,32})$"


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


def generate_action(lang: Lang, avatar_id: str, name: str) -> list[InlineKeyboardButton]:
    return [_button(label(lang, "btn_generate", name), GENERATE.format(avatar_id=avatar_id))]


def styles(lang: Lang) -> InlineKeyboardMarkup:
    chosen = [_button(s.label(lang), GEN_STYLE.format(key=s.key)) for s in STYLES]
    pairs = [chosen[i : i + 2] for i in range(0, len(chosen), 2)]
    return InlineKeyboardMarkup([*pairs, [_button(label(lang, "btn_gen_own"), GEN_OWN)]])


def frames(lang: Lang) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [[_button(frame_label(f, lang), GEN_FRAME.format(frame=f.name.lower()))] for f in FRAMES]
    )


def counts(lang: Lang) -> InlineKeyboardMarkup:
    numbers = range(MIN_IMAGES, MAX_IMAGES + 1)
    return InlineKeyboardMarkup([[_button(str(n), GEN_COUNT.format(count=n)) for n in numbers]])


def generation_failed(lang: Lang, generation_id: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [_button(label(lang, "btn_gen_again"), GEN_AGAIN.format(generation_id=generation_id))],
            [_button(label(lang, "btn_gen_mine"), GEN_MINE)],
        ]
    )


def resend(lang: Lang, numbered: list[tuple[int, str]]) -> list[list[InlineKeyboardButton]]:
    """One "Send again #n" button per finished generation, two to a row."""
    buttons = [
        _button(label(lang, "btn_gen_send", str(n)), GEN_SEND.format(generation_id=gid))
        for n, gid in numbered
    ]
    return [buttons[i : i + 2] for i in range(0, len(buttons), 2)]


def rows(buttons: list[list[InlineKeyboardButton]]) -> InlineKeyboardMarkup | None:
    return InlineKeyboardMarkup(buttons) if buttons else None
