"""Abandoned conversations: ended after CONVERSATION_TIMEOUT_SECONDS, their drafts dropped.

python-telegram-bot's own conversation timeout lives in the process (a job per conversation)
and is not restored from a persistence, so a conversation continued after a restart would
never time out. The timeout is kept in the database instead: every step of a conversation
rewrites its `bot_state` row, and a sweep ends the rows left unwritten for the timeout,
whether this process or an earlier one wrote them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from telegram import Update
from telegram.error import TelegramError
from telegram.ext import Application, BaseHandler, ContextTypes, ConversationHandler

from service.bot.drafts import DRAFT_KEY, GENERATION_KEY
from service.bot.persistence import conversation_of
from service.bot.services import Services
from service.bot.texts import lang_of, t
from service.store import bot_state
from service.store.bot_state import Scope
from service.store.models import User, utcnow

log = structlog.get_logger("service.bot.timeouts")

# What a conversation keeps half-made in the person's user_data; dropped when it ends.
HALF_MADE_KEYS: list[str] = [DRAFT_KEY]
# Set by the sweep in the person's user_data: their next update ends the conversation that
# python-telegram-bot still holds in memory at its old step.
EXPIRED_KEY = "conversation_expired"

Callback = Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, object]]
BotApplication = Application[Any, Any, Any, Any, Any, Any]


def sweep_interval(timeout: float) -> float:
    # Often enough that a conversation ends within a tenth of its timeout, at most a minute.
    return min(60.0, max(0.2, timeout / 10))


def expiring(
    conversation: ConversationHandler[ContextTypes.DEFAULT_TYPE],
    on_expired: Callback,
) -> ConversationHandler[ContextTypes.DEFAULT_TYPE]:
    """Make every step of `conversation` end it when the sweep has expired it: the update is
    answered by `on_expired` (the menu) instead of the step it would have been."""
    steps: dict[int, BaseHandler[Any, Any, Any]] = {
        id(h): h
        for h in (
            *(h for step in conversation.states.values() for h in step),
            *conversation.fallbacks,
        )
    }
    for handler in steps.values():
        handler.callback = _ending_if_expired(handler.callback, on_expired)
    for handler in conversation.entry_points:
        handler.callback = _starting_afresh(handler.callback)
    return conversation


def _starting_afresh(entry: Callback) -> Callback:
    @functools.wraps(entry)
    async def started(update: Update, context: ContextTypes.DEFAULT_TYPE) -> object:
        # A new conversation: what the sweep noted about the old one no longer applies.
        if context.user_data is not None:
            context.user_data.pop(EXPIRED_KEY, None)
        return await entry(update, context)

    return started


def _ending_if_expired(step: Callback, on_expired: Callback) -> Callback:
    @functools.wraps(step)
    async def checked(update: Update, context: ContextTypes.DEFAULT_TYPE) -> object:
        if context.user_data is not None and context.user_data.pop(EXPIRED_KEY, None):
            await on_expired(update, context)
            return ConversationHandler.END
        return await step(update, context)

    return checked


@dataclass(frozen=True)
class Ended:
    chat_id: int
    user_id: int
    language: str | None
    # The text that tells the person; a conversation's step is also expired in memory.
    text: str
    conversation: bool


async def sweep(application: BotApplication, svc: Services, idle_seconds: float) -> int:
    """End what was left for `idle_seconds` (a conversation's step, a generation's choices);
    tell each person. Returns how many ended."""
    before = utcnow() - dt.timedelta(seconds=idle_seconds)

    async def take(session: AsyncSession) -> list[Ended]:
        ended = []
        for stored_key in await bot_state.idle(session, Scope.CONVERSATION, before):
            _, key = conversation_of(stored_key)
            chat_id, user_id = int(key[0]), int(key[-1])
            await bot_state.save(session, Scope.CONVERSATION, stored_key, None, utcnow())
            language = await _language(session, user_id)
            ended.append(Ended(chat_id, user_id, language, "conversation_timed_out", True))
        # The photos being chosen live in the person's data alone (no conversation step):
        # their row, rewritten after each of the person's updates, tells how long ago.
        for stored_key, data in (await bot_state.idle(session, Scope.USER, before)).items():
            if isinstance(data, dict) and GENERATION_KEY in data:
                user_id = int(stored_key)
                language = await _language(session, user_id)
                ended.append(Ended(user_id, user_id, language, "generation_timed_out", False))
        return ended

    ended = await svc.transaction(take)
    minutes = max(1, round(idle_seconds / 60))
    for end in ended:
        data = application.user_data.get(end.user_id)
        if data is not None:
            for key in HALF_MADE_KEYS if end.conversation else [GENERATION_KEY]:
                data.pop(key, None)
            if end.conversation:
                data[EXPIRED_KEY] = True
        # Written even when memory held nothing (a row an earlier process left).
        application.mark_data_for_update_persistence(user_ids=end.user_id)
    if ended:
        # Stored before anyone is told: what the message says is already true when it
        # arrives, and a crash between the two loses a notice rather than sending it twice.
        await application.update_persistence()
    for end in ended:
        try:
            await application.bot.send_message(
                end.chat_id, t(lang_of(end.language), end.text, minutes=minutes)
            )
        except TelegramError as exc:
            log.warning("timeout_message_failed", chat_id=end.chat_id, error=str(exc))
        log.info(end.text, chat_id=end.chat_id, idle_seconds=idle_seconds)
    return len(ended)


async def _language(session: AsyncSession, telegram_id: int) -> str | None:
    found = await session.scalar(select(User.language_code).where(User.telegram_id == telegram_id))
    return found if isinstance(found, str) else None


async def run_forever(application: BotApplication, svc: Services, idle_seconds: float) -> None:
    interval = sweep_interval(idle_seconds)
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep(application, svc, idle_seconds)
        except Exception:
            # The next round tries again; a database outage must not end the bot.
            log.exception("conversation_sweep_failed")


async def persist_now(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """After every update (the last handler group): its conversation data to the database
    now, not on the persistence's timer, so a crash a moment later loses nothing answered."""
    if update.effective_user is not None:
        context.application.mark_data_for_update_persistence(user_ids=update.effective_user.id)
    await context.application.update_persistence()
