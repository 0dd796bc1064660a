"""A local Telegram Bot API server for tests and benchmarks.

Standalone: `python -m tests.fakes.telegram_api --port N [--token T] [--record FILE]` serves until
SIGTERM, prints nothing, and appends each delivered sendMessage, sendPhoto, sendDocument and
sendMediaGroup (an album is one line) to FILE as one JSON line. Photos: telegram_media.py.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import itertools
import json
import random
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, Self, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

from . import LoopbackHandler, LoopbackServer

MAX_TEXT_LENGTH = 4096
MAX_DOWNLOAD_SIZE = 20 * 1024 * 1024

# What nginx in front of the Bot API answers when the upstream is gone: HTML, not JSON.
PROXY_502_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

JsonDict = dict[str, Any]


class ApiError(Exception):
    """A Bot API error answer: HTTP status, description and optional parameters."""

    def __init__(self, status: int, description: str, parameters: JsonDict | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def document(self) -> JsonDict:
        doc: JsonDict = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            doc["parameters"] = self.parameters
        return doc


@dataclass(frozen=True)
class Fault:
    """One scripted answer for one call of a method; see FakeBotApi.plan()."""

    kind: Literal["ok", "error", "hang"]
    status: int = 200
    description: str = ""
    parameters: JsonDict | None = None
    seconds: float = 0.0

    @classmethod
    def ok(cls) -> Fault:
        return cls("ok")

    @classmethod
    def error(cls, status: int, description: str, parameters: JsonDict | None = None) -> Fault:
        return cls("error", status, description, parameters)

    @classmethod
    def retry_after(cls, seconds: int) -> Fault:
        return cls.error(429, f"Too Many Requests: retry after {seconds}", {"retry_after": seconds})

    @classmethod
    def server_error(cls, code: int = 500) -> Fault:
        return cls.error(code, HTTPStatus(code).phrase)

    @classmethod
    def blocked(cls) -> Fault:
        return cls.error(403, "Forbidden: bot was blocked by the user")

    @classmethod
    def chat_not_found(cls) -> Fault:
        return cls.error(400, "Bad Request: chat not found")

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Wait, then process the call normally: delivered even if the client timed out."""
        return cls("hang", seconds=seconds)


Outcome = Literal["pending", "ok", "error", "dropped"]


@dataclass
class Call:
    """One request as the fake saw it; outcome stays "pending" until it is answered."""

    method: str
    params: JsonDict
    at: float
    outcome: Outcome = "pending"
    status: int | None = None
    description: str = ""
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


# ---------------------------------------------------------------------------------------------
# Telegram HTML (parse_mode=HTML)


class EntityParseError(ValueError):
    """Why Telegram refuses the markup; Telegram prefixes it with "can't parse entities: "."""


_TAG_ENTITY = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY_RE = re.compile(r"&(#[xX][0-9a-fA-F]{1,6}|#[0-9]{1,8}|[a-zA-Z]{1,8});")
_NAME_TOKEN_RE = re.compile(r"[A-Za-z0-9.\-]+")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram entity offsets."""
    return len(text.encode("utf-16-le")) // 2


@dataclass
class _OpenTag:
    name: str
    attrs: dict[str, str]
    start: int = 0
    language: str = ""


class _HtmlParser:
    def __init__(self, markup: str, strict_ampersand: bool) -> None:
        self.markup = markup
        self.strict = strict_ampersand
        self.out: list[str] = []
        self.length = 0
        self.stack: list[_OpenTag] = []
        self.entities: list[JsonDict] = []

    def byte_offset(self, pos: int) -> int:
        return len(self.markup[:pos].encode())

    def decode_entity(self, pos: int) -> tuple[str | None, int]:
        match = _ENTITY_RE.match(self.markup, pos)
        if match is None:
            return None, pos
        body = match.group(1)
        if body[0] != "#":
            named = _NAMED_ENTITIES.get(body)
            return (named, match.end()) if named else (None, pos)
        code = int(body[2:], 16) if body[1] in "xX" else int(body[1:])
        if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
            return chr(code), match.end()
        return None, pos

    def ampersand(self, pos: int) -> tuple[str, int]:
        decoded, end = self.decode_entity(pos)
        if decoded is not None:
            return decoded, end
        if self.strict:
            # Telegram keeps a bare "&" literally; being stricter catches unescaped user text.
            raise EntityParseError(f'Unescaped "&" at byte offset {self.byte_offset(pos)}')
        return "&", pos + 1

    def parse(self) -> tuple[str, list[JsonDict]]:
        markup, i = self.markup, 0
        while i < len(markup):
            ch = markup[i]
            if ch == "&":
                text, i = self.ampersand(i)
            elif ch != "<":
                text, i = ch, i + 1
            elif markup.startswith("</", i):
                i = self.end_tag(i)
                continue
            else:
                i = self.start_tag(i)
                continue
            self.out.append(text)
            self.length += utf16_len(text)
        if self.stack:
            name = self.stack[-1].name
            raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{name}"')
        self.entities.sort(key=lambda e: (e["offset"], -e["length"]))
        return "".join(self.out), self.entities

    def end_tag(self, begin: int) -> int:
        markup, j = self.markup, begin + 2
        while j < len(markup) and not markup[j].isspace() and markup[j] != ">":
            j += 1
        name = markup[begin + 2 : j].lower()
        while j < len(markup) and markup[j].isspace():
            j += 1
        at = self.byte_offset(begin)
        if j >= len(markup) or markup[j] != ">":
            raise EntityParseError(f"Unclosed end tag at byte offset {at}")
        if not self.stack:
            raise EntityParseError(f"Unexpected end tag at byte offset {at}")
        tag = self.stack.pop()
        if name and name != tag.name:
            raise EntityParseError(
                f'Unmatched end tag at byte offset {at}, expected "</{tag.name}>", '
                f'found "</{name}>"'
            )
        self.close(tag)
        return j + 1

    def close(self, tag: _OpenTag) -> None:
        if tag.name == "code" and self.stack and self.stack[-1].name == "pre":
            # <pre><code class="language-x"> is one pre entity carrying the language.
            cls = tag.attrs.get("class", "")
            if cls.startswith("language-"):
                self.stack[-1].language = cls.removeprefix("language-")
            return
        length = self.length - tag.start
        if length <= 0:
            return
        entity: JsonDict = {"type": _TAG_ENTITY[tag.name], "offset": tag.start, "length": length}
        if tag.name == "a":
            href = tag.attrs.get("href", "")
            if not href:
                return
            entity["url"] = href
        elif tag.name == "pre" and tag.language:
            entity["language"] = tag.language
        elif tag.name == "blockquote" and "expandable" in tag.attrs:
            entity["type"] = "expandable_blockquote"
        elif tag.name == "tg-emoji":
            entity["custom_emoji_id"] = tag.attrs["emoji-id"]
        self.entities.append(entity)

    def start_tag(self, begin: int) -> int:
        markup, j = self.markup, begin + 1
        at = self.byte_offset(begin)
        while j < len(markup) and not markup[j].isspace() and markup[j] != ">":
            j += 1
        if j >= len(markup):
            raise EntityParseError(f"Unclosed start tag at byte offset {at}")
        name = markup[begin + 1 : j].lower()
        if name not in _TAG_ENTITY:
            raise EntityParseError(f'Unsupported start tag "{name}" at byte offset {at}')
        attrs: dict[str, str] = {}
        while True:
            while j < len(markup) and markup[j].isspace():
                j += 1
            if j >= len(markup):
                raise EntityParseError(f"Unclosed start tag at byte offset {at}")
            if markup[j] == ">":
                break
            attr_begin = j
            while j < len(markup) and not markup[j].isspace() and markup[j] not in "=>":
                j += 1
            attr = markup[attr_begin:j].lower()
            while j < len(markup) and markup[j].isspace():
                j += 1
            if j < len(markup) and markup[j] == "=":
                value, j = self.attribute_value(j + 1, at)
                attrs[attr] = value
            else:
                attrs[attr] = ""  # a bare attribute such as <blockquote expandable>
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise EntityParseError(f'Tag "span" must have class "tg-spoiler" at byte offset {at}')
        if name == "tg-emoji" and not attrs.get("emoji-id"):
            raise EntityParseError(
                f'Tag "tg-emoji" must have attribute "emoji-id" at byte offset {at}'
            )
        self.stack.append(_OpenTag(name, attrs, start=self.length))
        return j + 1

    def attribute_value(self, j: int, at: int) -> tuple[str, int]:
        markup = self.markup
        while j < len(markup) and markup[j].isspace():
            j += 1
        if j >= len(markup):
            raise EntityParseError(f"Unclosed start tag at byte offset {at}")
        quote = markup[j]
        if quote not in "\"'":
            token = _NAME_TOKEN_RE.match(markup, j)
            end = token.end() if token else j
            if end >= len(markup) or not (markup[end].isspace() or markup[end] == ">"):
                raise EntityParseError(
                    f"Unexpected end of name token at byte offset {self.byte_offset(j)}"
                )
            return markup[j:end].lower(), end
        j += 1
        value: list[str] = []
        while j < len(markup) and markup[j] != quote:
            if markup[j] == "&":
                text, j = self.ampersand(j)
            else:
                text, j = markup[j], j + 1
            value.append(text)
        if j >= len(markup):
            raise EntityParseError(f"Unclosed start tag at byte offset {at}")
        return "".join(value), j + 1


def parse_telegram_html(
    markup: str, *, strict_ampersand: bool = True
) -> tuple[str, list[JsonDict]]:
    """Plain text and entities for Telegram HTML, or EntityParseError where Telegram says 400."""
    return _HtmlParser(markup, strict_ampersand).parse()


def _trim(text: str, entities: list[JsonDict]) -> tuple[str, list[JsonDict]]:
    # Telegram strips surrounding whitespace from message text and shifts entities to match.
    lead = len(text) - len(text.lstrip())
    stripped = text.strip()
    if len(stripped) == len(text):
        return text, entities
    shift, total = utf16_len(text[:lead]), utf16_len(stripped)
    kept: list[JsonDict] = []
    for entity in entities:
        start = max(entity["offset"] - shift, 0)
        end = min(entity["offset"] + entity["length"] - shift, total)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


# ---------------------------------------------------------------------------------------------
# Request parameters

_JSON_FIELDS = {
    "reply_markup",
    "entities",
    "caption_entities",
    "allowed_updates",
    "link_preview_options",
    "reply_parameters",
    "commands",
    "scope",
    "media",
}
_INT_FIELDS = {
    "chat_id",
    "from_chat_id",
    "message_id",
    "message_thread_id",
    "reply_to_message_id",
    "offset",
    "limit",
    "cache_time",
    "user_id",
}
_BOOL_FIELDS = {
    "disable_notification",
    "protect_content",
    "show_alert",
    "disable_web_page_preview",
    "drop_pending_updates",
    "allow_sending_without_reply",
}
_INT_RE = re.compile(r"-?[0-9]+")


def decode_params(content_type: str, body: bytes, query: str = "") -> JsonDict:
    """Bot API parameters from a query string plus a urlencoded, multipart or JSON body."""
    params: JsonDict = dict(parse_qsl(query, keep_blank_values=True))
    mime = content_type.split(";", 1)[0].strip().lower()
    if not body:
        pass
    elif mime == "application/json":
        try:
            document = json.loads(body)
        except ValueError:
            raise ApiError(400, "Bad Request: can't parse JSON request body") from None
        if not isinstance(document, dict):
            raise ApiError(400, "Bad Request: JSON request body must be an object")
        params.update(document)
    elif mime == "multipart/form-data":
        params.update(_decode_multipart(content_type, body))
    else:
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return {key: _coerce(key, value) for key, value in params.items()}


def _decode_multipart(content_type: str, body: bytes) -> JsonDict:
    # Only each part's headers go through the email parser: it copies a payload line by line,
    # which took seconds for a 10 MB photo. The bodies are cut out of the bytes as they are.
    head = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode()
    )
    boundary = head.get_boundary()
    if not boundary:
        raise ApiError(400, "Bad Request: can't parse multipart request body")
    fields: JsonDict = {}
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        headers, separator, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not separator:
            continue
        part = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(headers)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = data.removesuffix(b"\r\n")
        if part.get_filename() is not None:
            fields[name] = data  # an uploaded file stays bytes
        else:
            fields[name] = data.decode(part.get_content_charset() or "utf-8", "replace")
    return fields


def _coerce(key: str, value: Any) -> Any:
    # Form encodings carry every value as a string: JSON for structures, digits for numbers.
    if not isinstance(value, str):
        return value
    if key in _JSON_FIELDS:
        try:
            return json.loads(value)
        except ValueError:
            what = "reply keyboard markup" if key == "reply_markup" else key
            raise ApiError(400, f"Bad Request: can't parse {what} JSON object") from None
    if key in _INT_FIELDS and _INT_RE.fullmatch(value):
        return int(value)
    if key == "timeout":
        try:
            return int(value) if _INT_RE.fullmatch(value) else float(value)
        except ValueError:
            return value
    if key in _BOOL_FIELDS:
        return value.lower() in ("true", "1")
    return value


# ---------------------------------------------------------------------------------------------
# Updates as Telegram sends them

# Incoming message ids start far from the ones the fake gives the bot's own messages.
_incoming_ids = itertools.count(1_000_000)
DEFAULT_BOT_USER: JsonDict = {
    "id": 123456,
    "is_bot": True,
    "first_name": "Test Bot",
    "username": "test_bot",
}


def default_user(user_id: int) -> JsonDict:
    return {
        "id": user_id,
        "is_bot": False,
        "first_name": "Test",
        "last_name": "User",
        "username": f"user{user_id}",
        "language_code": "ru",
    }


def chat_object(chat_id: int, user: JsonDict | None = None) -> JsonDict:
    """A Chat as Telegram describes it; ids follow Telegram's sign conventions."""
    if chat_id > 0:
        user = user or default_user(chat_id)
        chat: JsonDict = {"id": chat_id, "type": "private", "first_name": user["first_name"]}
        if "username" in user:
            chat["username"] = user["username"]
        return chat
    if str(chat_id).startswith("-100"):
        return {"id": chat_id, "type": "supergroup", "title": "Test supergroup"}
    return {"id": chat_id, "type": "group", "title": "Test group"}


def _incoming(chat_id: int, user: JsonDict | None, **content: Any) -> JsonDict:
    sender = user or default_user(chat_id)
    return {
        "message_id": next(_incoming_ids),
        "from": sender,
        "chat": chat_object(chat_id, sender),
        "date": int(time.time()),
        **content,
    }


def message_update(chat_id: int, text: str, user: JsonDict | None = None) -> JsonDict:
    """A text message from a user; commands carry the bot_command entity PTB routes on."""
    content: JsonDict = {"text": text}
    if text.startswith("/"):
        command = text.split(maxsplit=1)[0]
        content["entities"] = [{"type": "bot_command", "offset": 0, "length": utf16_len(command)}]
    return {"message": _incoming(chat_id, user, **content)}


def callback_update(
    chat_id: int,
    data: str,
    message_id: int,
    user: JsonDict | None = None,
    message_text: str = "Choose:",
    bot: JsonDict | None = None,
) -> JsonDict:
    """A press on an inline button under the bot's message `message_id`."""
    sender = user or default_user(chat_id)
    message = {
        "message_id": message_id,
        "from": bot or DEFAULT_BOT_USER,
        "chat": chat_object(chat_id, sender),
        "date": int(time.time()),
        "text": message_text,
    }
    return {
        "callback_query": {
            "id": str(next(_incoming_ids)),
            "from": sender,
            "chat_instance": str(-chat_id * 7919),
            "data": data,
            "message": message,
        }
    }


def photo_update(
    chat_id: int,
    file_id: str,
    file_unique_id: str,
    width: int = 1280,
    height: int = 960,
    file_size: int = 150_000,
    user: JsonDict | None = None,
    caption: str | None = None,
) -> JsonDict:
    """A photo message; Telegram lists sizes smallest first, this one has a single size."""
    size = {
        "file_id": file_id,
        "file_unique_id": file_unique_id,
        "width": width,
        "height": height,
        "file_size": file_size,
    }
    content: JsonDict = {"photo": [size]}
    if caption is not None:
        content["caption"] = caption
    return {"message": _incoming(chat_id, user, **content)}


def document_update(
    chat_id: int,
    file_id: str,
    file_unique_id: str,
    mime_type: str = "application/zip",
    file_name: str = "photos.zip",
    file_size: int = 1_000_000,
    user: JsonDict | None = None,
    caption: str | None = None,
) -> JsonDict:
    """A document (file) message."""
    document = {
        "file_id": file_id,
        "file_unique_id": file_unique_id,
        "file_name": file_name,
        "mime_type": mime_type,
        "file_size": file_size,
    }
    content: JsonDict = {"document": document}
    if caption is not None:
        content["caption"] = caption
    return {"message": _incoming(chat_id, user, **content)}


# ---------------------------------------------------------------------------------------------
# The server


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    path: str


class _BotApiHandler(LoopbackHandler):
    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def serve(self) -> None:
        api: FakeBotApi = self.owner
        parts = urlsplit(self.path)
        # PTB percent-encodes the token's ":" in file URLs; Telegram decodes the path.
        path = unquote(parts.path)
        body = self.read_body()
        if path.startswith("/file/bot"):
            self.download(api, path.removeprefix("/file/bot"))
            return
        token, slash, method = path.removeprefix("/bot").partition("/")
        if not path.startswith("/bot") or not slash or not method:
            self.send_json(404, ApiError(404, "Not Found").document())
            return
        entry = api._methods.get(method.lower())
        canonical = entry[0] if entry else method
        decode_error: ApiError | None = None
        try:
            params = decode_params(self.headers.get("Content-Type", ""), body, parts.query)
        except ApiError as exc:
            params, decode_error = {}, exc
        call = api._begin(canonical, params)
        if self.outage(api, call):
            return
        try:
            if token != api.token:
                raise ApiError(401, "Unauthorized")
            if entry is None:
                raise ApiError(404, "Not Found")
            if decode_error is not None:
                raise decode_error
            fault = api._next_fault(canonical)
            if fault is not None and fault.kind == "hang" and api.stopping.wait(fault.seconds):
                api._finish(call, "dropped")
                self.drop()
                return
            if fault is not None and fault.kind == "error":
                raise ApiError(fault.status, fault.description, fault.parameters)
            result = entry[1](params)
        except ApiError as exc:
            api._finish(call, "error", exc.status, exc.description)
            self.send_json(exc.status, exc.document())
            return
        # Recorded before the answer is written: a client that already gave up (read timeout)
        # still got the message, which is exactly the uncertain case tests need to see.
        api._finish(call, "ok", 200, result=result)
        self.send_json(200, {"ok": True, "result": result})

    def outage(self, api: FakeBotApi, call: Call) -> bool:
        if api.refuse:
            api._finish(call, "dropped")
            self.drop()
            return True
        if api.down:
            api._finish(call, "error", 502, "Bad Gateway (proxy page)")
            self.send_body(502, PROXY_502_PAGE, "text/html")
            return True
        return False

    def download(self, api: FakeBotApi, rest: str) -> None:
        token, _, file_path = rest.partition("/")
        call = api._begin("download", {"file_path": file_path})
        if self.outage(api, call):
            return
        stored = api._file_by_path(file_path)
        if token != api.token or stored is None:
            wrong_token = token != api.token
            error = ApiError(401, "Unauthorized") if wrong_token else ApiError(404, "Not Found")
            api._finish(call, "error", error.status, error.description)
            self.send_json(error.status, error.document())
            return
        api._finish(call, "ok", 200)
        self.send_body(200, stored.data, "application/octet-stream")


# The token every server of the test suite is started with, unless a test needs another.
TEST_TOKEN = "123456:TEST-token-for-the-local-bot-api"


class FakeBotApi(LoopbackServer):
    """A Telegram Bot API server on loopback.

    python-telegram-bot appends the token to `base_url` and then "/{method}", so point it here
    with `telegram.Bot(token, base_url=f"{api.url}/bot", base_file_url=f"{api.url}/file/bot")`
    (the `base_url` / `base_file_url` properties give exactly these). A server root such as
    TELEGRAM_API_URL is therefore turned into `root + "/bot"` and `root + "/file/bot"`.
    """

    handler_class = _BotApiHandler

    def __init__(
        self,
        token: str = TEST_TOKEN,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        seed: int = 0,
        record_path: str | None = None,
        strict_ampersand: bool = True,
    ) -> None:
        super().__init__(port=port, host=host)
        self.token = token
        self.down = False
        self.refuse = False
        self.fail_ratio = 0.0
        self.strict_ampersand = strict_ampersand
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._calls_changed = threading.Condition(self._lock)
        self._updates_changed = threading.Condition(self._lock)
        self._calls: list[Call] = []
        self._plans: dict[str, deque[Fault]] = {}
        self._updates: list[JsonDict] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._files: dict[str, _StoredFile] = {}
        self._commands: list[Any] = []
        self._record_path = record_path
        self._record: TextIO | None = None
        bot_id = token.split(":", 1)[0]
        self.bot_user: JsonDict = {
            **DEFAULT_BOT_USER,
            "id": int(bot_id) if bot_id.isdigit() else DEFAULT_BOT_USER["id"],
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        handlers: dict[str, Callable[[JsonDict], Any]] = {
            "getMe": lambda _: dict(self.bot_user),
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "getUpdates": self._get_updates,
            "getFile": self._get_file,
            "answerCallbackQuery": self._answer_callback_query,
            "sendChatAction": self._send_chat_action,
            "deleteMessage": self._delete_message,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": lambda _: list(self._commands),
            "deleteWebhook": lambda _: True,
            "getWebhookInfo": self._get_webhook_info,
            "close": lambda _: True,
            "logOut": lambda _: True,
        }
        # Imported here: the media module builds on this one's errors and HTML parser.
        from tests.fakes.telegram_media import MediaDesk

        self.media = MediaDesk(self)
        handlers.update(self.media.handlers())
        # Bot API method names are case-insensitive.
        self._methods = {name.lower(): (name, fn) for name, fn in handlers.items()}

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._record_path is not None and self._record is None:
            self._record = open(self._record_path, "a", encoding="utf-8")  # noqa: SIM115
        return super().start()

    def stop(self) -> None:
        super().stop()
        with self._lock:
            if self._record is not None:
                self._record.close()
                self._record = None

    def wake_waiters(self) -> None:
        with self._lock:
            self._updates_changed.notify_all()
            self._calls_changed.notify_all()

    @property
    def base_url(self) -> str:
        """What python-telegram-bot wants as `base_url` (it appends the token)."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        """What python-telegram-bot wants as `base_file_url` (it appends the token)."""
        return f"{self.url}/file/bot"

    # -- scripting -----------------------------------------------------------------------------

    def plan(self, method: str, faults: Iterable[Fault]) -> None:
        """Answer the next calls of `method` with these faults, in order (replaces its plan)."""
        with self._lock:
            self._plans[method] = deque(faults)

    def push_update(self, update: JsonDict) -> int:
        """Queue an update for getUpdates; gives it the next update_id unless it has one."""
        with self._lock:
            queued = dict(update)
            if "update_id" not in queued:
                queued["update_id"] = next(self._update_ids)
            self._updates.append(queued)
            self._updates_changed.notify_all()
            return int(queued["update_id"])

    def add_file(
        self,
        file_id: str,
        data: bytes,
        file_unique_id: str | None = None,
        file_path: str | None = None,
    ) -> str:
        """Make `file_id` known to getFile and downloadable; returns its file_path."""
        path = file_path or f"documents/file_{len(self._files)}_{file_id}"
        with self._lock:
            self._files[file_id] = _StoredFile(file_id, file_unique_id or file_id, data, path)
        return path

    # -- inspection ----------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [call for call in self._calls if call.method == method]

    def sent_messages(self) -> list[JsonDict]:
        """Parameters of every sendMessage answered ok (delivered), oldest first."""
        with self._lock:
            return self._sent_locked()

    def _sent_locked(self) -> list[JsonDict]:
        return [dict(c.params) for c in self._calls if c.method == "sendMessage" and c.ok]

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[JsonDict]:
        """Block until at least n messages were delivered; AssertionError with them if not."""
        deadline = time.monotonic() + timeout
        with self._calls_changed:
            while True:
                sent = self._sent_locked()
                if len(sent) >= n:
                    return sent
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    others = [(c.method, c.outcome, c.status) for c in self._calls]
                    raise AssertionError(
                        f"expected {n} delivered messages within {timeout}s, got {len(sent)}: "
                        f"{sent!r}; all calls (method, outcome, status): {others!r}"
                    )
                self._calls_changed.wait(remaining)

    def wait_for_exactly(self, n: int, timeout: float = 5.0, settle: float = 2.5) -> list[JsonDict]:
        """Block until n messages were delivered, then watch `settle` seconds more and fail as
        soon as an (n+1)th arrives; the n messages otherwise.

        The default window outlasts what a second copy of a message would wait for after the
        first: the outbox's poll (at most 1 s, PostgreSQL) plus Telegram's one message a
        second to one chat (TELEGRAM_CHAT_INTERVAL, 1 s), with half a second of slack for a
        busy machine. A test that lifts the pacing may pass a shorter window.
        """
        sent = self.wait_for_messages(n, timeout)
        deadline = time.monotonic() + settle
        with self._calls_changed:
            while True:
                sent = self._sent_locked()
                if len(sent) > n:
                    raise AssertionError(f"expected exactly {n} messages, got {len(sent)}: {sent}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return sent
                self._calls_changed.wait(remaining)

    # -- request bookkeeping (handler side) ----------------------------------------------------

    def _begin(self, method: str, params: JsonDict) -> Call:
        call = Call(method, params, time.monotonic())
        with self._lock:
            self._calls.append(call)
            self._calls_changed.notify_all()
        return call

    def _finish(
        self,
        call: Call,
        outcome: Outcome,
        status: int | None = None,
        description: str = "",
        result: Any = None,
    ) -> None:
        with self._lock:
            call.outcome, call.status = outcome, status
            call.description, call.result = description, result
            if self._record is not None and outcome == "ok":
                self._record_line(call)
            self._calls_changed.notify_all()

    def _record_line(self, call: Call) -> None:
        from tests.fakes.telegram_media import MEDIA_METHODS, record_line

        assert self._record is not None
        if call.method == "sendMessage":
            line = {"chat_id": call.params["chat_id"], "text": call.params["text"]}
        elif call.method in MEDIA_METHODS:
            line = record_line(call.method, call.params["chat_id"], call.result)
        else:
            return
        self._record.write(json.dumps({**line, "at": time.time()}) + "\n")
        self._record.flush()

    def _next_fault(self, method: str) -> Fault | None:
        with self._lock:
            planned = self._plans.get(method)
            if planned:
                return planned.popleft()
            if method == "sendMessage" and self._random.random() < self.fail_ratio:
                return Fault.server_error(500)
        return None

    def _file_by_path(self, path: str) -> _StoredFile | None:
        with self._lock:
            return next((f for f in self._files.values() if f.path == path), None)

    # -- methods -------------------------------------------------------------------------------

    def _chat(self, params: JsonDict) -> JsonDict:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        if not isinstance(chat_id, int):
            # "@channelname" targets: no such channel exists on this server.
            raise ApiError(400, "Bad Request: chat not found")
        return chat_object(chat_id)

    def _text(self, params: JsonDict) -> tuple[str, list[JsonDict]]:
        text = params.get("text")
        if not isinstance(text, str) or not text:
            raise ApiError(400, "Bad Request: message text is empty")
        parse_mode = str(params.get("parse_mode") or "").lower()
        entities: list[JsonDict]
        if parse_mode == "html":
            try:
                text, entities = parse_telegram_html(text, strict_ampersand=self.strict_ampersand)
            except EntityParseError as exc:
                raise ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
        elif parse_mode in ("", "markdown", "markdownv2"):
            # Only HTML is checked; Markdown text is passed through as sent.
            given = params.get("entities")
            entities = list(given) if isinstance(given, list) else []
        else:
            raise ApiError(400, "Bad Request: unsupported parse_mode")
        text, entities = _trim(text, entities)
        if not text:
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise ApiError(400, "Bad Request: message is too long")
        return text, entities

    def _message(
        self, params: JsonDict, message_id: int, text: str, entities: list[JsonDict]
    ) -> JsonDict:
        message: JsonDict = {
            "message_id": message_id,
            "from": dict(self.bot_user),
            "chat": self._chat(params),
            "date": int(time.time()),
            "text": text,
        }
        if entities:
            message["entities"] = entities
        markup = params.get("reply_markup")
        # Telegram only echoes inline keyboards; reply keyboards stay on the client.
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        return message

    def _send_message(self, params: JsonDict) -> JsonDict:
        self._chat(params)
        text, entities = self._text(params)
        with self._lock:
            message_id = next(self._message_ids)
        return self._message(params, message_id, text, entities)

    def _edit_message_text(self, params: JsonDict) -> Any:
        text, entities = self._text(params)
        if params.get("inline_message_id"):
            return True
        self._chat(params)
        message_id = params.get("message_id")
        if not isinstance(message_id, int):
            raise ApiError(400, "Bad Request: message identifier is not specified")
        message = self._message(params, message_id, text, entities)
        message["edit_date"] = message["date"]
        return message

    def _get_updates(self, params: JsonDict) -> list[JsonDict]:
        offset = _int_param(params, "offset", 0)
        limit = min(max(_int_param(params, "limit", 100), 1), 100)
        timeout = params.get("timeout")
        wait = float(timeout) if isinstance(timeout, int | float) else 0.0
        deadline = time.monotonic() + max(wait, 0.0)
        with self._updates_changed:
            while True:
                if offset < 0:
                    # A negative offset keeps only the last -offset updates and forgets the rest.
                    self._updates = self._updates[offset:]
                elif offset > 0:
                    # Asking from `offset` confirms every earlier update: Telegram forgets them.
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                batch = self._updates[:limit]
                remaining = deadline - time.monotonic()
                if batch or remaining <= 0 or self.stopping.is_set():
                    return batch
                self._updates_changed.wait(remaining)

    def _get_file(self, params: JsonDict) -> JsonDict:
        with self._lock:
            stored = self._files.get(str(params.get("file_id", "")))
        if stored is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        if len(stored.data) > MAX_DOWNLOAD_SIZE:
            raise ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.path,
        }

    def _answer_callback_query(self, params: JsonDict) -> bool:
        if not params.get("callback_query_id"):
            raise ApiError(400, "Bad Request: query is too old and response timeout expired")
        return True

    def _send_chat_action(self, params: JsonDict) -> bool:
        self._chat(params)
        if not params.get("action"):
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _delete_message(self, params: JsonDict) -> bool:
        self._chat(params)
        if not isinstance(params.get("message_id"), int):
            raise ApiError(400, "Bad Request: message identifier is not specified")
        return True

    def _set_my_commands(self, params: JsonDict) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise ApiError(400, 'Bad Request: parameter "commands" is required')
        with self._lock:
            self._commands = commands
        return True

    def _get_webhook_info(self, params: JsonDict) -> JsonDict:
        with self._lock:
            pending = len(self._updates)
        return {"url": "", "has_custom_certificate": False, "pending_update_count": pending}


def _int_param(params: JsonDict, name: str, default: int) -> int:
    value = params.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def main(argv: list[str] | None = None) -> int:
    """Serve a FakeBotApi until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.telegram_api")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token", default=TEST_TOKEN)
    parser.add_argument("--record", help="append each delivered message or album as a JSON line")
    parser.add_argument("--fail-ratio", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    api = FakeBotApi(
        args.token, port=args.port, host=args.host, seed=args.seed, record_path=args.record
    )
    api.fail_ratio = args.fail_ratio
    with api:
        # Short waits keep the main thread responsive to signals.
        while not done.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    # Run as the imported module, not as __main__: the media module's ApiError must be the
    # very class this server catches.
    from tests.fakes.telegram_api import main as imported_main

    raise SystemExit(imported_main())
