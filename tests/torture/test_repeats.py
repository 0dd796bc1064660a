"""Repeats and disorder: every completion (or failure) sent three times, everything shuffled,
progress events around it and at least one after the terminal one."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import psycopg
import pytest

from tests.support.sender import Sender, Webhook, sources
from tests.support.stack import Deployment
from tests.support.trainings import Training, seed_trainings
from tests.support.webhooks import fal_error, fal_ok, legacy
from tests.torture.ledger import tally
from tests.torture.runs import delivered, drain, record, size, start

pytestmark = [pytest.mark.torture, pytest.mark.postgres, pytest.mark.nginx]

COPIES = 3


def events(trainings: list[Training], chooser: random.Random) -> tuple[list[Webhook], set[str]]:
    """All deliveries in a shuffled order, and the request ids whose training fails."""
    failing = {t.request_id for i, t in enumerate(trainings) if i % 4 == 3}
    keyed: list[tuple[float, str, bytes]] = []
    for t in trainings:
        rid = t.request_id
        terminal = (fal_error if rid in failing else fal_ok)(rid)
        copies = [chooser.random() for _ in range(COPIES)]
        keyed += [(key, rid, terminal) for key in copies]
        progress = [legacy(rid, "in_progress", progress=p) for p in (20, 50, 80)]
        progress.append(legacy(rid, "queued"))
        keyed += [(chooser.random(), rid, body) for body in progress]
        # One more progress event, surely after the first copy of the outcome.
        late = chooser.uniform(min(copies), 1.0)
        keyed.append((late, rid, legacy(rid, "in_progress", progress=95)))
    keyed.sort()
    addresses = sources(len(keyed) // 25 + 1)
    return [
        Webhook(rid, body, addresses[i // 25]) for i, (_, rid, body) in enumerate(keyed)
    ], failing


def test_repeated_shuffled_events_give_one_outcome_and_one_message_each(
    deployment: Deployment,
    database: str,
) -> None:
    count = size(quick=150, full=1000)
    api, signer, client_context = deployment.api, deployment.signer, deployment.context
    with start(deployment, database) as stack:
        trainings = seed_trainings(database, count, first_chat=6_000_000, name="Repeat")
        webhooks, failing = events(trainings, random.Random(3))
        sender = Sender(stack.port, client_context, signer, attempts=1)
        deliveries = sender.deliver_all(webhooks, concurrency=16)
        drain(database, timeout=60)
        ledger = record(
            tally("repeats and disorder", deliveries, trainings, database, delivered(api))
        )
        with psycopg.connect(database, autocommit=True) as conn:
            final = {
                rid: (status, progress)
                for rid, status, progress in conn.execute(
                    "SELECT j.request_id, a.status, a.progress FROM avatars a "
                    "JOIN fal_jobs j ON j.avatar_id = a.id"
                )
            }
            kinds = Counter(kind for (kind,) in conn.execute("SELECT kind FROM notifications"))

    results: dict[str, Counter[str]] = defaultdict(Counter)
    terminal_results: dict[str, Counter[str]] = defaultdict(Counter)
    for d in deliveries:
        results[d.webhook.request_id][str(d.result)] += 1
        if b'"gateway_request_id"' in d.webhook.body:
            terminal_results[d.webhook.request_id][str(d.result)] += 1
    everything = sum(results.values(), Counter())
    ledger.notes = {"answers by outcome": dict(everything)}

    assert ledger.answers == {200: len(webhooks)}, ledger
    ledger.check()
    # Exact copies are duplicates and nothing else is; each outcome was taken exactly once.
    assert everything["duplicate"] == (COPIES - 1) * count, everything
    assert all(c == {"received": 1, "duplicate": COPIES - 1} for c in terminal_results.values())
    assert everything["unmatched"] == 0, everything
    # Six distinct bodies per training: outcome, three progress values, queued, the late one.
    assert ledger.rows_recorded == 6 * count, ledger
    for t in trainings:
        expected = ("failed", None) if t.request_id in failing else ("completed", 100)
        status, progress = final[t.request_id]
        assert status == expected[0], (t, status)
        assert expected[1] is None or progress == expected[1], (t, progress)
    assert kinds == {"completed": count - len(failing), "failed": len(failing)}, kinds
    assert ledger.messages_received == count and ledger.duplicates == 0, ledger
