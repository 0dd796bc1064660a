"""The bot's texts: every command in /help, and a next step in every refusal, in both languages."""

from __future__ import annotations

import re

import pytest

from service.bot.app import COMMANDS
from service.bot.texts_en import EN
from service.bot.texts_ru import RU

TEXTS = {"ru": RU, "en": EN}
# Refusals and dead ends: each must point somewhere (a command, or a button it names). Over the
# day's quota, "gen_fewer" (when some are left) and "gen_free_in" follow "gen_over_quota".
REFUSALS = (
    "photo_duplicate", "photo_too_small", "not_image", "file_too_big", "too_many",
    "total_too_big", "too_few", "nothing_to_cancel", "already_training",
    "already_training_unnamed", "kept_draft", "photos_gone", "not_found", "outdated",
    "photo_outside", "apology", "gen_no_avatars", "gen_fewer", "gen_too_many_running",
    "gen_not_counted", "gen_outdated", "gen_mine_empty", "conversation_timed_out",
    "generation_timed_out",
)  # fmt: skip
# What counts as a next step: a command, a named button, or sending/trying something.
NEXT_STEP = re.compile(
    r"/[a-z]+|«[^»]+»|“[^”]+”|"
    r"\b(send|press|try|wait|choose|пришлите|нажмите|попробуйте|дождитесь|отправьте|выберите)\b",
    re.IGNORECASE,
)


@pytest.mark.parametrize("language", ["ru", "en"])
def test_help_names_every_command_of_the_menu_and_done(language: str) -> None:
    help_text = TEXTS[language]["help"]
    for command, _ in COMMANDS[language]:
        assert f"/{command}" in help_text, command
    assert "/done" in help_text


@pytest.mark.parametrize("language", ["ru", "en"])
@pytest.mark.parametrize("key", REFUSALS)
def test_every_refusal_says_what_to_do_next(language: str, key: str) -> None:
    assert NEXT_STEP.search(TEXTS[language][key]), TEXTS[language][key]
