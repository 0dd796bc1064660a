"""The texts of outcomes: language, escaping, length, and the buttons each outcome carries."""

from __future__ import annotations

import pytest

from service.jobs.outcomes import (
    CALLBACK_CREATE,
    CALLBACK_GENERATE,
    CALLBACK_MY_AVATARS,
    MAX_NAME_CHARS,
    language,
    render_outcome,
    shorten,
)


def buttons(markup: dict[str, object]) -> list[str]:
    rows = markup["inline_keyboard"]
    assert isinstance(rows, list)
    return [button["callback_data"] for row in rows for button in row]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("en", "en"),
        ("en-GB", "en"),
        ("EN", "en"),
        ("ru", "ru"),
        ("kk", "ru"),
        (None, "ru"),
        ("", "ru"),
    ],
)
def test_english_speakers_get_english_everyone_else_russian(
    code: str | None, expected: str
) -> None:
    assert language(code) == expected


def test_a_completed_avatar_offers_to_generate_with_it() -> None:
    rendered = render_outcome("completed", "a1b2", "Ann", "portrait", "en")
    assert "Ann" in rendered.text and "ready" in rendered.text
    assert buttons(rendered.reply_markup) == [
        CALLBACK_GENERATE.format(avatar_id="a1b2"),
        CALLBACK_MY_AVATARS,
    ]


def test_a_failed_avatar_says_what_to_do_and_offers_to_create_again() -> None:
    rendered = render_outcome("failed", "a1b2", "Ann", "style", None)
    assert "Не удалось обучить" in rendered.text and "/help" in rendered.text
    assert "стилевой" in rendered.text
    assert buttons(rendered.reply_markup) == [CALLBACK_CREATE, CALLBACK_MY_AVATARS]


def test_a_cancelled_avatar_has_only_the_list() -> None:
    rendered = render_outcome("cancelled", "a1b2", "Ann", "portrait", "ru")
    assert "отменено" in rendered.text
    assert buttons(rendered.reply_markup) == [CALLBACK_MY_AVATARS]


def test_a_name_is_shown_literally_never_as_markup() -> None:
    rendered = render_outcome("completed", "a1", "<b>Ann</b> & <i>Co", "portrait", "en")
    assert "&lt;b&gt;Ann&lt;/b&gt; &amp; &lt;i&gt;Co" in rendered.text
    assert "<i>" not in rendered.text


def test_a_long_name_is_cut_so_the_message_always_fits() -> None:
    name = "x" * 5000
    assert len(shorten(name)) == MAX_NAME_CHARS and shorten(name).endswith("…")
    assert shorten("  two\n  words ") == "two words"
    rendered = render_outcome("failed", "a1", name, "portrait", "en")
    assert len(rendered.text) < 1000


def test_every_callback_fits_telegrams_64_bytes() -> None:
    longest_id = "f" * 32
    for data in (
        CALLBACK_GENERATE.format(avatar_id=longest_id),
        CALLBACK_CREATE,
        CALLBACK_MY_AVATARS,
    ):
        assert len(data.encode()) <= 64
