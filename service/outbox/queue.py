"""The outbox's states and moves: claim under a lease, then sent, retried or given up.

pending --claim--> sending --sent--> sent
   ^                 |  \\--(403, 400)--> undeliverable
   |                 |   \\--(read timeout)--> uncertain   (never resent on its own)
   +---(429, 5xx)----+    \\--(too many attempts or too old)--> failed
sending with an expired lease (its process died) is claimed again like pending.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.outbox.telegram import SendResult, Verdict
from service.store.models import Notification, utcnow

MAX_ATTEMPTS = 20
MAX_AGE = dt.timedelta(hours=2)
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
FINAL_STATES = ("sent", "undeliverable", "uncertain", "failed")


@dataclass(frozen=True)
class Claimed:
    id: int
    chat_id: int
    text: str
    reply_markup: dict[str, Any] | None
    attempts: int
    created_at: dt.datetime
    # The previous claim's lease ran out: its process died, maybe after Telegram accepted.
    reclaimed: bool


async def claim(
    session: AsyncSession, worker: str, limit: int, lease: dt.timedelta
) -> list[Claimed]:
    """Take up to `limit` due notifications under a lease; committed before any send."""
    now = utcnow()
    postgres = session.get_bind().dialect.name == "postgresql"

    async def take(query: Select[int], room: int) -> list[int]:
        query = query.limit(room)
        if postgres:
            # Rows another dispatcher is claiming right now are skipped, not waited for.
            query = query.with_for_update(skip_locked=True)
        return list((await session.execute(query)).scalars())

    # Two index-ordered reads instead of one with an OR, which made PostgreSQL read and sort
    # the whole backlog for every claim. Rows whose sender died come first (they are few: at
    # most what was in flight).
    ids = await take(
        select(Notification.id).where(
            Notification.state == "sending", Notification.lease_until < now
        ),
        limit,
    )
    if len(ids) < limit:
        ids += await take(
            select(Notification.id)
            .where(Notification.state == "pending", Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at),
            limit - len(ids),
        )
    if not ids:
        return []
    rows = (await session.execute(select(Notification).where(Notification.id.in_(ids)))).scalars()
    claimed = [
        Claimed(
            id=n.id,
            chat_id=n.chat_id,
            text=n.text,
            reply_markup=n.reply_markup,
            attempts=n.attempts + 1,
            created_at=n.created_at,
            reclaimed=n.state == "sending",
        )
        for n in rows
    ]
    await session.execute(
        update(Notification)
        .where(Notification.id.in_(ids))
        .values(
            state="sending",
            claimed_by=worker,
            lease_until=now + lease,
            attempts=Notification.attempts + 1,
            updated_at=now,
        )
    )
    return sorted(claimed, key=lambda c: c.id)


def backoff(attempts: int) -> float:
    """Exponential with full jitter around it, so retries of many rows spread out."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** max(0, attempts - 1))
    return ceiling * random.uniform(0.5, 1.0)


async def record(session: AsyncSession, worker: str, claimed: Claimed, result: SendResult) -> str:
    """Store what the send did; returns the new state. A lost lease makes this a no-op."""
    now = utcnow()
    values: dict[str, Any] = {"updated_at": now, "lease_until": None, "last_error": result.error}
    if result.verdict is Verdict.SENT:
        values.update(state="sent", sent_at=now, telegram_message_id=result.message_id)
    elif result.verdict in (Verdict.UNDELIVERABLE, Verdict.UNCERTAIN):
        values.update(state=result.verdict.value)
    elif claimed.attempts >= MAX_ATTEMPTS or now - claimed.created_at > MAX_AGE:
        values.update(state="failed")
    else:
        delay = (
            result.retry_after
            if result.verdict is Verdict.RATE_LIMITED
            else backoff(claimed.attempts)
        )
        values.update(state="pending", next_attempt_at=now + dt.timedelta(seconds=delay))
        if result.migrate_to_chat_id is not None:
            values.update(chat_id=result.migrate_to_chat_id)
    await session.execute(
        update(Notification)
        .where(
            Notification.id == claimed.id,
            Notification.claimed_by == worker,
            Notification.state == "sending",
        )
        .values(**values)
    )
    return str(values["state"])


async def expedite(session: AsyncSession) -> int:
    """Make every notification that is backing off due now; returns how many.

    Called when Telegram answers again after failures: without it, the last of a backlog would
    wait out its back-off (up to BACKOFF_CAP_SECONDS) after Telegram is already back. A row
    held back by a 429 is also made due; the pacer still holds every send until retry_after.
    """
    now = utcnow()
    result = await session.execute(
        update(Notification)
        .where(Notification.state == "pending", Notification.next_attempt_at > now)
        .values(next_attempt_at=now, updated_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def next_due_in(session: AsyncSession) -> float | None:
    """Seconds until the earliest pending notification is due (None when nothing waits)."""
    earliest = (
        await session.execute(
            select(func.min(Notification.next_attempt_at)).where(Notification.state == "pending")
        )
    ).scalar()
    if earliest is None:
        return None
    return max(0.0, float((earliest - utcnow()).total_seconds()))
