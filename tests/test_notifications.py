"""Notifications end to end: signed FAL callback -> gunicorn -> outbox -> local Bot API server."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import User
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.telegram_api import FakeBotApi, Fault
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


def complete(server: GunicornServer, signer: FalSigner, rid: str, body: bytes | None = None) -> int:
    body = body or fal_ok(rid)
    answer = post(f"{server.url}{WEBHOOK}", body, signed(signer, body))
    assert answer.status == 200, answer.body
    return answer.status


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
        complete(server, signer, rid)
        (message,) = api.wait_for_messages(1, timeout=5)
        assert message["chat_id"] == 5001
        assert message["parse_mode"] == "HTML"
        delivered = [c for c in api.calls_to("sendMessage") if c.ok]
        # What the person sees, after Telegram parsed the HTML.
        assert name in delivered[0].result["text"]
        buttons = message["reply_markup"]["inline_keyboard"]
        assert [b["callback_data"] for row in buttons for b in row][-1] == "avatars:list"
        complete(server, signer, rid)  # FAL repeats itself
        time.sleep(1.0)
        assert len(api.sent_messages()) == 1
        wait_states(server.database_url, ["sent"])


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
            time.sleep(1.5)
            assert len(api.sent_messages()) == 1


def test_429_waits_retry_after_then_delivers(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    api.plan("sendMessage", [Fault.retry_after(2), Fault.ok()])
    with GunicornServer(service_env(api, jwks)) as server:
        rid = new_request_id()
        attach_many(server.database_url, [(5003, "Slow", rid)])
        complete(server, signer, rid)
        api.wait_for_messages(1, timeout=10)
        first, second = api.calls_to("sendMessage")
        assert first.status == 429
        waited = second.at - first.at
        assert 2.0 <= waited < 3.5, waited


def test_a_burst_of_5xx_is_retried_with_backoff_until_delivered(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    api.plan(
        "sendMessage",
        [Fault.server_error(500), Fault.server_error(502), Fault.server_error(500), Fault.ok()],
    )
    with GunicornServer(service_env(api, jwks)) as server:
        rid = new_request_id()
        attach_many(server.database_url, [(5004, "Flaky", rid)])
        complete(server, signer, rid)
        api.wait_for_messages(1, timeout=15)
        attempts = api.calls_to("sendMessage")
        assert [c.status for c in attempts] == [500, 502, 500, 200]
        gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
        # Exponential: each wait at least half of 1, 2, 4 seconds (full jitter in [0.5, 1]).
        assert gaps[0] >= 0.5 and gaps[1] >= 1.0 and gaps[2] >= 2.0, gaps
        wait_states(server.database_url, ["sent"])
        assert notifications(server.database_url)[0]["attempts"] == 4


def test_blocked_by_the_user_is_not_retried(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    api.plan("sendMessage", [Fault.blocked()])
    with GunicornServer(service_env(api, jwks)) as server:
        rid = new_request_id()
        attach_many(server.database_url, [(5005, "Blocked", rid)])
        complete(server, signer, rid)
        wait_until(lambda: api.calls_to("sendMessage"), 5, what="the first send")
        time.sleep(2.0)
        assert len(api.calls_to("sendMessage")) == 1
        wait_states(server.database_url, ["undeliverable"])
        assert "blocked" in notifications(server.database_url)[0]["last_error"]


def test_read_timeout_is_recorded_as_uncertain_and_not_resent(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    # Telegram got the message but the answer never came back in time.
    api.plan("sendMessage", [Fault.hang(12)])
    with GunicornServer(service_env(api, jwks)) as server:
        rid = new_request_id()
        attach_many(server.database_url, [(5006, "Maybe", rid)])
        complete(server, signer, rid)

        wait_states(server.database_url, ["uncertain"], timeout=20)
        time.sleep(1.5)
        assert len(api.calls_to("sendMessage")) == 1


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
            assert len(messages) == 2
            assert "Two" in messages[1]["text"]
            time.sleep(1.0)
            assert len(api.sent_messages()) == 2


def test_telegram_down_for_a_while_delivers_everything_once_when_back(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    with GunicornServer(service_env(api, jwks)) as server:
        trainings = [(7000 + i, f"Down {i}", new_request_id()) for i in range(5)]
        attach_many(server.database_url, trainings)
        # The dispatcher says hello (getMe) once it leads; Telegram goes down after that.
        wait_until(lambda: any(c.ok for c in api.calls_to("getMe")), 10, what="getMe")
        api.down = True
        for _, _, rid in trainings:
            complete(server, signer, rid)
        wait_until(lambda: len(api.calls_to("sendMessage")) >= 5, 10, what="failed attempts")
        time.sleep(3)
        assert api.sent_messages() == []
        api.down = False
        messages = api.wait_for_messages(5, timeout=40)
        time.sleep(2)
        assert sorted(m["chat_id"] for m in api.sent_messages()) == [t[0] for t in trainings]
        assert len(messages) == 5
        # The first success brings the rest forward instead of leaving them to their back-off.
        delivered = sorted(c.at for c in api.calls_to("sendMessage") if c.ok)
        assert delivered[-1] - delivered[0] < 1.5, delivered


def test_pacing_global_rate_and_one_per_second_per_chat(
    api: FakeBotApi, jwks: JwksServer, signer: FalSigner
) -> None:
    env = service_env(api, jwks, TELEGRAM_RATE_PER_SECOND="25")
    with GunicornServer(env) as server:
        trainings = [(8000 + i, f"User {i}", new_request_id()) for i in range(100)]
        same_chat = [(9000, "Twice A", new_request_id()), (9000, "Twice B", new_request_id())]
        attach_many(server.database_url, trainings + same_chat)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda t: complete(server, signer, t[2]), trainings + same_chat))
        api.wait_for_messages(102, timeout=30)
        times = sorted(c.at for c in api.calls_to("sendMessage") if c.ok)
        # No one-second window holds more than the configured rate (plus the edge slot).
        busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
        assert busiest <= 26, busiest
        assert times[-1] - times[0] >= 101 / 25 - 0.1
        twice = [c.at for c in api.calls_to("sendMessage") if c.ok and c.params["chat_id"] == 9000]
        assert len(twice) == 2
        assert twice[1] - twice[0] >= 0.99
