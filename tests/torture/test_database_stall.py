"""Database stall: every process of a private PostgreSQL cluster SIGSTOPped in the middle of a
steady stream of signed completions, connections left open and silent. Webhooks answered 503
within the documented bound (WEBHOOK_DATABASE_TIMEOUT_SECONDS, 5 s), /health degraded within
its own 2 s and still answered, everything pending completes after SIGCONT, nothing
acknowledged lost."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fakes.fal_keys import FalSigner
from tests.support import postgres
from tests.support.nginx import Reply
from tests.support.sender import WEBHOOK
from tests.support.stack import Deployment, Stack
from tests.support.webhooks import fal_ok, new_request_id, signed
from tests.torture.ledger import tally
from tests.torture.runs import delivered, drain, record, size, start, steady

pytestmark = [pytest.mark.torture, pytest.mark.postgres, pytest.mark.nginx]

RATE = 20  # webhooks per second
PER_SOURCE = 5  # as in the outage: retries stay under nginx's per-client limit
# The service's bounds (README, Reliability): WEBHOOK_DATABASE_TIMEOUT_SECONDS and /health's.
WEBHOOK_BOUND, HEALTH_BOUND = 5.0, 2.0
# What a loaded 2-core machine may add to them (scheduling, TLS, nginx).
MARGIN = 2.5


def timed(call: object) -> tuple[float, Reply]:
    assert callable(call)
    started = time.monotonic()
    reply = call()
    return time.monotonic() - started, reply


def probes(stack: Stack, signer: FalSigner, seconds: float) -> list[tuple[str, float, Reply]]:
    """While the database is stalled: /health every second, and a webhook now and then, each
    on a connection of its own, from the host; (what, seconds to the answer, answer)."""
    found: list[tuple[str, float, Reply]] = []

    def webhook() -> Reply:
        body = fal_ok(new_request_id())
        return stack.call("POST", WEBHOOK, body, signed(signer, body))

    with ThreadPoolExecutor(4) as pool:
        futures = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            futures.append(("health", pool.submit(timed, lambda: stack.call("GET", "/health"))))
            futures.append(("webhook", pool.submit(timed, webhook)))
            time.sleep(1.0)
        for what, future in futures:
            took, reply = future.result(timeout=60)
            found.append((what, took, reply))
    return found


def test_a_stalled_database_gives_quick_503s_then_everything_completes(
    deployment: Deployment,
    cluster: postgres.PrivateCluster,
) -> None:
    stall = float(size(quick=10, full=30))
    count = int((stall + 8) * RATE)
    # A send recorded only after the stall must keep its lease meanwhile (as in the outage).
    with start(deployment, cluster.url, OUTBOX_LEASE_SECONDS="60") as stack:
        trainings, run = steady(
            deployment,
            stack,
            count,
            RATE,
            first_chat=5_000_000,
            name="Stall",
            per_source=PER_SOURCE,
            attempts=80,
        )
        time.sleep(3)

        cluster.freeze()
        stalled_at = time.monotonic()
        try:
            seen = probes(stack, deployment.signer, stall - WEBHOOK_BOUND - MARGIN)
            time.sleep(max(0.0, stalled_at + stall - time.monotonic()))
        finally:
            cluster.thaw()
        thawed_at = time.monotonic()

        deliveries = run.result(timeout=240)
        drain(cluster.url, timeout=90)
        ledger = record(
            tally("database stall", deliveries, trainings, cluster.url, delivered(deployment.api))
        )
        # nginx's own account of every webhook answered while the database was stalled.
        inside = [
            e
            for e in stack.nginx.entries()
            if e["uri"].startswith(WEBHOOK) and e["method"] == "POST"
        ]
        acks = sorted(d.acknowledged_at for d in deliveries if d.acknowledged_at)
        first_ack_after = next(t for t in acks if t > thawed_at) - thawed_at
        # Attempts begun while stalled whose deadline came before the thaw (later ones may be
        # answered 200 by a database back in time).
        window = (stalled_at + 0.5, thawed_at - WEBHOOK_BOUND - MARGIN)
        statuses_during = [
            s for d in deliveries for t, s in d.attempts if window[0] < t < window[1]
        ]
        webhook_times = [took for what, took, _ in seen if what == "webhook"]
        health_times = [took for what, took, _ in seen if what == "health"]
        ledger.notes = {
            "stall s": stall,
            "answers to attempts begun and due in the stall": {
                s: statuses_during.count(s) for s in sorted(set(statuses_during))
            },
            "probe webhook answered within s": round(max(webhook_times), 2),
            "/health answered within s": round(max(health_times), 2),
            "slowest webhook in nginx's log s": max(float(e["duration"]) for e in inside),
            "first webhook acknowledged after the thaw s": round(first_ack_after, 2),
        }
        assert "unhandled_error" not in stack.logs()

    ledger.check()
    assert ledger.acknowledged == ledger.sent == count, ledger
    assert ledger.messages_received == count, ledger
    assert statuses_during and set(statuses_during) == {503}, ledger.notes
    for what, took, reply in seen:
        bound = WEBHOOK_BOUND if what == "webhook" else HEALTH_BOUND
        assert reply.status == 503 and took <= bound + MARGIN, (what, took, reply)
        if what == "health":
            assert reply.json()["status"] == "degraded" and reply.json()["database"] == "error"
        else:
            assert reply.json()["error"] == "database_unavailable", reply
    # Never left hanging until nginx's 30 s: nothing nginx answered took much over the bound.
    assert max(float(e["duration"]) for e in inside) <= WEBHOOK_BOUND + MARGIN, ledger.notes
    assert len(health_times) >= 2, seen
