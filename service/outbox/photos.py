"""Photos and albums to Telegram: by file_id or URL, else downloaded and uploaded, else as files.

Telegram fetches a URL itself (at most 5 MB). When it refuses the URL, the photo is downloaded
here (download.py) and uploaded (at most 10 MB as a photo); a photo Telegram will not take even
so goes as a document. An album's follow-up text comes after the album, and a checkpoint in
between records the album as sent, so a failure of the follow-up never sends the album again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from telegram import Bot, InlineKeyboardMarkup, InputFile, InputMediaDocument, InputMediaPhoto
from telegram import Message as Sent
from telegram.constants import ParseMode
from telegram.error import BadRequest, TelegramError

from service.outbox.answers import failed, url_refused
from service.outbox.download import DownloadFailed, download
from service.outbox.messages import Message, album_sent
from service.outbox.sender import Checkpoint, SendResult
from service.outbox.states import SendOutcome

MAX_PHOTO_UPLOAD = 10 * 1024 * 1024
# Sending up to 10 MB (an album: several) takes longer than a text's write timeout. With the
# URL attempt, the downloads and the answer, a send stays well inside OUTBOX_LEASE_SECONDS.
UPLOAD_WRITE_TIMEOUT = 45.0
Entry = dict[str, Any]


def _source(entry: Entry) -> str:
    # A file_id never expires; FAL's URLs do.
    return str(entry.get("file_id") or entry["url"])


def _sent_media(media: Sequence[Entry], sent: Sequence[Sent], *, album: bool) -> tuple[Entry, ...]:
    """The entries with what Telegram answered: the file_id of the largest size of each photo
    (a document's file_id under "document_file_id": it cannot be resent as a photo)."""
    entries = []
    for entry, message in zip(media, sent, strict=True):
        updated = dict(entry)
        if message.photo:
            updated["file_id"] = message.photo[-1].file_id
        elif message.document is not None:
            updated["document_file_id"] = message.document.file_id
        if album:
            updated["message_id"] = message.message_id
        entries.append(updated)
    return tuple(entries)


async def _uploads(media: Sequence[Entry]) -> list[bytes]:
    # At once: an album's downloads take as long as the slowest (each is bounded), not the sum.
    fetched = await asyncio.gather(
        *(download(str(entry["url"])) for entry in media), return_exceptions=True
    )
    for outcome in fetched:
        if isinstance(outcome, BaseException):
            raise outcome
    return [data for data in fetched if isinstance(data, bytes)]


async def send_photo(bot: Bot, message: Message, markup: InlineKeyboardMarkup | None) -> SendResult:
    """sendPhoto with the text as its caption; TelegramError is the caller's to sort."""
    if len(message.media) != 1:
        return SendResult(SendOutcome.UNDELIVERABLE, error=f"a photo of {len(message.media)}")
    (entry,) = message.media
    common: dict[str, Any] = {
        "chat_id": message.chat_id,
        "caption": message.text or None,
        "parse_mode": ParseMode.HTML,
        "reply_markup": markup,
    }
    try:
        sent = await bot.send_photo(photo=_source(entry), **common)
    except BadRequest as exc:
        if not (url_refused(exc) and entry.get("url")):
            raise
        try:
            (data,) = await _uploads([entry])
        except DownloadFailed as failure:
            return SendResult(failure.outcome, error=f"{exc}; then {failure}")
        sent = await _upload_photo(bot, data, common)
    return SendResult(
        SendOutcome.SENT,
        message_id=sent.message_id,
        media=_sent_media([entry], [sent], album=False),
    )


async def _upload_photo(bot: Bot, data: bytes, common: dict[str, Any]) -> Sent:
    if len(data) <= MAX_PHOTO_UPLOAD:
        try:
            file = InputFile(data, filename="photo.jpg")
            return await bot.send_photo(photo=file, **common, write_timeout=UPLOAD_WRITE_TIMEOUT)
        except BadRequest:
            pass  # not a photo Telegram takes (size, dimensions, format): as a file then
    file = InputFile(data, filename="photo.jpg")
    return await bot.send_document(document=file, **common, write_timeout=UPLOAD_WRITE_TIMEOUT)


async def send_album(
    bot: Bot, message: Message, markup: InlineKeyboardMarkup | None, checkpoint: Checkpoint | None
) -> SendResult:
    """sendMediaGroup, the checkpoint, then the follow-up text with the buttons."""
    media = message.media
    if not 2 <= len(media) <= 10:
        return SendResult(SendOutcome.UNDELIVERABLE, error=f"an album of {len(media)} photos")
    if not album_sent(message):
        try:
            sent = await _send_group(bot, message.chat_id, media)
        except DownloadFailed as failure:
            return SendResult(failure.outcome, error=str(failure))
        media = _sent_media(media, sent, album=True)
        if checkpoint is not None:
            await checkpoint(
                SendResult(SendOutcome.SENT, message_id=sent[0].message_id, media=media)
            )
    first = int(media[0]["message_id"])
    if message.text:
        try:
            await bot.send_message(
                chat_id=message.chat_id,
                text=message.text,
                parse_mode=ParseMode.HTML,
                reply_markup=markup,
            )
        except TelegramError as exc:
            result = failed(exc)
            error = f"album sent; its follow-up: {result.error}"
            return dataclasses.replace(result, message_id=first, media=media, error=error)
    return SendResult(SendOutcome.SENT, message_id=first, media=media)


async def _send_group(bot: Bot, chat_id: int, media: Sequence[Entry]) -> Sequence[Sent]:
    def caption(index: int) -> dict[str, Any]:
        text = media[0].get("caption") if index == 0 else None
        return {"caption": text, "parse_mode": ParseMode.HTML} if text else {}

    try:
        items = [InputMediaPhoto(_source(e), **caption(i)) for i, e in enumerate(media)]
        return await bot.send_media_group(chat_id=chat_id, media=items)
    except BadRequest as exc:
        if not (url_refused(exc) and all(entry.get("url") for entry in media)):
            raise
        refusal = exc
    try:
        data = await _uploads(media)
    except DownloadFailed as failure:
        raise DownloadFailed(failure.outcome, f"{refusal}; then {failure}") from None
    if all(len(photo) <= MAX_PHOTO_UPLOAD for photo in data):
        photos = [
            InputMediaPhoto(InputFile(d, filename=f"photo{i}.jpg", attach=True), **caption(i))
            for i, d in enumerate(data)
        ]
        try:
            return await bot.send_media_group(
                chat_id=chat_id, media=photos, write_timeout=UPLOAD_WRITE_TIMEOUT
            )
        except BadRequest:
            pass  # photos Telegram will not take: the album goes as files
    files = [
        InputMediaDocument(InputFile(d, filename=f"photo{i}.jpg", attach=True), **caption(i))
        for i, d in enumerate(data)
    ]
    return await bot.send_media_group(
        chat_id=chat_id, media=files, write_timeout=UPLOAD_WRITE_TIMEOUT
    )
