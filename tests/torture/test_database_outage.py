"""Database outage: a private PostgreSQL cluster stopped cleanly in the middle of a steady
stream of signed completions, or its postmaster SIGKILLed in the middle of a full-speed one.
503s while it is down (and only then), /health degraded, recovery within 5 s of its return
(after crash recovery), and nothing acknowledged lost."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.fakes.telegram_api import FakeBotApi
from tests.support import postgres
from tests.support.nginx import Reply
from tests.support.sender import Background
from tests.support.servers import wait_until
from tests.support.stack import Deployment, Stack
from tests.support.trainings import Training
from tests.support.webhooks import fal_ok, new_request_id, signed
from tests.torture.ledger import Ledger, tally
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
        ledger, during = come_back(api, stack, cluster, run, trainings, "database outage", down_at)
        ledger.notes["outage s"] = outage

    assert_unavailable(health, probe, status)
    assert_recovered(ledger, during, count)


def test_a_killed_postmaster_gives_503_only_while_down_and_loses_nothing(
    deployment: Deployment,
    cluster: postgres.PrivateCluster,
) -> None:
    count, down = size(quick=1000, full=4000), float(size(quick=3, full=10))
    with start(deployment, cluster.url, OUTBOX_LEASE_SECONDS="30") as stack:
        # At full speed: whatever was in flight when the postmaster died.
        trainings, run = steady(
            deployment, stack, count, None, first_chat=6_000_000, name="Kill", per_source=PER_SOURCE
        )
        wait_until(lambda: recorded(cluster.url) >= count // 4, 60, what="a quarter recorded")
        cluster.crash()
        down_at = time.monotonic()
        time.sleep(max(0.0, down_at + down - time.monotonic()))
        ledger, during = come_back(
            deployment.api, stack, cluster, run, trainings, "database killed", down_at
        )
        ledger.notes["down s"] = down
        ledger.notes["crash recovery in the log"] = "redo done" in cluster.log()

    assert_recovered(ledger, during, count)
    assert ledger.notes["crash recovery in the log"], "the cluster did not run crash recovery"


def recorded(database_url: str) -> int:
    with psycopg.connect(database_url, connect_timeout=3, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_events").fetchone()
    return int(row[0]) if row else 0


def come_back(
    api: FakeBotApi,
    stack: Stack,
    cluster: postgres.PrivateCluster,
    run: Background,
    trainings: list[Training],
    scenario: str,
    down_at: float,
) -> tuple[Ledger, list[int]]:
    """Start the cluster again; the run's ledger, and the answers to attempts made while it
    was down. The notes say how soon /health and the first webhook were back."""
    # The cluster accepts connections a little before start() returns.
    restarting_at = time.monotonic()
    cluster.start()
    up_at = time.monotonic()
    health_back = first_ok_after(stack, up_at, ("GET", "/health"))
    deliveries = run.result(timeout=240)
    drain(cluster.url, timeout=60)
    ledger = record(tally(scenario, deliveries, trainings, cluster.url, delivered(api)))
    during = [s for d in deliveries for t, s in d.attempts if down_at + 0.5 < t < restarting_at]
    # Well before the database went, and once it had been back for the recovery's bound.
    outside = {
        s
        for d in deliveries
        for t, s in d.attempts
        if t < down_at - 1 or t > up_at + RECOVERY_SECONDS
    }
    acks_after = sorted(d.acknowledged_at for d in deliveries if d.acknowledged_at)
    first_ack_after = next(t for t in acks_after if t > up_at) - up_at
    ledger.notes = {
        "answers while down": {s: during.count(s) for s in sorted(set(during))},
        "/health back after s": round(health_back, 2),
        "first webhook acknowledged after s": round(first_ack_after, 2),
        "answers outside the outage": sorted(outside),
    }
    assert "unhandled_error" not in stack.logs()
    return ledger, during


def assert_recovered(ledger: Ledger, during: list[int], count: int) -> None:
    ledger.check()
    assert ledger.acknowledged == ledger.sent == count, ledger
    assert set(ledger.answers) == {200, 503}, ledger
    assert during and set(during) == {503}, during
    # Only 200s outside the outage. At quick sizes on a fast run every attempt can fall inside
    # the window (the quarter recorded within a second, the rest within the recovery bound);
    # that the webhooks were answered 200 before and after is the acknowledgements' to show.
    assert set(ledger.notes["answers outside the outage"]) <= {200}, ledger.notes
    assert ledger.notes["/health back after s"] <= RECOVERY_SECONDS, ledger.notes
    assert ledger.notes["first webhook acknowledged after s"] <= RECOVERY_SECONDS, ledger.notes
    assert ledger.messages_received == count, ledger


def assert_unavailable(health: Reply, probe: Reply, status: Reply) -> None:
    assert health.status == 503, health
    assert health.json()["status"] == "degraded" and health.json()["database"] == "error"
    assert probe.status == 503, probe
    assert probe.json()["error"] == "database_unavailable", probe
    assert status.status == 503 and status.json()["database"] == "error", status
