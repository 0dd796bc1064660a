"""Database outage: a private PostgreSQL cluster stopped in the middle of a steady stream of
signed completions. 503s while it is down, /health degraded, recovery within 5 s of its
return, and nothing acknowledged lost."""

from __future__ import annotations

import time

import pytest

from tests.support import postgres
from tests.support.nginx import Reply
from tests.support.stack import Deployment, Stack
from tests.support.webhooks import fal_ok, new_request_id, signed
from tests.torture.ledger import tally
from tests.torture.runs import delivered, drain, record, size, start, steady

pytestmark = [pytest.mark.torture, pytest.mark.postgres, pytest.mark.nginx]

RATE = 25  # webhooks per second
# Few webhooks per source address: their retries during the outage stay under nginx's
# per-client limit (10 r/s), so what the sender sees is the service's answer.
PER_SOURCE = 5
RECOVERY_SECONDS = 5.0


def first_ok_after(stack: Stack, since: float, request: tuple[str, str]) -> float:
    """Seconds from `since` until GET `request` (from the host) first answers 200."""
    method, path = request
    deadline = since + 30
    while time.monotonic() < deadline:
        try:
            if stack.call(method, path).status == 200:
                return time.monotonic() - since
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path} did not recover within 30 s")


def test_a_stopped_database_gives_503_then_recovers_and_loses_nothing(
    deployment: Deployment,
    cluster: postgres.PrivateCluster,
) -> None:
    seconds, outage = size(quick=16, full=30), 10.0
    count = seconds * RATE
    api, signer = deployment.api, deployment.signer
    # A send Telegram accepted while the database was down is recorded when it returns; its
    # lease must outlast the outage, or the row is handed out again (production keeps 120 s).
    with start(deployment, cluster.url, OUTBOX_LEASE_SECONDS="30") as stack:
        # FAL keeps retrying a 503; this sender does for about a minute.
        trainings, run = steady(
            deployment,
            stack,
            count,
            RATE,
            first_chat=3_000_000,
            name="Outage",
            per_source=PER_SOURCE,
        )
        time.sleep(3)

        cluster.stop()
        down_at = time.monotonic()
        time.sleep(1)
        health = stack.call("GET", "/health")
        body = fal_ok(new_request_id())
        probe = stack.call("POST", "/api/v1/avatar/status_update", body, signed(signer, body))
        status = stack.call("GET", "/api/v1/webhook/status")
        time.sleep(max(0.0, down_at + outage - time.monotonic()))
        # The cluster accepts connections a little before start() returns.
        restarting_at = time.monotonic()
        cluster.start()
        up_at = time.monotonic()
        health_back = first_ok_after(stack, up_at, ("GET", "/health"))

        deliveries = run.result(timeout=180)
        drain(cluster.url, timeout=60)
        ledger = record(
            tally("database outage", deliveries, trainings, cluster.url, delivered(api))
        )
        during = [s for d in deliveries for t, s in d.attempts if down_at + 0.5 < t < restarting_at]
        acks_after = sorted(d.acknowledged_at for d in deliveries if d.acknowledged_at)
        first_ack_after = next(t for t in acks_after if t > up_at) - up_at
        ledger.notes = {
            "outage s": outage,
            "answers during the outage": {s: during.count(s) for s in sorted(set(during))},
            "/health back after s": round(health_back, 2),
            "first webhook acknowledged after s": round(first_ack_after, 2),
        }
        assert "unhandled_error" not in stack.logs()

    assert_unavailable(health, probe, status)
    ledger.check()
    assert ledger.acknowledged == ledger.sent == count, ledger
    assert set(ledger.answers) == {200, 503}, ledger
    assert during and set(during) == {503}, during
    assert health_back <= RECOVERY_SECONDS, ledger.notes
    assert first_ack_after <= RECOVERY_SECONDS, ledger.notes
    assert ledger.messages_received == count, ledger


def assert_unavailable(health: Reply, probe: Reply, status: Reply) -> None:
    assert health.status == 503, health
    assert health.json()["status"] == "degraded" and health.json()["database"] == "error"
    assert probe.status == 503, probe
    assert probe.json()["error"] == "database_unavailable", probe
    assert status.status == 503 and status.json()["database"] == "error", status
