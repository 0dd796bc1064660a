"""Telegram's refusals sorted into send outcomes: 429 waits, 5xx retries, 403 stops, and so on."""

from __future__ import annotations

import os
from datetime import timedelta

import httpx
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

from service.outbox.sender import SendResult
from service.outbox.states import SendOutcome

# python-telegram-bot 22 warns on every RetryAfter unless this opts in to its future behaviour
# (retry_after as a timedelta), which failed() already handles. The library reads it itself on
# every call: it is a switch of the library, not a setting of ours.
os.environ.setdefault("PTB_TIMEDELTA", "true")

# How Telegram says it could not use a photo's URL (or file_id): we fetch and upload it then.
_URL_REFUSALS = (
    "failed to get http url content",
    "wrong file identifier/http url specified",
    "wrong type of the web page content",
    "webpage_curl_failed",
    "webpage_media_empty",
    "too big",
)


def url_refused(exc: TelegramError) -> bool:
    """A 400 that says Telegram could not fetch or use the photo at the URL it was given."""
    text = str(exc).lower()
    return isinstance(exc, BadRequest) and any(refusal in text for refusal in _URL_REFUSALS)


def failed(exc: TelegramError) -> SendResult:
    """The outcome of a call that raised `exc` (never a success)."""
    if isinstance(exc, RetryAfter):
        retry_after = exc.retry_after
        seconds = (
            retry_after.total_seconds()
            if isinstance(retry_after, timedelta)
            else float(retry_after)
        )
        return SendResult(SendOutcome.RATE_LIMITED, retry_after=seconds, error=str(exc))
    if isinstance(exc, Forbidden):
        return SendResult(SendOutcome.UNDELIVERABLE, error=str(exc))
    if isinstance(exc, ChatMigrated):
        return SendResult(
            SendOutcome.RETRY, error=str(exc), migrate_to_chat_id=int(exc.new_chat_id)
        )
    if isinstance(exc, BadRequest):
        # Checked before NetworkError, its base class: a 400 is final.
        return SendResult(SendOutcome.UNDELIVERABLE, error=str(exc))
    if isinstance(exc, TimedOut):
        return SendResult(_timeout_outcome(exc), error=f"timed out: {exc}")
    if isinstance(exc, InvalidToken):
        # Our configuration, not the message: keep it and try again after the operator acts.
        return SendResult(SendOutcome.RETRY, error=f"invalid token: {exc}")
    # NetworkError (5xx, refused connections) and anything else Telegram may raise.
    return SendResult(SendOutcome.RETRY, error=str(exc))


def _timeout_outcome(exc: NetworkError) -> SendOutcome:
    """A timeout before the request left (connect, pool, or while writing it: Telegram acts
    only on a whole request) cannot have delivered anything."""
    cause = exc.__cause__
    if isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout | httpx.WriteTimeout):
        return SendOutcome.RETRY
    if "pool" in str(exc).lower():
        return SendOutcome.RETRY
    return SendOutcome.UNCERTAIN
