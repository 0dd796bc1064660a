"""Notifications end to end: signed FAL callback -> gunicorn -> outbox -> local Bot API server.

What needs real processes lives here: the webhook's path to Telegram through gunicorn, several
workers and services electing one sender, a SIGKILL. How the dispatcher answers each Telegram
reply, paces and expedites is tested in-process in test_dispatcher.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import User
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.telegram_api import FakeBotApi
from tests.support import postgres
from tests.support.db import attach_many, notifications, run
from tests.support.http import post
from tests.support.servers import GunicornServer, wait_until
from tests.support.webhooks import fal_error, fal_ok, new_request_id, signed

WEBHOOK = "/api/v1/avatar/status_update"
TOKEN = "123456:TEST-token-for-the-local-bot-api"


@pytest.fixture
def api() -> Iterator[FakeBotApi]:
    with FakeBotApi(TOKEN) as server:
        yield server


def service_env(api: FakeBotApi, jwks: JwksServer, **extra: str) -> dict[str, str]:
    return {
        "TELEGRAM_TOKEN": TOKEN,
        "TELEGRAM_API_URL": api.url,
        "FAL_JWKS_URL": jwks.jwks_url,
        **extra,
    }


def complete(server: GunicornServer, signer: FalSigner, rid: str, body: bytes | None = None) -> str:
    """POST the signed completion; returns the service's answer (received, duplicate, ...)."""
    body = body or fal_ok(rid)
    answer = post(f"{server.url}{WEBHOOK}", body, signed(signer, body))
    assert answer.status == 200, answer.body
    return str(answer.json()["status"])


def wait_states(database_url: str, states: list[str], timeout: float = 5.0) -> None:
    """The outbox records a send just after Telegram answers it: wait for the record."""

    def reached() -> bool:
        return [n["state"] for n in notifications(database_url)] == states

    wait_until(reached, timeout, interval=0.1, what=f"notification states {states}")


def test_completion_reaches_the_owner_once_with_the_name_rendered_literally(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    name = "<b>Ann_2*[x]</b> & Co"
    with GunicornServer(service_env(api, jwks)) as server:
        rid = new_request_id()
        attach_many(server.database_url, [(5001, name, rid)])
        assert complete(server, signer, rid) == "received"
        (message,) = api.wait_for_messages(1, timeout=5)
        assert message["chat_id"] == 5001
        assert message["parse_mode"] == "HTML"
        delivered = [c for c in api.calls_to("sendMessage") if c.ok]
        # What the person sees, after Telegram parsed the HTML.
        assert name in delivered[0].result["text"]
        buttons = message["reply_markup"]["inline_keyboard"]
        assert [b["callback_data"] for row in buttons for b in row][-1] == "avatars:list"
        # FAL repeats itself: the repeat is a duplicate and enqueues nothing, so once the one
        # notification is recorded sent, nothing is left that could send a second message.
        assert complete(server, signer, rid) == "duplicate"
        wait_states(server.database_url, ["sent"])
        assert len(api.sent_messages()) == 1
        # Claimed once: a send only follows a claim, so it was sent once.
        assert notifications(server.database_url)[0]["attempts"] == 1


def test_failure_message_says_what_to_do_in_english_for_english_users(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    with GunicornServer(service_env(api, jwks)) as server:
        rid = new_request_id()
        attach_many(server.database_url, [(5002, "Bob", rid)])

        async def english(session: AsyncSession) -> None:
            await session.execute(update(User).values(language_code="en"))

        run(server.database_url, english)
        complete(server, signer, rid, fal_error(rid))
        (message,) = api.wait_for_messages(1, timeout=5)
        assert "failed" in message["text"]
        assert "create the avatar again" in message["text"]


@pytest.mark.postgres
def test_twenty_concurrent_duplicates_with_two_dispatchers_send_one_message(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    with postgres.fresh_database() as database:
        env = service_env(api, jwks, DATABASE_URL=database)
        with GunicornServer(env, workers=2) as one, GunicornServer(env, workers=2) as two:
            rid = new_request_id()
            attach_many(database, [(6001, "Twins", rid)])
            body = fal_ok(rid)

            def send(i: int) -> str:
                server = one if i % 2 else two
                answer = post(f"{server.url}{WEBHOOK}", body, signed(signer, body))
                assert answer.status == 200
                return str(answer.json()["status"])

            with ThreadPoolExecutor(max_workers=20) as pool:
                outcomes = sorted(pool.map(send, range(20)))
            assert outcomes == ["duplicate"] * 19 + ["received"]
            api.wait_for_messages(1, timeout=5)
            # One row, recorded sent: no dispatcher of the four workers has anything to resend.
            wait_states(database, ["sent"])
            assert len(api.sent_messages()) == 1
            # Claimed once (a claim counts an attempt): no second sender ever had it in hand.
            assert notifications(database)[0]["attempts"] == 1


def test_dispatcher_killed_after_claiming_delivers_after_restart(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    # Two messages for one chat, 5 s apart: the second sits claimed while the first is sent.
    env = service_env(api, jwks, TELEGRAM_CHAT_INTERVAL="5", OUTBOX_LEASE_SECONDS="3")
    first_server = GunicornServer(env)
    database = first_server.database_url
    first, second = new_request_id(), new_request_id()
    attach_many(database, [(5007, "One", first), (5007, "Two", second)])
    with first_server:
        complete(first_server, signer, first)
        complete(first_server, signer, second)
        api.wait_for_messages(1, timeout=5)

        wait_states(database, ["sent", "sending"])
        first_server.kill()  # SIGKILL to the master and both workers at once
        assert len(api.sent_messages()) == 1
        # The same database, a new service: the expired lease hands the row to the new leader.
        restarted = GunicornServer({**env, "DATABASE_URL": database}, migrate=False)
        with restarted:
            messages = api.wait_for_messages(2, timeout=15)
            assert "Two" in messages[1]["text"]
            wait_states(database, ["sent", "sent"])
            assert len(api.sent_messages()) == 2
