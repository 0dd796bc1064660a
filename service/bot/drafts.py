"""The avatar a create conversation is building: its steps, where it is kept, the first step."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from telegram import CallbackQuery, Update
from telegram.ext import ContextTypes, ConversationHandler

from service.bot.photos import MAX_NAME_CHARS, Draft
from service.bot.services import answer_tap, lang, say
from service.bot.texts import t

# Conversation states.
NAME, TRAINING_TYPE, PHOTOS, CONFIRM = range(4)
END = ConversationHandler.END

DRAFT_KEY = "draft"
# The generation being chosen (service/bot/generate.py). A person is in one conversation at a
# time: starting an avatar drops a half-chosen generation, and the other way round.
GENERATION_KEY = "generation"


def draft_of(context: ContextTypes.DEFAULT_TYPE) -> Draft | None:
    found: Any = context.user_data.get(DRAFT_KEY) if context.user_data is not None else None
    return found if isinstance(found, Draft) else None


def forget(context: ContextTypes.DEFAULT_TYPE) -> None:
    if context.user_data is not None:
        context.user_data.pop(DRAFT_KEY, None)


async def pressed(update: Update) -> CallbackQuery:
    """The button press this update is, answered (Telegram stops the button's spinner)."""
    query = update.callback_query
    assert query is not None
    await query.answer()
    return query


def hint(
    key: str, state: int
) -> Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, int]]:
    """A handler that says the text `key` and keeps the conversation at `state`."""

    async def handler(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
        await say(update, t(lang(update), key))
        return state

    handler.__doc__ = f"Say {key!r} and stay at this step."
    return handler


async def ask_name(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Begin a new avatar: forget any half-made one and ask for its name."""
    await answer_tap(update)
    forget(context)
    if context.user_data is not None:
        context.user_data.pop(GENERATION_KEY, None)
    await say(update, t(lang(update), "ask_name", max=MAX_NAME_CHARS))
    return NAME
