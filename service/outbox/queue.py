"""The outbox's queue: enqueue, claim under a lease, record what the send did (see states.py)."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, ColumnElement, Select, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.outbox.messages import OUTBOX_CHANNEL, Message, MessageType, row_values
from service.outbox.sender import SendResult
from service.outbox.states import NotificationState, SendOutcome, after_send
from service.store.dialect import dialect_of
from service.store.direct import DirectConnection
from service.store.models import Notification, utcnow
from service.store.tables import notifications as _notifications

MAX_ATTEMPTS = 20
MAX_AGE = dt.timedelta(hours=2)
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0


@dataclass(frozen=True)
class Claimed:
    id: int
    message: Message
    attempts: int
    created_at: dt.datetime
    # The previous claim's lease ran out: its process died, maybe after Telegram accepted.
    reclaimed: bool

    @property
    def chat_id(self) -> int:
        return self.message.chat_id


async def enqueue(
    session: AsyncSession, dedupe_key: str, kind: str, message: Message, *, avatar_id: str | None
) -> bool:
    """Add `message` to the outbox once per `dedupe_key`; False when that key is already there.

    Commits with the caller's transaction; where the database can, the commit wakes the
    dispatcher. A dispatcher in this very process is woken by the caller (Runtime).
    """
    dialect = dialect_of(session)
    values = row_values(dedupe_key, kind, message, avatar_id=avatar_id, now=utcnow())
    statement = (
        dialect.insert(_notifications)
        .values(values)
        .on_conflict_do_nothing(index_elements=[_notifications.c.dedupe_key])
        .returning(_notifications.c.id, *dialect.wake(OUTBOX_CHANNEL))
    )
    return (await session.execute(statement)).first() is not None


async def claim(
    session: AsyncSession, worker: str, limit: int, lease: dt.timedelta
) -> list[Claimed]:
    """Take up to `limit` due notifications under a lease; committed before any send."""
    now = utcnow()
    dialect = dialect_of(session)

    async def take(query: Select[int], room: int) -> list[int]:
        return list((await session.execute(dialect.skip_locked(query.limit(room)))).scalars())

    # Two index-ordered reads instead of one with an OR, which made PostgreSQL read and sort
    # the whole backlog for every claim. Rows whose sender died come first (they are few: at
    # most what was in flight).
    ids = await take(
        select(Notification.id).where(
            Notification.state == NotificationState.SENDING, Notification.lease_until < now
        ),
        limit,
    )
    if len(ids) < limit:
        ids += await take(
            select(Notification.id)
            .where(
                Notification.state == NotificationState.PENDING,
                Notification.next_attempt_at <= now,
            )
            .order_by(Notification.next_attempt_at),
            limit - len(ids),
        )
    if not ids:
        return []
    rows = (await session.execute(select(Notification).where(Notification.id.in_(ids)))).scalars()
    claimed = [
        Claimed(
            id=n.id,
            message=_message(n),
            attempts=n.attempts + 1,
            created_at=n.created_at,
            reclaimed=n.state == NotificationState.SENDING,
        )
        for n in rows
    ]
    n = _notifications.c
    await session.execute(
        update(_notifications)
        .where(n.id.in_(ids))
        .values(
            state=NotificationState.SENDING.value,
            claimed_by=worker,
            lease_until=now + lease,
            attempts=n.attempts + 1,
            updated_at=now,
        )
    )
    return sorted(claimed, key=lambda c: c.id)


def _message(row: Notification) -> Message:
    return Message(
        chat_id=row.chat_id,
        text=row.text,
        reply_markup=row.reply_markup,
        message_type=MessageType(row.message_type),
        media=tuple(row.media or ()),
    )


def backoff(attempts: int) -> float:
    """Exponential with full jitter around it, so retries of many rows spread out."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** max(0, attempts - 1))
    return ceiling * random.uniform(0.5, 1.0)


async def record(
    target: AsyncSession | DirectConnection, worker: str, claimed: Claimed, result: SendResult
) -> NotificationState:
    """Store what the send did; returns the new state. A lost lease makes this a no-op.

    On the engine's session, or on a connection of the hot path's pool (the drain loop's
    way: one prepared statement, without the session's transaction around it)."""
    now = utcnow()
    gave_up = claimed.attempts >= MAX_ATTEMPTS or now - claimed.created_at > MAX_AGE
    state = after_send(result.outcome, gave_up=gave_up)
    params: dict[str, Any] = {
        "row_id": claimed.id,
        "worker": worker,
        "new_state": state.value,
        "now": now,
        "error": result.error,
        "message_id": result.message_id,
        "file_ids": list(result.media) if result.media is not None else None,
        "sent": now if state is NotificationState.SENT else None,
        "next_attempt": None,
        "new_chat_id": None,
    }
    if state is NotificationState.PENDING:
        delay = (
            result.retry_after
            if result.outcome is SendOutcome.RATE_LIMITED
            else backoff(claimed.attempts)
        )
        params.update(next_attempt=now + dt.timedelta(seconds=delay))
        params.update(new_chat_id=result.migrate_to_chat_id)
    if isinstance(target, DirectConnection):
        await target.rows(_RECORD, params)
    else:
        await target.execute(_RECORD, params)
    return state


def _kept_unless(name: str, column: Any) -> Any:
    """The parameter's value, or the column's own when the send gave none."""
    return func.coalesce(bindparam(name, type_=column.type), column)


def _held(row_id: Any, worker: Any) -> tuple[ColumnElement[bool], ...]:
    """The row, only while this worker's claim on it holds: a lost lease makes a write a no-op."""
    n = _notifications.c
    return (n.id == row_id, n.claimed_by == worker, n.state == NotificationState.SENDING.value)


# One statement for every outcome, so that it is compiled and prepared once: what an outcome
# does not set (a message id, file_ids, the next attempt, a migrated chat) keeps its value.
_n = _notifications.c
_RECORD = (
    update(_notifications)
    .where(*_held(bindparam("row_id"), bindparam("worker")))
    .values(
        state=bindparam("new_state", type_=_n.state.type),
        updated_at=bindparam("now", type_=_n.updated_at.type),
        lease_until=None,
        last_error=bindparam("error", type_=_n.last_error.type),
        telegram_message_id=_kept_unless("message_id", _n.telegram_message_id),
        # SQL NULL for "none given" (the column type's JSON would send the JSON null).
        media=func.coalesce(bindparam("file_ids", type_=JSON(none_as_null=True)), _n.media),
        sent_at=_kept_unless("sent", _n.sent_at),
        next_attempt_at=_kept_unless("next_attempt", _n.next_attempt_at),
        chat_id=_kept_unless("new_chat_id", _n.chat_id),
    )
)


async def checkpoint(
    session: AsyncSession, worker: str, claimed: Claimed, result: SendResult, lease: dt.timedelta
) -> None:
    """Store what went out before the send is over (an album, before its follow-up); the row
    stays claimed, its lease renewed for the rest. A later claim sends only what is left."""
    now = utcnow()
    values = {"updated_at": now, "lease_until": now + lease, **_sent_values(result)}
    await session.execute(_claimed_row(worker, claimed).values(**values))


def _sent_values(result: SendResult) -> dict[str, Any]:
    """Telegram's ids from a send: the first message's id, the photos' file_ids in `media`."""
    values: dict[str, Any] = {}
    if result.message_id is not None:
        values["telegram_message_id"] = result.message_id
    if result.media is not None:
        values["media"] = list(result.media)
    return values


def _claimed_row(worker: str, claimed: Claimed) -> Any:
    # The table's UPDATE, not the entity's: the ORM's bulk path (bringing loaded rows up to
    # date) cost the drain loop more CPU than the send itself.
    return update(_notifications).where(*_held(claimed.id, worker))


async def expedite(session: AsyncSession) -> int:
    """Make every notification that is backing off due now; returns how many.

    Called when Telegram answers again after failures: without it, the last of a backlog would
    wait out its back-off (up to BACKOFF_CAP_SECONDS) after Telegram is already back. A row
    held back by a 429 is also made due; the pacer still holds every send until retry_after.
    """
    now = utcnow()
    result = await session.execute(
        update(Notification)
        .where(Notification.state == NotificationState.PENDING, Notification.next_attempt_at > now)
        .values(next_attempt_at=now, updated_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def next_due_in(session: AsyncSession) -> float | None:
    """Seconds until the earliest pending notification is due (None when nothing waits)."""
    earliest = (
        await session.execute(
            select(func.min(Notification.next_attempt_at)).where(
                Notification.state == NotificationState.PENDING
            )
        )
    ).scalar()
    if earliest is None:
        return None
    return max(0.0, float((earliest - utcnow()).total_seconds()))
