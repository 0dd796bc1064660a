"""Pruning old raw events and finished notifications, in small batches of short transactions.

`python -m service maintenance` runs `prune` (a systemd timer runs that daily). Each batch
picks at most `batch` rows by primary key and deletes them in a transaction of its own, so a
webhook never waits behind more than one batch; between batches the pruner pauses as long as
the batch took, so it holds the database (SQLite's single write lock above all) at most half
of the time.

What is never pruned:
- an event of a training whose avatar is not in a final state (found by the event's avatar or
  by its request id in the job registry): the reconciler and a replay may still need it;
- an event younger than the retention, unmatched ones included (`avatars attach` applies them);
- a notification that is not final (`pending`, `sending`), or that an operator must still
  decide about (`uncertain`: Telegram may have delivered it; `failed`: `notifications retry`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, and_, delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.outbox.states import NotificationState
from service.store.engine import run_transaction
from service.store.models import utcnow
from service.store.tables import avatars, events, jobs, notifications

# The avatar statuses after which nothing reads a training's events again. Spelled out here
# (the store does not import jobs/): completed, failed, cancelled.
FINAL_AVATAR_STATUSES = ("completed", "failed", "cancelled")
# Delivered, or never deliverable: nobody acts on these any more.
PRUNABLE_NOTIFICATIONS = (NotificationState.SENT.value, NotificationState.UNDELIVERABLE.value)
DEFAULT_BATCH = 1000


@dataclass
class Pruned:
    """What one pass removed, and how long its longest transaction held the database."""

    events: int = 0
    notifications: int = 0
    batches: int = 0
    longest_batch_seconds: float = 0.0
    seconds: float = 0.0
    batch_seconds: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "notifications": self.notifications,
            "batches": self.batches,
            "longest_batch_ms": round(self.longest_batch_seconds * 1000, 1),
            "seconds": round(self.seconds, 2),
        }


def _open(avatar_id: Any) -> Any:
    return exists().where(avatars.c.id == avatar_id, avatars.c.status.not_in(FINAL_AVATAR_STATUSES))


def _prunable_events(cutoff: dt.datetime) -> Any:
    """Events older than `cutoff` that no open training still needs."""
    of_open_job = exists().where(
        jobs.c.request_id == events.c.request_id,
        _open(jobs.c.avatar_id),
    )
    return and_(events.c.received_at < cutoff, ~_open(events.c.avatar_id), ~of_open_job)


def _prunable_notifications(cutoff: dt.datetime) -> Any:
    return and_(
        notifications.c.state.in_(PRUNABLE_NOTIFICATIONS), notifications.c.updated_at < cutoff
    )


async def _batches(
    sessions: async_sessionmaker[AsyncSession],
    table: Table,
    where: Any,
    upper: Any,
    batch: int,
    report: Pruned,
) -> int:
    """Delete the rows matching `where` with ids up to the one `upper` finds, `batch` at a time."""
    last_id = await run_transaction(sessions, lambda s: _scalar(s, upper))
    if last_id is None:
        return 0
    pk = table.c.id
    after, removed = 0, 0
    while True:

        async def one(session: AsyncSession, after: int = after) -> tuple[int, int | None]:
            chosen = select(pk).where(pk > after, pk <= last_id, where).order_by(pk).limit(batch)
            ids = list((await session.execute(chosen)).scalars())
            if not ids:
                return 0, None
            await session.execute(delete(table).where(pk.in_(ids)))
            return len(ids), ids[-1]

        started = time.perf_counter()
        count, reached = await run_transaction(sessions, one)
        took = time.perf_counter() - started
        if reached is None:
            return removed
        removed += count
        report.batches += 1
        report.batch_seconds.append(took)
        report.longest_batch_seconds = max(report.longest_batch_seconds, took)
        after = reached
        # Hold the database at most half of the time: writers queued behind a batch go first.
        await asyncio.sleep(max(took, 0.005))


async def _scalar(session: AsyncSession, query: Any) -> Any:
    return (await session.execute(query)).scalar()


async def prune(
    sessions: async_sessionmaker[AsyncSession],
    events_days: int,
    notifications_days: int,
    *,
    batch: int = DEFAULT_BATCH,
    now: Callable[[], dt.datetime] = utcnow,
) -> Pruned:
    """Remove events older than `events_days` and notifications older than
    `notifications_days` days, except what is listed in this module's docstring."""
    started = time.perf_counter()
    report = Pruned()
    moment = now()
    event_cutoff = moment - dt.timedelta(days=events_days)
    # The newest candidate, found through the index on received_at: the batches walk the
    # primary key up to it and never scan the young part of the table.
    newest_event = select(func.max(events.c.id)).where(events.c.received_at < event_cutoff)
    report.events = await _batches(
        sessions, events, _prunable_events(event_cutoff), newest_event, batch, report
    )
    note_cutoff = moment - dt.timedelta(days=notifications_days)
    newest_note = select(func.max(notifications.c.id)).where(_prunable_notifications(note_cutoff))
    report.notifications = await _batches(
        sessions, notifications, _prunable_notifications(note_cutoff), newest_note, batch, report
    )
    report.seconds = time.perf_counter() - started
    return report
