"""The main menu, help, and what the bot says to anything outside a conversation."""

from __future__ import annotations

from telegram import Update
from telegram.ext import ContextTypes

from service.bot import keyboards
from service.bot.drafts import GENERATION_KEY
from service.bot.photos import MAX_PHOTOS, MIN_PHOTOS, MIN_SIDE
from service.bot.services import answer_tap, lang, say, services
from service.bot.texts import t
from service.store.users import ensure_user


async def show_menu(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet the person, record them as a user, and show the main menu."""
    person, chat = update.effective_user, update.effective_chat
    assert person is not None and chat is not None
    if context.user_data is not None:
        # Back at the start: a half-chosen generation is dropped, as /start drops a draft.
        context.user_data.pop(GENERATION_KEY, None)
    await services(context).transaction(
        lambda session: ensure_user(
            session,
            person.id,
            username=person.username,
            first_name=person.first_name,
            language_code=person.language_code,
        )
    )
    language = lang(update)
    await chat.send_message(
        t(language, "start", name=person.first_name, min=MIN_PHOTOS, max=MAX_PHOTOS),
        reply_markup=keyboards.main_menu(language),
    )


async def show_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain how creating an avatar works."""
    await answer_tap(update)
    chat = update.effective_chat
    assert chat is not None
    language = lang(update)
    await chat.send_message(
        t(
            language,
            "help",
            min=MIN_PHOTOS,
            max=MAX_PHOTOS,
            px=MIN_SIDE,
            per_day=services(context).settings.generations_per_day,
        ),
        reply_markup=keyboards.main_menu(language),
    )


async def nothing_to_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say there is nothing to cancel (no conversation is going on)."""
    await say(update, t(lang(update), "nothing_to_cancel"))


async def photo_outside(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain how to start creating an avatar when photos arrive out of the blue."""
    language = lang(update)
    await say(update, t(language, "photo_outside"), reply_markup=keyboards.main_menu(language))


async def text_outside(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Point at the menu."""
    await say(update, t(lang(update), "menu_hint"))


async def outdated_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a press on a button whose conversation is over."""
    query = update.callback_query
    assert query is not None
    await query.answer(t(lang(update), "outdated"))
