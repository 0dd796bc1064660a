"""The test doubles, driven through the real clients: python-telegram-bot, httpx, cryptography."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from telegram import Bot as TelegramBot
from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Message
from telegram.constants import ChatAction, MessageEntityType, ParseMode
from telegram.error import (
    BadRequest,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from tests.fakes.fal_keys import FalSigner, JwksServer, signed_message
from tests.fakes.telegram_api import (
    TEST_TOKEN,
    EntityParseError,
    FakeBotApi,
    Fault,
    callback_update,
    document_update,
    message_update,
    parse_telegram_html,
    photo_update,
)

ROOT = Path(__file__).resolve().parents[1]
# The token of the suite's `api` fixture (tests/conftest.py).
TOKEN = TEST_TOKEN


@pytest.fixture(autouse=True)
def _ptb_timedelta(monkeypatch: pytest.MonkeyPatch) -> None:
    # PTB 22.x emits PTBDeprecationWarning whenever it builds RetryAfter unless opted in.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")


def make_bot(api: FakeBotApi, read_timeout: float = 2.0, token: str = TOKEN) -> TelegramBot:
    request = HTTPXRequest(
        connection_pool_size=8,
        connect_timeout=2.0,
        read_timeout=read_timeout,
        write_timeout=2.0,
        pool_timeout=2.0,
    )
    return TelegramBot(
        token,
        base_url=api.base_url,
        base_file_url=api.base_file_url,
        request=request,
        get_updates_request=HTTPXRequest(connect_timeout=2.0, read_timeout=2.0),
    )


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


# --- FAL keys ---------------------------------------------------------------------------------


def test_signature_verifies_with_unpadded_jwk_and_fails_on_changed_body(signer: FalSigner) -> None:
    body = b'{"request_id":"req-1","status":"OK","payload":{"x":1}}'
    headers = signer.headers(body, "req-1")
    assert set(headers) == {
        "X-Fal-Webhook-Request-Id",
        "X-Fal-Webhook-User-Id",
        "X-Fal-Webhook-Timestamp",
        "X-Fal-Webhook-Signature",
    }
    assert headers["X-Fal-Webhook-User-Id"] == "fal-test-user"
    assert abs(int(headers["X-Fal-Webhook-Timestamp"]) - time.time()) < 5

    x = signer.jwk()["x"]
    assert "=" not in x and len(x) == 43
    key = Ed25519PublicKey.from_public_bytes(b64url_decode(x))
    signature = bytes.fromhex(headers["X-Fal-Webhook-Signature"])
    # The message is rebuilt by hand here, independently of signed_message().
    stamp = headers["X-Fal-Webhook-Timestamp"]
    message = f"req-1\nfal-test-user\n{stamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    key.verify(signature, message)

    tampered = bytearray(body)
    tampered[10] ^= 0x01
    with pytest.raises(InvalidSignature):
        key.verify(signature, signed_message(bytes(tampered), "req-1", "fal-test-user", stamp))


def test_explicit_timestamp_and_user_are_signed(signer: FalSigner) -> None:
    headers = signer.headers(b"{}", "req-2", user_id="u-9", timestamp=1_700_000_000)
    assert headers["X-Fal-Webhook-Timestamp"] == "1700000000"
    message = signed_message(b"{}", "req-2", "u-9", 1_700_000_000)
    signer.public_key.verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message)
    with pytest.raises(InvalidSignature):
        signer.public_key.verify(
            bytes.fromhex(headers["X-Fal-Webhook-Signature"]),
            signed_message(b"{}", "req-2", "u-9", 1_700_000_001),
        )


def test_padded_jwk_is_the_same_key(signer: FalSigner) -> None:
    padded = signer.jwk(pad=True)
    assert padded["x"].endswith("=")
    assert padded["x"].rstrip("=") == signer.jwk()["x"]
    assert base64.urlsafe_b64decode(padded["x"]) == signer.raw_public_key
    assert padded["kty"] == "OKP" and padded["crv"] == "Ed25519"


def test_jwks_server_serves_the_current_key_set() -> None:
    first, second = FalSigner(), FalSigner()
    with JwksServer([first]) as jwks, httpx.Client() as client:
        assert jwks.jwks_url == f"{jwks.url}/.well-known/jwks.json"
        assert client.get(jwks.jwks_url).json() == {"keys": [first.jwk()]}
        jwks.add(second)
        assert client.get(jwks.jwks_url).json()["keys"] == [first.jwk(), second.jwk()]
        jwks.remove(first)
        assert client.get(jwks.jwks_url).json()["keys"] == [second.jwk()]
        jwks.pad = True
        assert client.get(jwks.jwks_url).json()["keys"] == [second.jwk(pad=True)]
        jwks.set_keys([])
        assert client.get(jwks.jwks_url).json() == {"keys": []}
        assert client.get(f"{jwks.url}/other").status_code == 404
        assert jwks.requests == 5  # the 404 is not a key-set fetch


def test_jwks_server_failure_modes() -> None:
    signer = FalSigner()
    with JwksServer([signer]) as jwks, httpx.Client() as client:
        jwks.fail(500)
        assert client.get(jwks.jwks_url).status_code == 500
        assert client.get(jwks.jwks_url).status_code == 500
        jwks.fail(None)
        assert client.get(jwks.jwks_url).json() == {"keys": [signer.jwk()]}
        jwks.close_connections(True)
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(jwks.jwks_url)
        jwks.close_connections(False)
        assert client.get(jwks.jwks_url).status_code == 200
        assert jwks.requests == 5
        url = jwks.jwks_url
    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.get(url)  # stopped: nothing listens any more


def test_jwks_request_counter_is_thread_safe() -> None:
    with JwksServer([FalSigner()]) as jwks:

        def fetch() -> None:
            with httpx.Client() as client:
                for _ in range(5):
                    client.get(jwks.jwks_url).raise_for_status()

        threads = [threading.Thread(target=fetch) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert jwks.requests == 40


# --- Telegram: protocol basics ----------------------------------------------------------------


def test_get_me_through_ptb_and_the_base_url_form(api: FakeBotApi) -> None:
    async def scenario() -> None:
        async with make_bot(api) as bot:
            # PTB appends the token to base_url, then "/{method}".
            assert bot.base_url == f"{api.url}/bot{TOKEN}"
            assert bot.base_file_url == f"{api.url}/file/bot{TOKEN}"
            assert bot.id == 123456 and bot.username == "test_bot"
            me = await bot.get_me()
            assert me.is_bot and me.can_join_groups is True

    run(scenario())
    assert [call.method for call in api.calls] == ["getMe", "getMe"]
    assert all(call.ok and call.status == 200 for call in api.calls)


def test_base_url_with_a_trailing_slash_is_a_wrong_token(api: FakeBotApi) -> None:
    async def scenario() -> None:
        bot = TelegramBot(TOKEN, base_url=f"{api.url}/bot/")
        with pytest.raises(InvalidToken):
            async with bot:
                pass

    run(scenario())
    assert api.calls[0].status == 401


def test_wrong_token_and_unknown_method(api: FakeBotApi) -> None:
    with httpx.Client() as client:
        wrong = client.post(f"{api.url}/bot999:WRONG/getMe")
        assert wrong.status_code == 401
        assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
        unknown = client.post(f"{api.base_url}{TOKEN}/noSuchMethod")
        assert unknown.status_code == 404
        assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        # Bot API method names are case-insensitive.
        assert client.get(f"{api.base_url}{TOKEN}/GETME").json()["result"]["id"] == 123456

    async def scenario() -> None:
        with pytest.raises(InvalidToken):
            async with make_bot(api, token="999:WRONG"):
                pass
        async with make_bot(api) as bot:
            with pytest.raises(EndPointNotFound):
                await bot.do_api_request("noSuchMethod")

    run(scenario())


def test_send_message_html_with_inline_keyboard(api: FakeBotApi) -> None:
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Открыть", callback_data="open:7")]])
    text = "<b>Аватар готов</b> &lt;Max &amp; Co&gt; 😀 <i>ура</i>"

    async def scenario() -> None:
        async with make_bot(api) as bot:
            first = await bot.send_message(42, text, parse_mode=ParseMode.HTML, reply_markup=markup)
            second = await bot.send_message(42, "plain")
        assert isinstance(first, Message)
        assert first.chat.id == 42 and first.chat.type == "private"
        assert first.text == "Аватар готов <Max & Co> 😀 ура"
        # PTB decodes the UTF-16 offsets itself: the entities must cover the right words.
        covered = {e.type: part for e, part in first.parse_entities().items()}
        assert covered == {MessageEntityType.BOLD: "Аватар готов", MessageEntityType.ITALIC: "ура"}
        assert first.reply_markup == markup
        assert second.message_id == first.message_id + 1
        assert second.reply_markup is None
        assert abs(first.date.timestamp() - time.time()) < 5

    run(scenario())
    sent = api.sent_messages()
    assert [m["chat_id"] for m in sent] == [42, 42]
    assert sent[0]["text"] == text and sent[0]["parse_mode"] == "HTML"
    assert sent[0]["reply_markup"] == {
        "inline_keyboard": [[{"text": "Открыть", "callback_data": "open:7"}]]
    }


def test_broken_html_is_refused_like_telegram(api: FakeBotApi) -> None:
    async def scenario() -> None:
        async with make_bot(api) as bot:
            with pytest.raises(BadRequest) as info:
                await bot.send_message(1, "x <script>y</script>", parse_mode=ParseMode.HTML)
            # PTB strips "Bad Request: " and lower-cases the rest of the description.
            assert str(info.value) == (
                'Can\'t parse entities: unsupported start tag "script" at byte offset 2'
            )
            # The same text without parse_mode is plain text and goes through.
            await bot.send_message(1, "x <script>y</script>")

    run(scenario())
    refused = api.calls_to("sendMessage")[0]
    assert refused.outcome == "error" and refused.status == 400
    assert refused.description == (
        'Bad Request: can\'t parse entities: Unsupported start tag "script" at byte offset 2'
    )
    assert [m["text"] for m in api.sent_messages()] == ["x <script>y</script>"]


@pytest.mark.parametrize(
    ("markup", "error"),
    [
        ("<b>bold", 'Can\'t find end tag corresponding to start tag "b"'),
        ("a < b", 'Unsupported start tag "" at byte offset 2'),
        ("Привет <x>", 'Unsupported start tag "x" at byte offset 13'),
        ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<b>x</b", "Unclosed end tag at byte offset 4"),
        ("<b", "Unclosed start tag at byte offset 0"),
        ("Tom & Jerry", 'Unescaped "&" at byte offset 4'),
        ("1 &#0; 2", 'Unescaped "&" at byte offset 2'),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
    ],
)
def test_html_parse_errors(markup: str, error: str) -> None:
    with pytest.raises(EntityParseError) as info:
        parse_telegram_html(markup)
    assert str(info.value) == error


def test_html_entities_and_text() -> None:
    text, entities = parse_telegram_html(
        '<b>Готово!</b> &quot;Max &amp; Co&quot; 😀 <a href="https://x.kz/?a=1&amp;b=2">link</a>'
    )
    assert text == 'Готово! "Max & Co" 😀 link'
    assert entities == [
        {"type": "bold", "offset": 0, "length": 7},
        {"type": "text_link", "offset": 22, "length": 4, "url": "https://x.kz/?a=1&b=2"},
    ]
    assert parse_telegram_html('<pre><code class="language-python">print(1)</code></pre>') == (
        "print(1)",
        [{"type": "pre", "offset": 0, "length": 8, "language": "python"}],
    )
    assert parse_telegram_html(
        '<span class="tg-spoiler">s</span><tg-spoiler>t</tg-spoiler><B>u</B>'
    )[1] == [
        {"type": "spoiler", "offset": 0, "length": 1},
        {"type": "spoiler", "offset": 1, "length": 1},
        {"type": "bold", "offset": 2, "length": 1},
    ]
    assert parse_telegram_html("<blockquote expandable>q</blockquote>")[1] == [
        {"type": "expandable_blockquote", "offset": 0, "length": 1}
    ]
    text, entities = parse_telegram_html("&#128512;&#x41;<b><i>x</i></b>")
    assert text == "😀Ax"  # the emoji is two UTF-16 units, so "x" starts at 3
    assert sorted((e["type"], e["offset"], e["length"]) for e in entities) == [
        ("bold", 3, 1),
        ("italic", 3, 1),
    ]
    # Telegram itself keeps a bare "&"; the strict default is there to catch unescaped text.
    assert parse_telegram_html("Tom & Jerry", strict_ampersand=False) == ("Tom & Jerry", [])


def test_text_limits(api: FakeBotApi) -> None:
    async def scenario() -> None:
        async with make_bot(api) as bot:
            for empty in ("", "  \n "):
                with pytest.raises(BadRequest, match=r"^Message text is empty$"):
                    await bot.send_message(1, empty)
            longest = await bot.send_message(1, "я" * 4096)
            assert longest.text is not None and len(longest.text) == 4096
            with pytest.raises(BadRequest, match=r"^Message is too long$"):
                await bot.send_message(1, "я" * 4097)
            # The limit applies to the text after the markup is parsed away.
            marked = await bot.send_message(1, "<b>" + "x" * 4096 + "</b>", parse_mode="HTML")
            assert marked.text == "x" * 4096
            trimmed = await bot.send_message(1, "  <b>hi</b>  ", parse_mode="HTML")
            assert trimmed.text == "hi" and trimmed.entities[0].offset == 0

    run(scenario())
    assert len(api.sent_messages()) == 3


# --- Telegram: faults -------------------------------------------------------------------------


def test_planned_faults_raise_the_ptb_exceptions(api: FakeBotApi) -> None:
    api.plan(
        "sendMessage",
        [
            Fault.retry_after(2),
            Fault.blocked(),
            Fault.chat_not_found(),
            Fault.server_error(),
            Fault.server_error(502),
            Fault.ok(),
        ],
    )

    async def scenario() -> None:
        async with make_bot(api) as bot:
            with pytest.raises(RetryAfter) as flood:
                await bot.send_message(7, "a")
            assert flood.value.retry_after == dt.timedelta(seconds=2)
            with pytest.raises(Forbidden) as blocked:
                await bot.send_message(7, "b")
            assert str(blocked.value) == "Forbidden: bot was blocked by the user"
            with pytest.raises(BadRequest) as missing:
                await bot.send_message(7, "c")
            assert str(missing.value) == "Chat not found"
            for description in ("Internal Server Error", "Bad Gateway"):
                with pytest.raises(NetworkError) as server:
                    await bot.send_message(7, "d")
                assert type(server.value) is NetworkError
                assert str(server.value) == description
            await bot.send_message(7, "e")
            await bot.send_message(7, "f")  # the plan is used up: normal service

    run(scenario())
    assert [c.status for c in api.calls_to("sendMessage")] == [429, 403, 400, 500, 502, 200, 200]
    assert [m["text"] for m in api.sent_messages()] == ["e", "f"]
    # The catch order that follows from PTB's hierarchy.
    assert issubclass(BadRequest, NetworkError) and issubclass(TimedOut, NetworkError)
    assert not issubclass(RetryAfter, NetworkError) and not issubclass(Forbidden, NetworkError)


def test_retry_after_without_the_timedelta_opt_in(
    api: FakeBotApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PTB_TIMEDELTA")
    api.plan("sendMessage", [Fault.retry_after(3)])

    async def scenario() -> None:
        async with make_bot(api) as bot:
            with pytest.warns(PTBDeprecationWarning), pytest.raises(RetryAfter) as flood:
                await bot.send_message(7, "a")
            with pytest.warns(PTBDeprecationWarning):
                assert flood.value.retry_after == 3

    run(scenario())


def test_hang_longer_than_the_read_timeout_is_timed_out_but_delivered(api: FakeBotApi) -> None:
    api.plan("sendMessage", [Fault.hang(0.6)])

    async def scenario() -> None:
        async with make_bot(api, read_timeout=0.2) as bot:
            started = time.monotonic()
            with pytest.raises(TimedOut):
                await bot.send_message(9, "maybe")
            assert time.monotonic() - started < 0.55

    run(scenario())
    assert api.wait_for_messages(1, timeout=3)[0]["text"] == "maybe"
    call = api.calls_to("sendMessage")[0]
    assert call.ok and call.status == 200


def test_down_refuse_and_stopped(api: FakeBotApi) -> None:
    async def scenario() -> None:
        async with make_bot(api) as bot:
            api.down = True
            with pytest.raises(NetworkError) as proxy:
                await bot.send_message(1, "a")
            assert type(proxy.value) is NetworkError
            assert str(proxy.value).startswith("Bad Gateway (502). Parsing the server response")
            api.down, api.refuse = False, True
            with pytest.raises(NetworkError) as cut:
                await bot.send_message(1, "b")
            assert type(cut.value) is NetworkError and "RemoteProtocolError" in str(cut.value)
            api.refuse = False
            await bot.send_message(1, "c")
            api.stop()
            with pytest.raises(NetworkError) as refused:
                await bot.send_message(1, "d")
            assert type(refused.value) is NetworkError and "ConnectError" in str(refused.value)
            api.start()  # same port again
            await bot.send_message(1, "e")

    run(scenario())
    assert [(c.outcome, c.status) for c in api.calls_to("sendMessage")] == [
        ("error", 502),
        ("dropped", None),
        ("ok", 200),
        ("ok", 200),
    ]
    assert [m["text"] for m in api.sent_messages()] == ["c", "e"]


def test_fail_ratio_is_seeded_and_only_hits_send_message() -> None:
    def statuses(seed: int) -> list[int | None]:
        with FakeBotApi(TOKEN, seed=seed) as api, httpx.Client() as client:
            api.fail_ratio = 0.3
            for i in range(40):
                client.post(f"{api.base_url}{TOKEN}/getMe")
                client.post(f"{api.base_url}{TOKEN}/sendMessage", data={"chat_id": 1, "text": i})
            assert all(call.ok for call in api.calls_to("getMe"))
            assert len(api.sent_messages()) == [c.status for c in api.calls].count(200) - 40
            return [call.status for call in api.calls_to("sendMessage")]

    first = statuses(7)
    assert first == statuses(7)
    assert set(first) == {200, 500} and 3 <= first.count(500) <= 25
    assert first != statuses(8)


def test_wait_for_messages_reports_what_it_has(api: FakeBotApi) -> None:
    with httpx.Client() as client:
        client.post(f"{api.base_url}{TOKEN}/sendMessage", data={"chat_id": 3, "text": "one"})
    assert len(api.wait_for_messages(1, timeout=0.1)) == 1
    with pytest.raises(AssertionError, match=r"expected 2 delivered messages.*'one'"):
        api.wait_for_messages(2, timeout=0.2)


def test_concurrent_sends_get_distinct_ids(api: FakeBotApi) -> None:
    async def scenario() -> None:
        async with make_bot(api) as bot:
            sent = await asyncio.gather(*(bot.send_message(5, f"m{i}") for i in range(20)))
        assert sorted(m.message_id for m in sent) == list(range(1, 21))

    run(scenario())
    assert sorted(m["text"] for m in api.sent_messages()) == sorted(f"m{i}" for i in range(20))


# --- Telegram: parameter encodings ------------------------------------------------------------


def test_json_multipart_and_query_parameters_are_decoded(api: FakeBotApi) -> None:
    url = f"{api.base_url}{TOKEN}/sendMessage"
    markup = {"inline_keyboard": [[{"text": "Go", "callback_data": "go"}]]}
    with httpx.Client() as client:
        as_json = client.post(url, json={"chat_id": 5, "text": "json", "reply_markup": markup})
        assert as_json.json()["result"]["reply_markup"] == markup
        multipart = client.post(
            url,
            data={"chat_id": "6", "text": "multipart", "reply_markup": json.dumps(markup)},
            files={"thumbnail": ("a.bin", b"\x00\x01", "application/octet-stream")},
        )
        assert multipart.json()["result"]["chat"]["id"] == 6
        assert client.get(url, params={"chat_id": "7", "text": "query"}).status_code == 200
        broken = client.post(url, data={"chat_id": "8", "text": "x", "reply_markup": "{nope"})
        assert broken.status_code == 400
        assert broken.json()["description"] == (
            "Bad Request: can't parse reply keyboard markup JSON object"
        )
    sent = api.sent_messages()
    assert [m["chat_id"] for m in sent] == [5, 6, 7]
    assert sent[0]["reply_markup"] == sent[1]["reply_markup"] == markup
    assert sent[1]["thumbnail"] == b"\x00\x01"


# --- Telegram: updates, files, other methods --------------------------------------------------


def test_get_updates_long_polls_until_an_update_is_pushed(api: FakeBotApi) -> None:
    async def scenario() -> None:
        async with make_bot(api) as bot:
            timer = threading.Timer(0.3, api.push_update, args=(message_update(42, "/start"),))
            started = time.monotonic()
            timer.start()
            updates = await bot.get_updates(offset=0, timeout=5)
            elapsed = time.monotonic() - started
            timer.join()
            assert 0.25 <= elapsed < 3
            assert len(updates) == 1 and updates[0].message is not None
            assert updates[0].message.text == "/start"
            assert updates[0].message.entities[0].type == MessageEntityType.BOT_COMMAND
            assert updates[0].effective_chat is not None and updates[0].effective_chat.id == 42

            started = time.monotonic()
            later = await bot.get_updates(offset=updates[0].update_id + 1, timeout=1)
            assert later == () and time.monotonic() - started >= 0.9
            # The offset confirmed the first update: it is gone for good.
            assert await bot.get_updates(offset=0, timeout=0) == ()

    run(scenario())
    assert api.calls_to("getUpdates")[0].params["timeout"] == 5


def test_update_builders_are_valid_for_ptb(api: FakeBotApi) -> None:
    api.push_update(callback_update(42, "train:portrait", message_id=5))
    api.push_update(photo_update(42, "photo-1", "uphoto-1", 800, 600, 12345))
    api.push_update(document_update(42, "doc-1", "udoc-1", "application/zip", "a.zip", 999))

    async def scenario() -> None:
        async with make_bot(api) as bot:
            callback, photo, document = await bot.get_updates(timeout=0)
        assert callback.callback_query is not None
        assert callback.callback_query.data == "train:portrait"
        assert callback.callback_query.from_user.id == 42
        assert callback.callback_query.message is not None
        assert callback.callback_query.message.message_id == 5
        assert photo.message is not None and photo.message.photo[-1].file_id == "photo-1"
        assert (photo.message.photo[-1].width, photo.message.photo[-1].file_size) == (800, 12345)
        assert document.message is not None and document.message.document is not None
        assert document.message.document.file_name == "a.zip"
        assert document.message.document.mime_type == "application/zip"
        assert [callback.update_id, photo.update_id, document.update_id] == [1, 2, 3]

    run(scenario())


def test_get_file_and_download(api: FakeBotApi) -> None:
    data = b"PK\x03\x04" + bytes(range(256)) * 4
    path = api.add_file("doc-1", data, "udoc-1")

    async def scenario() -> None:
        async with make_bot(api) as bot:
            file = await bot.get_file("doc-1")
            assert file.file_unique_id == "udoc-1" and file.file_size == len(data)
            assert file.file_path == f"{api.base_file_url}{TOKEN}/{path}"
            assert await file.download_as_bytearray() == bytearray(data)
            with pytest.raises(BadRequest, match=r"^Invalid file_id$"):
                await bot.get_file("unknown")

    run(scenario())
    assert [c.method for c in api.calls][1:] == ["getFile", "download", "getFile"]
    with httpx.Client() as client:
        assert client.get(f"{api.base_file_url}{TOKEN}/nope").status_code == 404
        assert client.get(f"{api.base_file_url}999:WRONG/{path}").status_code == 401


def test_other_methods(api: FakeBotApi) -> None:
    async def scenario() -> None:
        async with make_bot(api) as bot:
            assert await bot.answer_callback_query("cbq-1", text="ok") is True
            edited = await bot.edit_message_text(
                "<i>new</i>", chat_id=42, message_id=5, parse_mode=ParseMode.HTML
            )
            assert isinstance(edited, Message)
            assert (edited.message_id, edited.text) == (5, "new")
            assert edited.edit_date is not None
            assert await bot.delete_message(42, 5) is True
            assert await bot.send_chat_action(42, ChatAction.TYPING) is True
            assert await bot.delete_webhook(drop_pending_updates=True) is True
            assert await bot.set_my_commands([BotCommand("start", "Начать")]) is True
            assert [c.command for c in await bot.get_my_commands()] == ["start"]
            assert await bot.close() is True
            assert await bot.log_out() is True

    run(scenario())
    methods = [c.method for c in api.calls]
    assert methods == [
        "getMe",
        "answerCallbackQuery",
        "editMessageText",
        "deleteMessage",
        "sendChatAction",
        "deleteWebhook",
        "setMyCommands",
        "getMyCommands",
        "close",
        "logOut",
    ]
    assert api.calls_to("deleteWebhook")[0].params["drop_pending_updates"] is True
    assert api.sent_messages() == []


# --- Telegram: standalone process -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_standalone_process_records_deliveries_and_stops_on_sigterm(tmp_path: Path) -> None:
    port, record = free_port(), tmp_path / "sent.jsonl"
    command = [sys.executable, "-m", "tests.fakes.telegram_api", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--record", str(record)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/bot{TOKEN}"
    try:
        with httpx.Client() as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.post(f"{url}/getMe").raise_for_status()
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the fake never came up"
                    time.sleep(0.05)
            before = time.time()
            client.post(f"{url}/sendMessage", data={"chat_id": 11, "text": "first"})
            client.post(f"{url}/sendMessage", data={"chat_id": 11, "text": ""})  # refused
            client.post(f"{url}/sendMessage", data={"chat_id": 12, "text": "second"})
            lines = [json.loads(line) for line in record.read_text().splitlines()]
            assert [(line["chat_id"], line["text"]) for line in lines] == [
                (11, "first"),
                (12, "second"),
            ]
            assert all(before - 1 <= line["at"] <= time.time() + 1 for line in lines)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 0
    assert (out, err) == (b"", b"")
