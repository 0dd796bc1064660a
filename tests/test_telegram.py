"""The Telegram seam against a local Bot API server: every answer sorted into a send outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from service.outbox.messages import Message
from service.outbox.sender import SendResult
from service.outbox.states import SendOutcome
from service.outbox.telegram import TelegramSender, bot_for, sender_for
from service.settings import Settings
from tests.fakes.telegram_api import FakeBotApi, Fault
from tests.support.servers import free_port

TOKEN = "123456:TEST-token-for-the-seam"
READ_TIMEOUT = 0.5


@pytest.fixture
def api() -> Iterator[FakeBotApi]:
    with FakeBotApi(TOKEN) as server:
        yield server


def send(
    api_url: str, message: Message, started: Callable[[], object] = lambda: None
) -> SendResult:
    """Start a sender (getMe), call `started`, and send one message through it."""

    async def go() -> SendResult:
        bot = bot_for(TOKEN, api_url, read_timeout=READ_TIMEOUT, connect_timeout=0.5)
        sender = TelegramSender(bot)
        await sender.start()
        started()
        try:
            return await sender.send(message)
        finally:
            await bot.shutdown()

    return asyncio.run(go())


def hello(chat_id: int = 42) -> Message:
    return Message(
        chat_id=chat_id,
        text="<b>Ready</b> &amp; waiting",
        reply_markup={
            "inline_keyboard": [[{"text": "My avatars", "callback_data": "avatars:list"}]]
        },
    )


def test_200_is_sent_as_html_with_its_buttons_and_keeps_the_message_id(api: FakeBotApi) -> None:
    result = send(api.url, hello())
    assert result.outcome is SendOutcome.SENT
    (call,) = api.calls_to("sendMessage")
    assert result.message_id == call.result["message_id"]
    assert call.params["chat_id"] == 42
    assert call.params["parse_mode"] == "HTML"
    assert call.result["text"] == "Ready & waiting"
    buttons = call.params["reply_markup"]["inline_keyboard"]
    assert buttons == [[{"text": "My avatars", "callback_data": "avatars:list"}]]


def test_429_is_rate_limited_with_its_retry_after(api: FakeBotApi) -> None:
    api.plan("sendMessage", [Fault.retry_after(7)])
    result = send(api.url, hello())
    assert result.outcome is SendOutcome.RATE_LIMITED
    assert result.retry_after == 7.0
    assert api.sent_messages() == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_is_retried(api: FakeBotApi, status: int) -> None:
    api.plan("sendMessage", [Fault.server_error(status)])
    result = send(api.url, hello())
    assert result.outcome is SendOutcome.RETRY
    assert result.error


def test_the_proxy_page_of_a_bot_api_behind_nginx_is_retried(api: FakeBotApi) -> None:
    result = send(api.url, hello(), started=lambda: setattr(api, "down", True))
    assert result.outcome is SendOutcome.RETRY


def test_403_blocked_is_undeliverable(api: FakeBotApi) -> None:
    api.plan("sendMessage", [Fault.blocked()])
    result = send(api.url, hello())
    assert result.outcome is SendOutcome.UNDELIVERABLE
    assert result.error is not None and "blocked" in result.error


def test_400_chat_not_found_is_undeliverable(api: FakeBotApi) -> None:
    api.plan("sendMessage", [Fault.chat_not_found()])
    result = send(api.url, hello())
    assert result.outcome is SendOutcome.UNDELIVERABLE
    assert result.error is not None and "chat not found" in result.error.lower()


def test_a_group_that_became_a_supergroup_is_retried_at_its_new_id(api: FakeBotApi) -> None:
    api.plan(
        "sendMessage",
        [
            Fault.error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": -1001234},
            )
        ],
    )
    result = send(api.url, hello(-55))
    assert result.outcome is SendOutcome.RETRY
    assert result.migrate_to_chat_id == -1001234


def test_a_read_timeout_is_uncertain_because_telegram_may_have_delivered(
    api: FakeBotApi,
) -> None:
    api.plan("sendMessage", [Fault.hang(READ_TIMEOUT + 1.0)])
    result = send(api.url, hello())
    assert result.outcome is SendOutcome.UNCERTAIN
    assert result.error is not None and result.error.startswith("timed out")
    # And it was delivered after all: why an uncertain message is never resent on its own.
    api.wait_for_messages(1, timeout=5)


def unstarted_send(api_url: str, token: str) -> SendResult:
    """Send without start(): its getMe would fail first for a dead server or a wrong token."""

    async def go() -> SendResult:
        bot = bot_for(token, api_url, read_timeout=READ_TIMEOUT, connect_timeout=0.5)
        try:
            return await TelegramSender(bot).send(hello())
        finally:
            # Bot.shutdown() skips a bot that was never initialised: close its client here.
            await bot.request.shutdown()

    return asyncio.run(go())


def test_a_refused_connection_is_retried() -> None:
    result = unstarted_send(f"http://127.0.0.1:{free_port()}", TOKEN)
    assert result.outcome is SendOutcome.RETRY
    assert result.error


def test_a_wrong_token_is_kept_for_a_retry_after_the_operator_fixes_it(api: FakeBotApi) -> None:
    result = unstarted_send(api.url, "999:WRONG")
    assert result.outcome is SendOutcome.RETRY
    assert result.error is not None and "invalid token" in result.error


def test_the_settings_sender_starts_with_get_me_and_uses_the_configured_timeouts(
    api: FakeBotApi,
) -> None:
    settings = Settings(
        telegram_token=TOKEN,
        telegram_api_url=api.url,
        telegram_read_timeout_seconds=0.3,
        telegram_connect_timeout_seconds=0.2,
    )
    api.plan("sendMessage", [Fault.hang(1.0)])

    async def go() -> SendResult:
        sender = sender_for(settings)
        await sender.start()
        try:
            return await sender.send(hello())
        finally:
            await sender.stop()

    result = asyncio.run(go())
    assert [c.method for c in api.calls][:1] == ["getMe"]
    # 0.3 s is less than the 1 s the server takes: the configured read timeout is the one used.
    assert result.outcome is SendOutcome.UNCERTAIN
