"""What the scenarios share: their sizes, the stack with their settings, the ledgers kept for
the summary, and waiting for the outbox to drain."""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager

import psycopg

from tests.fakes.telegram_api import FakeBotApi
from tests.support.sender import Background, Sender, Webhook, sources
from tests.support.stack import Deployment, Stack
from tests.support.trainings import Training, seed_trainings
from tests.support.webhooks import fal_ok
from tests.torture.ledger import Ledger, rows

FULL = os.environ.get("TORTURE") == "full"

LEDGERS: list[Ledger] = []


def size(quick: int, full: int) -> int:
    """The scenario's size: the issue's under TORTURE=full, a quick one otherwise."""
    return full if FULL else quick


def record(ledger: Ledger) -> Ledger:
    """Keep the ledger for the summary at the end of the run (printed even when it fails)."""
    LEDGERS.append(ledger)
    return ledger


def start(
    deployment: Deployment, database_url: str, *, instances: int = 1, **extra: str
) -> AbstractContextManager[Stack]:
    """The stack of a scenario: Telegram's pacing lifted to the local server's pace unless
    the scenario says otherwise (30/s would make thousands of messages take minutes,
    measuring the pacer instead of the pipeline)."""
    settings = {
        "TELEGRAM_RATE_PER_SECOND": "1000",
        # A dispatcher killed holding rows gives them up after this; production keeps 120 s.
        "OUTBOX_LEASE_SECONDS": "5",
        **extra,
    }
    return deployment.start(database_url, instances=instances, **settings)


def completions(
    database_url: str, count: int, *, first_chat: int, name: str, per_source: int
) -> tuple[list[Training], list[Webhook]]:
    """`count` registered trainings and FAL's completion of each, `per_source` of them from
    each source address (so that retries stay under nginx's per-client limit)."""
    trainings = seed_trainings(database_url, count, first_chat=first_chat, name=name)
    addresses = sources(count // per_source + 1)
    webhooks = [
        Webhook(t.request_id, fal_ok(t.request_id), addresses[i // per_source])
        for i, t in enumerate(trainings)
    ]
    return trainings, webhooks


def steady(
    deployment: Deployment,
    stack: Stack,
    count: int,
    rate: float | None,
    *,
    first_chat: int,
    name: str,
    per_source: int,
    attempts: int = 60,
) -> tuple[list[Training], Background]:
    """`count` completions sent at `rate` per second (None: at full speed) from a thread,
    retried as FAL retries a 503 (`attempts` times, about a second apart after the first few)."""
    trainings, webhooks = completions(
        stack.database_url, count, first_chat=first_chat, name=name, per_source=per_source
    )
    sender = Sender(
        stack.port, deployment.context, deployment.signer, attempts=attempts, retry_delay=0.25
    )
    return trainings, Background(sender, webhooks, concurrency=16, rate=rate)


def delivered(api: FakeBotApi) -> list[tuple[int, float]]:
    """(chat_id, monotonic time) of every sendMessage the local server accepted."""
    return [(int(c.params["chat_id"]), c.at) for c in api.calls_to("sendMessage") if c.ok]


def outbox_open(database_url: str) -> int:
    """Notifications not yet in a final state."""
    query = "SELECT count(*) FROM notifications WHERE state IN ('pending', 'sending')"
    return int(rows(database_url, query)[0][0])


def drain(database_url: str, timeout: float, quiet: float = 1.0) -> None:
    """Wait until the outbox is empty, then `quiet` seconds more for stragglers to show."""
    deadline = time.monotonic() + timeout
    while outbox_open(database_url):
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox still has {outbox_open(database_url)} open rows")
        time.sleep(0.2)
    time.sleep(quiet)


def refusals_ledger(
    scenario: str,
    database_url: str,
    api: FakeBotApi,
    answers: dict[int, int],
    notes: dict[str, object],
) -> Ledger:
    """The ledger of a scenario that sends each request once and expects most refused."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM webhook_events").fetchone()
        enqueued = conn.execute("SELECT count(*) FROM notifications").fetchone()
    return Ledger(
        scenario=scenario,
        sent=sum(answers.values()),
        attempts=sum(answers.values()),
        acknowledged=sum(n for status, n in answers.items() if 200 <= status < 300),
        answers=dict(answers),
        rows_recorded=int(rows[0]) if rows else 0,
        notifications_enqueued=int(enqueued[0]) if enqueued else 0,
        messages_received=len(delivered(api)),
        duplicates=0,
        crash_window_duplicates=0,
        notes=notes,
    )
