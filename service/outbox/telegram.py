"""The Telegram seam: one sendMessage through python-telegram-bot, sorted into send outcomes."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import httpx
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest

from service.outbox.messages import Message, MessageType
from service.outbox.sender import SendResult, not_supported
from service.outbox.states import SendOutcome
from service.settings import Settings

# python-telegram-bot 22 warns on every RetryAfter unless this opts in to its future behaviour
# (retry_after as a timedelta), which send() already handles. The library reads it itself on
# every call: it is a switch of the library, not a setting of ours.
os.environ.setdefault("PTB_TIMEDELTA", "true")


def bot_for(
    token: str,
    api_url: str,
    *,
    read_timeout: float,
    connect_timeout: float,
    pool_size: int = 32,
) -> Bot:
    """A Bot pointed at `api_url` (Telegram, a self-hosted Bot API server, or a test server)."""
    api_url = api_url.rstrip("/")
    request = HTTPXRequest(
        connection_pool_size=pool_size,
        read_timeout=read_timeout,
        write_timeout=read_timeout,
        connect_timeout=connect_timeout,
        pool_timeout=read_timeout,
    )
    return Bot(
        token,
        base_url=f"{api_url}/bot",
        base_file_url=f"{api_url}/file/bot",
        request=request,
    )


def keyboard(markup: dict[str, Any] | None) -> InlineKeyboardMarkup | None:
    if not markup:
        return None
    rows = [
        [
            InlineKeyboardButton(b["text"], callback_data=b.get("callback_data"), url=b.get("url"))
            for b in row
        ]
        for row in markup.get("inline_keyboard", [])
    ]
    return InlineKeyboardMarkup(rows)


def sender_for(settings: Settings) -> TelegramSender:
    """The sender the dispatcher uses: TELEGRAM_TOKEN at TELEGRAM_API_URL, with its timeouts."""
    bot = bot_for(
        settings.telegram_token,
        settings.telegram_api_url,
        read_timeout=settings.telegram_read_timeout_seconds,
        connect_timeout=settings.telegram_connect_timeout_seconds,
    )
    return TelegramSender(bot)


class TelegramSender:
    """Sends HTML texts; never raises for Telegram's answers, returns an outcome instead."""

    # Photos and albums (sendPhoto, sendMediaGroup) come with the generations.
    message_types = frozenset({MessageType.TEXT})

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def start(self) -> None:
        # Calls getMe: a wrong token or an unreachable server shows up here, not mid-send.
        await self.bot.initialize()

    async def stop(self) -> None:
        await self.bot.shutdown()

    async def send(self, message: Message) -> SendResult:
        if message.message_type not in self.message_types:
            return not_supported(message)
        try:
            sent = await self.bot.send_message(
                chat_id=message.chat_id,
                text=message.text,
                parse_mode=ParseMode.HTML,
                reply_markup=keyboard(message.reply_markup),
                disable_notification=False,
            )
        except RetryAfter as exc:
            retry_after = exc.retry_after
            seconds = (
                retry_after.total_seconds()
                if isinstance(retry_after, timedelta)
                else float(retry_after)
            )
            return SendResult(SendOutcome.RATE_LIMITED, retry_after=seconds, error=str(exc))
        except Forbidden as exc:
            return SendResult(SendOutcome.UNDELIVERABLE, error=str(exc))
        except ChatMigrated as exc:
            return SendResult(
                SendOutcome.RETRY, error=str(exc), migrate_to_chat_id=int(exc.new_chat_id)
            )
        except BadRequest as exc:
            # Checked before NetworkError, its base class: a 400 is final.
            return SendResult(SendOutcome.UNDELIVERABLE, error=str(exc))
        except TimedOut as exc:
            return SendResult(_timeout_outcome(exc), error=f"timed out: {exc}")
        except InvalidToken as exc:
            # Our configuration, not the message: keep it and try again after the operator acts.
            return SendResult(SendOutcome.RETRY, error=f"invalid token: {exc}")
        except NetworkError as exc:
            return SendResult(SendOutcome.RETRY, error=str(exc))
        except TelegramError as exc:
            return SendResult(SendOutcome.RETRY, error=str(exc))
        return SendResult(SendOutcome.SENT, message_id=sent.message_id)


def _timeout_outcome(exc: TimedOut) -> SendOutcome:
    """A timeout before the request left (connect, pool) cannot have delivered anything."""
    cause = exc.__cause__
    if isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout):
        return SendOutcome.RETRY
    if "pool" in str(exc).lower():
        return SendOutcome.RETRY
    return SendOutcome.UNCERTAIN
