"""What a notification sends (a text, a photo, an album of photos), as its outbox row holds it."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

from service.outbox.states import NotificationState

# Woken on commit; the elected dispatcher LISTENs on it where the database can wake listeners.
OUTBOX_CHANNEL = "outbox"


class MessageType(enum.StrEnum):
    TEXT = "text"  # sendMessage
    PHOTO = "photo"  # sendPhoto, `text` as its caption
    ALBUM = "album"  # sendMediaGroup: one outbox row, so a crash cannot send half of it twice


@dataclass(frozen=True)
class Message:
    """One outgoing Telegram message, rendered when its outcome is decided."""

    chat_id: int
    text: str
    reply_markup: dict[str, Any] | None = None
    message_type: MessageType = MessageType.TEXT
    # Photos and albums: {"url": ..., "file_id": ..., "caption": ...} per photo. After the send
    # also Telegram's "file_id" ("document_file_id" if sent as a file), and in an album the
    # photo's "message_id": the mark that the album went out (album_sent).
    media: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def album_sent(message: Message) -> bool:
    """Its album went out (each photo has its message_id): only the follow-up is left."""
    return (
        message.message_type is MessageType.ALBUM
        and bool(message.media)
        and all("message_id" in entry for entry in message.media)
    )


def telegram_messages(message: Message) -> int:
    """How many Telegram messages sending it makes: what the pacer counts it as."""
    if message.message_type is MessageType.ALBUM and not album_sent(message):
        return len(message.media) + (1 if message.text else 0)
    return 1


def row_values(
    dedupe_key: str,
    kind: str,
    message: Message,
    *,
    avatar_id: str | None,
    now: dt.datetime,
    generation_id: str | None = None,
) -> dict[str, Any]:
    """The outbox row's columns for `message`; one row per `dedupe_key`, ever.

    `kind` names the outcome (for example `completed`), for operators and metrics.
    """
    return {
        "dedupe_key": dedupe_key,
        "avatar_id": avatar_id,
        "generation_id": generation_id,
        "chat_id": message.chat_id,
        "kind": kind,
        "message_type": message.message_type.value,
        "text": message.text,
        "media": list(message.media) or None,
        "reply_markup": message.reply_markup,
        "state": NotificationState.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
