"""Photos for the local Bot API server: sendPhoto, sendMediaGroup and sendDocument.

A photo comes by URL (the server fetches it as Telegram does, at most 5 MB, 20 MB for a
document), by multipart upload (10 MB, 50 MB for a document) or by the file_id of a photo this
server answered with before. Answers are real Message objects: `photo` is a list of PhotoSize,
smallest first, each with its own file_id. Refusals carry Telegram's own descriptions.
"""

from __future__ import annotations

import itertools
import secrets
import struct
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.fakes.telegram_api import ApiError, EntityParseError, parse_telegram_html

if TYPE_CHECKING:
    from tests.fakes.telegram_api import FakeBotApi

JsonDict = dict[str, Any]

MB = 1024 * 1024
LIMITS = {  # (by URL, by upload), as the Bot API documents them
    "photo": (5 * MB, 10 * MB),
    "document": (20 * MB, 50 * MB),
}
MAX_CAPTION_LENGTH = 1024
# Telegram's fetcher says who it is; image hosts (and tests) can tell its requests from ours.
FETCH_AGENT = "TelegramBot (like TwitterBot)"
# The longest side of each size Telegram keeps of a photo: thumbnails, then the photo itself.
PHOTO_SIDES = (90, 320, 800, 1280, 2560)

URL_FAILED = "Bad Request: failed to get HTTP URL content"
WRONG_SOURCE = "Bad Request: wrong file identifier/HTTP URL specified"
WRONG_TYPE = "Bad Request: wrong type of the web page content"
IMAGE_FAILED = "Bad Request: IMAGE_PROCESS_FAILED"
DIMENSIONS = "Bad Request: PHOTO_INVALID_DIMENSIONS"
# What Telegram's servers answer an uploaded photo over 10 MB (passed on by the Bot API).
UPLOAD_TOO_BIG = "Bad Request: PHOTO_SAVE_FILE_INVALID"
DOCUMENT_TOO_BIG = "Bad Request: file is too big"
CAPTION_TOO_LONG = "Bad Request: message caption is too long"
GROUP_SIZE = "Bad Request: wrong number of media specified: must be 2-10"
GROUP_MIXED = "Bad Request: documents can't be mixed with other media types"

MEDIA_METHODS = ("sendPhoto", "sendMediaGroup", "sendDocument")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG or PNG, read from its header; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        # Start-of-frame markers (not DHT C4, JPG C8, DAC CC) carry the size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and at + 9 <= len(data):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return int(width), int(height)
        at += 2 + length
    return None


@dataclass(frozen=True)
class Delivery:
    """One delivered sendPhoto / sendMediaGroup / sendDocument: what the person received."""

    method: str
    chat_id: int
    messages: list[JsonDict]
    # Per item: "url" (fetched by the server), "upload" or "file_id".
    sources: list[str]
    data: list[bytes] = field(repr=False)

    @property
    def caption(self) -> str | None:
        return self.messages[0].get("caption")

    @property
    def reply_markup(self) -> JsonDict | None:
        return self.messages[0].get("reply_markup")

    def file_ids(self) -> list[str]:
        """The file_id of each item's largest size (a document's own)."""
        return [
            m["photo"][-1]["file_id"] if "photo" in m else m["document"]["file_id"]
            for m in self.messages
        ]


@dataclass(frozen=True)
class _Stored:
    kind: str  # "photo" or "document"
    data: bytes
    answer: Any  # the PhotoSize list, or the Document


class MediaDesk:
    """The media methods of one FakeBotApi, and what they delivered."""

    def __init__(self, api: FakeBotApi) -> None:
        self.api = api
        self.fetch_timeout = 5.0
        self._deliveries: list[Delivery] = []
        self._stored: dict[str, _Stored] = {}
        self._numbers = itertools.count(1)
        self._groups = itertools.count(13_000_000_000)

    def handlers(self) -> dict[str, Any]:
        return {
            "sendPhoto": lambda p: self._send_one(p, "photo"),
            "sendDocument": lambda p: self._send_one(p, "document"),
            "sendMediaGroup": self._send_group,
        }

    # -- inspection ----------------------------------------------------------------------------

    def deliveries(self, method: str | None = None) -> list[Delivery]:
        with self.api._lock:
            return [d for d in self._deliveries if method is None or d.method == method]

    def albums(self) -> list[Delivery]:
        return self.deliveries("sendMediaGroup")

    def photos(self) -> list[Delivery]:
        return self.deliveries("sendPhoto")

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Delivery]:
        """Block until n deliveries (of any media method) were made; AssertionError if not."""
        deadline = time.monotonic() + timeout
        with self.api._calls_changed:
            while len(self._deliveries) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    calls = [(c.method, c.status, c.description) for c in self.api._calls]
                    raise AssertionError(
                        f"expected {n} media deliveries within {timeout}s, got "
                        f"{len(self._deliveries)}; calls (method, status, error): {calls!r}"
                    )
                self.api._calls_changed.wait(remaining)
            return list(self._deliveries)

    # -- methods -------------------------------------------------------------------------------

    def _send_one(self, params: JsonDict, kind: str) -> JsonDict:
        chat = self.api._chat(params)
        caption = self._caption(params)
        data, source, content = self._resolve(params.get(kind), params, kind)
        message = self._message(chat, caption, params.get("parse_mode"), kind, content)
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        method = "sendPhoto" if kind == "photo" else "sendDocument"
        self._delivered(Delivery(method, chat["id"], [message], [source], [data]))
        return message

    def _send_group(self, params: JsonDict) -> list[JsonDict]:
        chat = self.api._chat(params)
        items = params.get("media")
        if not isinstance(items, list) or not 2 <= len(items) <= 10:
            raise ApiError(400, GROUP_SIZE)
        kinds = {item.get("type") for item in items if isinstance(item, dict)}
        if len(kinds) != 1 or not kinds <= {"photo", "document"}:
            raise ApiError(400, GROUP_MIXED)
        # Every item is checked before anything is sent: Telegram refuses the group whole.
        resolved = []
        for item in items:
            kind = str(item["type"])
            resolved.append(
                (item, kind, self._caption(item), self._resolve(item.get("media"), params, kind))
            )
        group = str(next(self._groups))
        messages, sources, data = [], [], []
        for item, kind, caption, (bytes_, source, content) in resolved:
            message = self._message(chat, caption, item.get("parse_mode"), kind, content)
            message["media_group_id"] = group
            messages.append(message)
            sources.append(source)
            data.append(bytes_)
        self._delivered(Delivery("sendMediaGroup", chat["id"], messages, sources, data))
        return messages

    def _delivered(self, delivery: Delivery) -> None:
        with self.api._lock:
            self._deliveries.append(delivery)

    def _caption(self, params: JsonDict) -> tuple[str, list[JsonDict]] | None:
        caption = params.get("caption")
        if not isinstance(caption, str) or not caption:
            return None
        entities: list[JsonDict] = []
        if str(params.get("parse_mode") or "").lower() == "html":
            try:
                caption, entities = parse_telegram_html(
                    caption, strict_ampersand=self.api.strict_ampersand
                )
            except EntityParseError as exc:
                raise ApiError(400, f"Bad Request: can't parse caption entities: {exc}") from None
        caption = caption.strip()
        if len(caption) > MAX_CAPTION_LENGTH:
            raise ApiError(400, CAPTION_TOO_LONG)
        return (caption, entities) if caption else None

    def _message(
        self,
        chat: JsonDict,
        caption: tuple[str, list[JsonDict]] | None,
        parse_mode: Any,
        kind: str,
        content: Any,
    ) -> JsonDict:
        with self.api._lock:
            message_id = next(self.api._message_ids)
        message: JsonDict = {
            "message_id": message_id,
            "from": dict(self.api.bot_user),
            "chat": chat,
            "date": int(time.time()),
            kind: content,
        }
        if caption is not None:
            message["caption"] = caption[0]
            if caption[1]:
                message["caption_entities"] = caption[1]
        return message

    # -- where the bytes come from -------------------------------------------------------------

    def _resolve(self, given: Any, params: JsonDict, kind: str) -> tuple[bytes, str, Any]:
        """(the bytes, how they came, the PhotoSize list or Document to answer with)."""
        by_url, by_upload = LIMITS[kind]
        if isinstance(given, str) and given.startswith("attach://"):
            given = params.get(given.removeprefix("attach://"))
            if not isinstance(given, bytes):
                raise ApiError(400, WRONG_SOURCE)
        if isinstance(given, bytes):
            if len(given) > by_upload:
                raise ApiError(400, UPLOAD_TOO_BIG if kind == "photo" else DOCUMENT_TOO_BIG)
            return given, "upload", self._store(kind, given)
        if not isinstance(given, str) or not given:
            raise ApiError(400, f"Bad Request: there is no {kind} in the request")
        with self.api._lock:
            known = self._stored.get(given)
        if known is not None:
            if known.kind != kind:
                raise ApiError(400, WRONG_SOURCE)
            return known.data, "file_id", known.answer
        if not given.startswith(("http://", "https://")):
            raise ApiError(400, WRONG_SOURCE)
        data = self._fetch(given, by_url, kind)
        return data, "url", self._store(kind, data)

    def _fetch(self, url: str, limit: int, kind: str) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": FETCH_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.fetch_timeout) as answer:
                content_type = answer.headers.get_content_type()
                data: bytes = answer.read(limit + 1)
        except (urllib.error.URLError, OSError, ValueError):
            raise ApiError(400, URL_FAILED) from None
        if len(data) > limit:
            raise ApiError(400, URL_FAILED)
        if kind == "photo" and not content_type.startswith("image/"):
            raise ApiError(400, WRONG_TYPE)
        return data

    def _store(self, kind: str, data: bytes) -> Any:
        number = next(self._numbers)
        if kind == "document":
            file_id, unique = _ids("BQACAgIAAxkBAAI", number)
            answer: Any = {
                "file_id": file_id,
                "file_unique_id": unique,
                "file_name": f"file_{number}.jpg",
                "mime_type": "image/jpeg" if image_size(data) else "application/octet-stream",
                "file_size": len(data),
            }
            self._keep(file_id, _Stored(kind, data, answer), f"documents/file_{number}.jpg")
            return answer
        size = image_size(data)
        if size is None:
            raise ApiError(400, IMAGE_FAILED)
        width, height = size
        if width + height > 10_000 or max(width, height) > 20 * min(width, height):
            raise ApiError(400, DIMENSIONS)
        sizes: list[JsonDict] = []
        longest = max(width, height)
        for side in PHOTO_SIDES:
            scale = min(1.0, side / longest)
            file_id, unique = _ids("AgACAgIAAxkBAAI", number * 10 + len(sizes))
            sizes.append(
                {
                    "file_id": file_id,
                    "file_unique_id": unique,
                    "width": max(1, round(width * scale)),
                    "height": max(1, round(height * scale)),
                    "file_size": max(1, round(len(data) * scale * scale)),
                }
            )
            if scale == 1.0:
                break
        stored = _Stored(kind, data, sizes)
        for photo_size in sizes:
            self._keep(str(photo_size["file_id"]), stored, f"photos/file_{number}.jpg")
        return sizes

    def _keep(self, file_id: str, stored: _Stored, path: str) -> None:
        with self.api._lock:
            self._stored[file_id] = stored
        # getFile and the file download serve it too, as Telegram's do.
        self.api.add_file(file_id, stored.data, file_path=path)


def _ids(prefix: str, number: int) -> tuple[str, str]:
    """A file_id and a file_unique_id shaped like Telegram's (opaque, base64url-ish)."""
    return f"{prefix}{number:08d}{secrets.token_urlsafe(12)}", f"AQAD{number:08d}"


def record_line(method: str, chat_id: Any, result: Any) -> JsonDict:
    """The --record line of a delivered media message (an album is one line)."""
    messages = result if isinstance(result, list) else [result]
    return {
        "chat_id": chat_id,
        "method": method,
        "photos": len(messages),
        "caption": messages[0].get("caption"),
    }
