"""Trouble on our side answers 503 (so FAL retries) and heals without a restart (in-process)."""

from __future__ import annotations

import asyncio
import time

import pytest

from service import operator
from service.store.engine import DatabaseUnavailable, within
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support import postgres
from tests.support.app import WEBHOOK, running_app
from tests.support.db import attach_many, run
from tests.support.servers import free_port, wait_until
from tests.support.webhooks import fal_ok, new_request_id, signed


def test_database_outage_gives_503_and_recovers_without_restart(
    cluster: postgres.PrivateCluster, jwks: JwksServer, signer: FalSigner
) -> None:
    with running_app(cluster.url, FAL_JWKS_URL=jwks.jwks_url) as app:
        first, second = new_request_id(), new_request_id()
        attach_many(cluster.url, [(1, "A", first), (2, "B", second)])
        body = fal_ok(first)
        assert app.post(WEBHOOK, body, signed(signer, body)).status == 200

        cluster.stop()
        body = fal_ok(second)
        down = app.post(WEBHOOK, body, signed(signer, body))
        assert down.status == 503
        assert down.json()["error"] == "database_unavailable"
        health = app.call("GET", "/health")
        assert (health.status, health.json()["database"]) == (503, "error")
        assert app.call("GET", "/api/v1/webhook/status").status == 503

        cluster.start()

        def accepted() -> bool:
            answer = app.post(WEBHOOK, body, signed(signer, body))
            return answer.status == 200 and answer.json()["status"] == "received"

        wait_until(accepted, timeout=10, interval=0.2, what="the webhook to recover")
        assert app.call("GET", "/health").status == 200
        shown = run(cluster.url, lambda s: operator.show(s, second))
        assert shown["status"] == "completed"


def test_unreachable_key_set_gives_503_not_401(sqlite_url: str, signer: FalSigner) -> None:
    dead = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    with running_app(sqlite_url, FAL_JWKS_URL=dead) as app:
        body = fal_ok(new_request_id())
        answer = app.post(WEBHOOK, body, signed(signer, body))
        assert answer.status == 503
        assert answer.json()["error"] == "keys_unavailable"


def test_key_set_answering_500_gives_503_until_it_is_back(
    sqlite_url: str, jwks: JwksServer, signer: FalSigner
) -> None:
    jwks.fail(500)
    with running_app(sqlite_url, FAL_JWKS_URL=jwks.jwks_url) as app:
        body = fal_ok(new_request_id())
        refused = app.post(WEBHOOK, body, signed(signer, body))
        assert (refused.status, refused.json()["error"]) == (503, "keys_unavailable")
        # Once the key server is back, the same delivery is accepted (after the 1 s back-off).
        jwks.fail(None)

        def accepted() -> bool:
            return app.post(WEBHOOK, body, signed(signer, body)).status == 200

        wait_until(accepted, timeout=5, interval=0.3, what="the key set to be fetched again")


def test_within_answers_at_the_deadline_and_leaves_a_slow_cleanup_behind() -> None:
    # The shape of a stalled database: the work hangs, and so does its cancellation.
    cleaned: list[float] = []

    async def stuck() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.shield(asyncio.sleep(0.5))
            cleaned.append(time.monotonic())

    async def scenario() -> tuple[float, int]:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=r"within 0\.2 s"):
            await within(0.2, stuck())
        answered = time.monotonic() - started
        assert await within(1.0, asyncio.sleep(0, result=7)) == 7
        await asyncio.sleep(1.0)
        return answered, len(cleaned)

    answered, cleanups = asyncio.run(scenario())
    # Answered at the deadline, not after the cleanup's half second; the cleanup still ran.
    assert 0.2 <= answered < 0.45, answered
    assert cleanups == 1
