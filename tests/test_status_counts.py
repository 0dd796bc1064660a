"""Status and metrics counts from the tallies: equal to a full count after every kind of change."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.outbox.states import NotificationState
from service.store import tallies
from service.store.models import Notification, TallyMark, WebhookEvent, utcnow
from tests.fakes.fal_keys import JwksServer
from tests.support.app import WEBHOOK, InProcessApp, running_app
from tests.support.db import attach_many, run
from tests.support.webhooks import legacy, new_request_id

_serial = itertools.count()
OLD = dt.timedelta(hours=1)


@pytest.fixture
def web(database_url: str, jwks: JwksServer) -> Iterator[InProcessApp]:
    with running_app(database_url, FAL_JWKS_URL=jwks.jwks_url) as app:
        yield app


def truth(url: str) -> dict[str, Any]:
    """The full GROUP BY the endpoints ran before the tallies."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        events = await session.execute(
            select(WebhookEvent.outcome, func.count()).group_by(WebhookEvent.outcome)
        )
        states = await session.execute(
            select(Notification.state, func.count()).group_by(Notification.state)
        )
        by_outcome = {str(k): int(n) for k, n in events}
        return {
            "events": {"total": sum(by_outcome.values()), **by_outcome},
            "notifications": {str(k): int(n) for k, n in states},
        }

    return run(url, work)


def shown(web: InProcessApp) -> dict[str, Any]:
    status = web.call("GET", "/api/v1/webhook/status")
    assert status.status == 200, status.body
    body = status.json()
    return {"events": body["events"], "notifications": body["notifications"]}


def mark(url: str, name: str = "webhook_events") -> int:
    async def work(session: AsyncSession) -> int:
        found = await session.execute(select(TallyMark.up_to_id).where(TallyMark.name == name))
        return int(found.scalar_one())

    return run(url, work)


def old_events(url: str, request_id: str, count: int, outcome: str = "unmatched") -> list[int]:
    """Events stored an hour ago (so the next read counts them below the mark), as FAL's."""
    at = utcnow() - OLD

    async def work(session: AsyncSession) -> list[int]:
        ids = []
        for _ in range(count):
            body = legacy(request_id, "in_progress", logs=[{"message": f"step {next(_serial)}"}])
            key = hashlib.sha256(request_id.encode() + b"\n" + body).hexdigest()
            row = await session.execute(
                insert(WebhookEvent)
                .values(
                    dedupe_key=key,
                    request_id=request_id,
                    status="IN_PROGRESS",
                    outcome=outcome,
                    signed=False,
                    query="",
                    headers={},
                    body=body,
                    source="webhook",
                    received_at=at,
                )
                .returning(WebhookEvent.id)
            )
            ids.append(int(row.scalar_one()))
        return ids

    return run(url, work)


def delete_events(url: str, ids: list[int]) -> None:
    async def work(session: AsyncSession) -> None:
        await session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(ids)))

    run(url, work)


def test_counts_are_exact_right_after_webhooks(web: InProcessApp) -> None:
    url = web.settings.database_url
    assert shown(web) == truth(url)
    for _ in range(3):
        assert web.post(WEBHOOK, legacy(new_request_id(), "completed")).status == 200
    assert shown(web) == truth(url)
    assert shown(web)["events"]["unmatched"] == 3


def test_old_rows_are_counted_below_the_mark_and_new_ones_above_it(web: InProcessApp) -> None:
    url = web.settings.database_url
    ids = old_events(url, new_request_id(), 12)
    web.post(WEBHOOK, legacy(new_request_id(), "completed"))
    assert shown(web) == truth(url)
    # The old rows are in the tally now; the webhook just received is still above the mark.
    assert mark(url) == max(ids)
    assert shown(web) == truth(url)


def test_an_unmatched_event_applied_moves_its_count(web: InProcessApp) -> None:
    url = web.settings.database_url
    below, above = new_request_id(), new_request_id()
    old_events(url, below, 2)
    shown(web)
    assert web.post(WEBHOOK, legacy(above, "in_progress")).json()["status"] == "unmatched"
    assert mark(url) > 0
    before = shown(web)
    assert before == truth(url)
    assert before["events"]["unmatched"] == 3
    attach_many(url, [(7101, "Below", below), (7102, "Above", above)])
    after = shown(web)
    assert after == truth(url)
    assert after["events"].get("unmatched", 0) == 0
    assert after["events"]["total"] == before["events"]["total"]


def test_deleted_rows_leave_the_counts(web: InProcessApp) -> None:
    url = web.settings.database_url
    old = old_events(url, new_request_id(), 6, outcome="ignored")
    shown(web)
    assert mark(url) == max(old)
    fresh = old_events(url, new_request_id(), 4)  # above the mark until the next read
    delete_events(url, [*old[:3], *fresh[:2]])
    counts = shown(web)
    assert counts == truth(url)
    assert counts["events"] == {"total": 5, "ignored": 3, "unmatched": 2}
    delete_events(url, [*old[3:], *fresh[2:]])
    assert shown(web) == truth(url)
    assert shown(web)["events"] == {"total": 0}


def test_notifications_by_state(web: InProcessApp) -> None:
    url = web.settings.database_url
    at = utcnow() - OLD

    async def fill(session: AsyncSession) -> None:
        for n, state in enumerate(["sent"] * 5 + ["pending", "failed", "undeliverable"]):
            session.add(
                Notification(
                    dedupe_key=f"n{n}", chat_id=1, kind="test", text="x", state=state,
                    created_at=at, sent_at=at if state == "sent" else None,
                )
            )  # fmt: skip

    run(url, fill)
    counts = shown(web)
    assert counts == truth(url)
    assert counts["notifications"] == {"sent": 5, "pending": 1, "failed": 1, "undeliverable": 1}
    assert mark(url, "notifications") > 0

    async def prune(session: AsyncSession) -> None:
        sent = select(Notification.id).where(Notification.state == "sent").limit(3)
        await session.execute(delete(Notification).where(Notification.id.in_(sent)))
        await session.execute(
            update(Notification)
            .where(Notification.state == NotificationState.FAILED.value)
            .values(state=NotificationState.SENT.value)
        )

    run(url, prune)
    counts = shown(web)
    assert counts == truth(url)
    assert counts["notifications"] == {"sent": 3, "pending": 1, "undeliverable": 1}


def test_counts_stay_exact_under_concurrent_webhooks_reads_and_changes(
    web: InProcessApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = web.settings.database_url
    # Small advances, so reads move the mark over rows being applied and deleted meanwhile.
    monkeypatch.setattr(tallies, "ADVANCE_LIMIT", 3)
    waiting = [new_request_id() for _ in range(6)]
    doomed = [old_events(url, rid, 4) for rid in waiting[:3]]
    for rid in waiting[3:]:
        old_events(url, rid, 4)

    def post(n: int) -> int:
        return web.post(WEBHOOK, legacy(new_request_id(), "completed")).status

    def read(_: int) -> int:
        return web.call("GET", "/metrics").status

    def attach(n: int) -> None:
        attach_many(url, [(7200 + n, f"Late {n}", waiting[3 + n])])

    with ThreadPoolExecutor(max_workers=8) as pool:
        posts = [pool.submit(post, n) for n in range(40)]
        reads = [pool.submit(read, n) for n in range(20)]
        changes = [pool.submit(attach, n) for n in range(3)]
        changes += [pool.submit(delete_events, url, ids) for ids in doomed]
        assert [p.result() for p in posts] == [200] * 40
        assert [r.result() for r in reads] == [200] * 20
        for change in changes:
            change.result()
    assert shown(web) == truth(url)
    assert mark(url) > 0
