"""The sending seam: one sendMessage through python-telegram-bot, sorted into what to do next."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
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

# python-telegram-bot 22 warns on every RetryAfter unless this opts in to its future behaviour
# (retry_after as a timedelta), which send() already handles.
os.environ.setdefault("PTB_TIMEDELTA", "true")

READ_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0


class Verdict(enum.StrEnum):
    SENT = "sent"
    # Telegram said "too many requests": try again after retry_after, nothing was sent.
    RATE_LIMITED = "rate_limited"
    # Not delivered and worth another try later (5xx, connection refused, connect timeout).
    RETRY = "retry"
    # Telegram will never accept it (blocked, chat not found, malformed): stop now.
    UNDELIVERABLE = "undeliverable"
    # The request went out and no answer came back: it may have been delivered.
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class SendResult:
    verdict: Verdict
    message_id: int | None = None
    retry_after: float = 0.0
    error: str | None = None
    migrate_to_chat_id: int | None = None


def bot_for(token: str, api_url: str, pool_size: int = 32) -> Bot:
    """A Bot pointed at `api_url` (Telegram, a self-hosted Bot API server, or a test server)."""
    api_url = api_url.rstrip("/")
    request = HTTPXRequest(
        connection_pool_size=pool_size,
        read_timeout=READ_TIMEOUT_SECONDS,
        write_timeout=READ_TIMEOUT_SECONDS,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        pool_timeout=READ_TIMEOUT_SECONDS,
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


class TelegramSender:
    """Sends HTML messages; never raises for Telegram's answers, returns a verdict instead."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def start(self) -> None:
        # Calls getMe: a wrong token or an unreachable server shows up here, not mid-send.
        await self.bot.initialize()

    async def stop(self) -> None:
        await self.bot.shutdown()

    async def send(self, chat_id: int, text: str, markup: dict[str, Any] | None) -> SendResult:
        try:
            message = await self.bot.send_message(
                chat_id=chat_id,
                text=text,
                parse_mode=ParseMode.HTML,
                reply_markup=keyboard(markup),
                disable_notification=False,
            )
        except RetryAfter as exc:
            retry_after = exc.retry_after
            seconds = (
                retry_after.total_seconds()
                if isinstance(retry_after, timedelta)
                else float(retry_after)
            )
            return SendResult(Verdict.RATE_LIMITED, retry_after=seconds, error=str(exc))
        except Forbidden as exc:
            return SendResult(Verdict.UNDELIVERABLE, error=str(exc))
        except ChatMigrated as exc:
            return SendResult(
                Verdict.RETRY, error=str(exc), migrate_to_chat_id=int(exc.new_chat_id)
            )
        except BadRequest as exc:
            # Checked before NetworkError, its base class: a 400 is final.
            return SendResult(Verdict.UNDELIVERABLE, error=str(exc))
        except TimedOut as exc:
            return SendResult(_timeout_verdict(exc), error=f"timed out: {exc}")
        except InvalidToken as exc:
            # Our configuration, not the message: keep it and try again after the operator acts.
            return SendResult(Verdict.RETRY, error=f"invalid token: {exc}")
        except NetworkError as exc:
            return SendResult(Verdict.RETRY, error=str(exc))
        except TelegramError as exc:
            return SendResult(Verdict.RETRY, error=str(exc))
        return SendResult(Verdict.SENT, message_id=message.message_id)


def _timeout_verdict(exc: TimedOut) -> Verdict:
    """A timeout before the request left (connect, pool) cannot have delivered anything."""
    cause = exc.__cause__
    if isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout):
        return Verdict.RETRY
    if "pool" in str(exc).lower():
        return Verdict.RETRY
    return Verdict.UNCERTAIN
