"""What the bot's handlers share: the database, the FAL client, the settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from telegram import Message, Update
from telegram.ext import ContextTypes

from service.bot.texts import Lang, lang_of
from service.fal.queue import FalQueue
from service.settings import Settings
from service.store.engine import create_engine, run_transaction, sessionmaker

T = TypeVar("T")
SERVICES_KEY = "services"


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    fal: FalQueue

    @classmethod
    def open(cls, settings: Settings, fal_timeout: float | None = None) -> Services:
        """Open the engine and the HTTP client; call from inside the running event loop."""
        engine = create_engine(settings.database_url)
        # FAL never redirects its queue API; following one could carry the key elsewhere.
        http = httpx.AsyncClient(follow_redirects=False)
        fal = (
            FalQueue(settings.fal_key, settings.fal_queue_url, http)
            if fal_timeout is None
            else FalQueue(settings.fal_key, settings.fal_queue_url, http, timeout=fal_timeout)
        )
        return cls(settings, engine, sessionmaker(engine), http, fal)

    async def close(self) -> None:
        await self.http.aclose()
        await self.engine.dispose()

    async def transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        return await run_transaction(self.sessions, work)


def services(context: ContextTypes.DEFAULT_TYPE) -> Services:
    found: Any = context.bot_data.get(SERVICES_KEY)
    assert isinstance(found, Services), "Services are opened in the application's post_init"
    return found


def lang(update: Update) -> Lang:
    user = update.effective_user
    return lang_of(user.language_code if user else None)


async def say(update: Update, text: str, **kwargs: Any) -> Message:
    """Send `text` to the chat the update came from."""
    chat = update.effective_chat
    assert chat is not None
    return await chat.send_message(text, **kwargs)


async def answer_tap(update: Update) -> None:
    """Answer the button tap the update is, if it is one (Telegram shows a spinner until then)."""
    if update.callback_query:
        await update.callback_query.answer()
