"""The bot in webhook mode: `python -m service bot` with BOT_UPDATES=webhook behind the real
nginx site with TLS, the local Bot API server delivering updates as Telegram does (POST to the
URL of setWebhook, the secret header, repeats until a 2xx), and the way back to polling."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.webhook import SECRET_KEY, secret_path
from service.store.models import BotState, User
from tests.fakes.fal_keys import JwksServer
from tests.fakes.fal_queue import FalQueueServer
from tests.fakes.telegram_api import FakeBotApi, message_update
from tests.support.bot import BotStack, Person
from tests.support.db import run
from tests.support.nginx import Nginx, running_nginx
from tests.support.servers import free_port, holds, wait_until

pytestmark = pytest.mark.nginx

MAX_CONNECTIONS = 7
_update_ids = iter(range(900_000, 1_000_000))


def direct_update(person: Person, text: str) -> dict[str, Any]:
    """An update of our own numbering, posted straight to the webhook by the test."""
    return {"update_id": next(_update_ids), **message_update(person.id, text, user=person.user)}


def stored_secret(database_url: str) -> str | None:
    async def work(session: AsyncSession) -> str | None:
        found = await session.execute(
            select(BotState.data).where(BotState.scope == "bot", BotState.key == SECRET_KEY)
        )
        return found.scalar_one_or_none()

    return run(database_url, work)


def registered_secret(stack: BotStack) -> str:
    """The secret_token the bot gave setWebhook (generated: TELEGRAM_WEBHOOK_SECRET is unset)."""
    call = next(c for c in stack.api.calls_to("setWebhook") if c.ok)
    return str(call.params["secret_token"])


def known_user(database_url: str, telegram_id: int) -> bool:
    async def work(session: AsyncSession) -> bool:
        found = await session.execute(select(User.id).where(User.telegram_id == telegram_id))
        return found.first() is not None

    return run(database_url, work)


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory, certs: Path, module_api: FakeBotApi
) -> Iterator[tuple[Nginx, int]]:
    """nginx with the real site; its /telegram/ location goes to the bot's BOT_BIND port."""
    bot_port = free_port()
    with running_nginx(
        tmp_path_factory.mktemp("nginx-bot"), certs, free_port(), bot=bot_port
    ) as nginx:
        yield nginx, bot_port


def webhook_settings(nginx: Nginx, bot_port: int) -> dict[str, str]:
    return {
        "BOT_UPDATES": "webhook",
        "BOT_BIND": f"127.0.0.1:{bot_port}",
        "BOT_WEBHOOK_URL": f"https://aibots.kz:{nginx.port}/telegram",
        "BOT_WEBHOOK_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }


@pytest.fixture(scope="module")
def stack(
    front: tuple[Nginx, int],
    module_api: FakeBotApi,
    module_jwks: JwksServer,
    client_context: ssl.SSLContext,
) -> Iterator[BotStack]:
    nginx, bot_port = front
    # Telegram connects to aibots.kz on the test's port, trusting the test's CA.
    module_api.webhook.context = client_context
    module_api.webhook.ports.add(nginx.port)
    with (
        FalQueueServer() as fal,
        BotStack(module_api, fal, module_jwks.jwks_url, **webhook_settings(nginx, bot_port)) as s,
    ):
        yield s


def test_the_bot_registers_its_webhook(stack: BotStack, front: tuple[Nginx, int]) -> None:
    nginx, _ = front
    (call,) = [c for c in stack.api.calls_to("setWebhook") if c.ok]
    secret = call.params["secret_token"]
    # Generated once (256 random bits) and kept in the database for the next start.
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    assert stored_secret(stack.database_url) == secret
    assert call.params["url"] == f"https://aibots.kz:{nginx.port}/telegram/{secret_path(secret)}"
    assert secret not in call.params["url"], "the path must not give the secret away"
    assert call.params["allowed_updates"] == ["message", "callback_query"]
    assert call.params["max_connections"] == MAX_CONNECTIONS
    # Telegram refuses getUpdates while a webhook is set: the bot never asked.
    assert not stack.api.calls_to("getUpdates")


def test_a_start_delivered_through_nginx_gets_its_answer(
    stack: BotStack, front: tuple[Nginx, int]
) -> None:
    nginx, _ = front
    person = Person(stack.api, 7101, language_code="en")
    update_id = person.send("/start")
    person.expect("Hello")
    assert [d.status for d in stack.api.webhook.delivered(update_id)] == [200]
    (entry,) = [e for e in nginx.entries() if e["uri"].startswith("/telegram/")][-1:]
    assert entry["status"] == "200" and entry["upstream_addr"], entry
    assert registered_secret(stack) not in Path(nginx.access_log).read_text()


def test_a_wrong_or_missing_secret_gets_401_and_changes_nothing(stack: BotStack) -> None:
    person = Person(stack.api, 7102, language_code="en")
    update = direct_update(person, "/start")
    for secret in ("wrong", None, registered_secret(stack)[:-1]):
        status, body = stack.api.webhook.post(update, secret=secret)
        assert status == 401, (secret, body)
        assert body["error"] == "unauthorized"
    # Nothing was handled: no user recorded, no answer (a reply comes well within a second).
    holds(lambda: not person.messages(), 1.5, what="no answer to a refused update")
    assert not known_user(stack.database_url, person.id)
    # The control: the same update with the right secret is taken and answered.
    assert stack.api.webhook.post(update)[0] == 200
    person.expect("Hello")
    assert known_user(stack.database_url, person.id)


def test_a_repeated_update_is_handled_once(stack: BotStack) -> None:
    person = Person(stack.api, 7103, language_code="en")
    update = direct_update(person, "/help")
    assert stack.api.webhook.post(update) == (
        200, {"status": "accepted", "update_id": update["update_id"]},
    )  # fmt: skip
    assert stack.api.webhook.post(update) == (
        200, {"status": "duplicate", "update_id": update["update_id"]},
    )  # fmt: skip
    person.expect("")
    # A second answer would follow the first within a second (one handler, no pacing).
    holds(lambda: len(person.messages()) == 1, 2.0, what="exactly one answer")


def test_only_the_secret_path_reaches_the_bot(stack: BotStack) -> None:
    update = direct_update(Person(stack.api, 7104), "/start")
    for path in ("/telegram/" + "0" * 32, "/telegram/", "/telegram/x/y"):
        status, body = stack.api.webhook.post(update, path=path)
        assert status == 404 and body["error"] == "not_found", (path, body)
    # No automatic redirect from /telegram to /telegram/ (nginx's own 404).
    assert stack.api.webhook.post(update, path="/telegram")[0] == 404


def test_a_restarted_bot_registers_the_same_stored_secret(stack: BotStack) -> None:
    before = registered_secret(stack)
    stack.bot.stop()
    stack.bot.start()
    wait_until(
        lambda: len([c for c in stack.api.calls_to("setWebhook") if c.ok]) == 2,
        30,
        what="the restarted bot's setWebhook",
    )
    again = [c for c in stack.api.calls_to("setWebhook") if c.ok][-1]
    assert again.params["secret_token"] == before
    person = Person(stack.api, 7106, language_code="en")
    person.send("/start")
    person.expect("Hello")


def test_switching_back_to_polling_deletes_the_webhook(
    tmp_path: Path,
    certs: Path,
    api: FakeBotApi,
    module_jwks: JwksServer,
    client_context: ssl.SSLContext,
) -> None:
    # A front and a port of its own: the module's bot still holds the other one.
    bot_port = free_port()
    with (
        running_nginx(tmp_path, certs, free_port(), bot=bot_port) as nginx,
        FalQueueServer() as fal,
    ):
        api.webhook.context = client_context
        api.webhook.ports.add(nginx.port)
        with BotStack(api, fal, module_jwks.jwks_url, **webhook_settings(nginx, bot_port)) as first:
            assert api.webhook.registration is not None
        # SIGTERM stops it cleanly, and the webhook stays set: Telegram keeps the updates
        # until the bot is back.
        assert first.bot.proc is not None and first.bot.proc.returncode == 0
        assert api.webhook.registration is not None
        person = Person(api, 7105, language_code="en")
        person.send("/start")
        # Polling (the default): PTB deletes the webhook first, as Telegram requires; the fake
        # answers getUpdates with 409 until then.
        with BotStack(api, fal, module_jwks.jwks_url):
            wait_until(lambda: api.calls_to("deleteWebhook"), 10, what="deleteWebhook")
            assert api.webhook.registration is None
            person.expect("Hello")
            first_poll = min(c.at for c in api.calls_to("getUpdates"))
            assert max(c.at for c in api.calls_to("deleteWebhook")) < first_poll
            info = [c for c in api.calls if c.method == "getUpdates" and c.status == 409]
            assert not info, "the bot polled before deleting the webhook"
