"""Crashes: signed completions at full speed through nginx while a gunicorn worker is killed
with SIGKILL every 2 s, and the dispatcher (the worker holding the leader lock) twice."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.support.sender import Background, Sender
from tests.support.stack import Deployment
from tests.torture.ledger import Kill, tally
from tests.torture.runs import completions, delivered, drain, record, size, start

pytestmark = [pytest.mark.torture, pytest.mark.postgres, pytest.mark.nginx]

KILL_EVERY_SECONDS = 2.0
DISPATCHER_KILLS = 2
# Each source address sends at most this many webhooks, well inside nginx's burst of 50.
PER_SOURCE = 25


def test_killed_workers_and_dispatchers_lose_nothing_and_send_once(
    deployment: Deployment,
    database: str,
) -> None:
    count = size(quick=1500, full=5000)
    api, signer, client_context = deployment.api, deployment.signer, deployment.context
    with start(deployment, database) as stack:
        trainings, webhooks = completions(
            database, count, first_chat=2_000_000, name="Crash", per_source=PER_SOURCE
        )
        # FAL retries a delivery that got no 2xx; so does this sender, up to ~30 s.
        sender = Sender(stack.port, client_context, signer, attempts=25, retry_delay=0.3)
        started = time.monotonic()
        run = Background(sender, webhooks, concurrency=16, rate=None)
        kills: list[Kill] = []
        chooser = random.Random(6)
        while run.running() or sum(k.leader for k in kills) < DISPATCHER_KILLS:
            time.sleep(KILL_EVERY_SECONDS)
            assert time.monotonic() - started < 240, f"the run does not end: {kills}"
            leader = stack.leader()
            others = [pid for pid in stack.workers() if pid != leader]
            # Every other tick the dispatcher, until it has been killed twice; else a worker
            # that is not the dispatcher.
            if leader and len(kills) % 2 == 0 and sum(k.leader for k in kills) < DISPATCHER_KILLS:
                victim = leader
            elif others:
                victim = chooser.choice(others)
            else:
                continue
            os.kill(victim, signal.SIGKILL)
            kills.append(Kill(time.monotonic(), victim, victim == leader))
        deliveries = run.result(timeout=120)
        sending_seconds = time.monotonic() - started
        drain(database, timeout=60)
        ledger = record(tally("crashes", deliveries, trainings, database, delivered(api), kills))
        ledger.notes.update(
            {
                "sending took s": round(sending_seconds, 1),
                "workers killed": len(kills),
                "of them the dispatcher": sum(k.leader for k in kills),
                "requests nginx retried on the upstream": stack.retried_by_nginx(),
                "nginx answers": dict(stack.access_statuses()),
            }
        )
        assert "unhandled_error" not in stack.logs()

    ledger.check()
    # Every delivery was acknowledged in the end (FAL's retries), and each outcome enqueued once.
    assert ledger.acknowledged == ledger.sent == count, ledger
    assert ledger.notifications_enqueued == count, ledger
    assert ledger.messages_received == count + ledger.crash_window_duplicates, ledger
    assert sum(k.leader for k in kills) == DISPATCHER_KILLS
    assert len(kills) >= 3, kills
    # "Rare": at most what was in flight with the dispatcher each time it was killed.
    assert ledger.crash_window_duplicates <= 16 * DISPATCHER_KILLS, ledger
