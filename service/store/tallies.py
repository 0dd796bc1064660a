"""Row counts that cost the same on a thousand rows or a million: a tally up to a mark.

For a tallied table, `tallies` holds the counts (by one column's value) of its rows with
`id <= tally_marks.up_to_id`; a read adds the rows above the mark, counted through the primary
key, in the same statement (one snapshot). A read first moves the mark up to rows older than
HOLD_BACK, so the part counted on every read is the last few minutes' rows, whatever the
table's size. The hot path only inserts and never touches a tally or a mark.

Rows below the mark that change later are kept right by triggers (migration 0005): an
event's `outcome` updated (`register` applying an unmatched event, a replay) or any row
deleted (retention) moves its count in the same transaction. They take the mark's row lock
(shared) so a concurrent move of the mark sees either the old row or the adjusted tally.

Why a hold-back: an id is taken when a row is inserted and the row is seen at commit, so a
low id can appear after higher ones. Assuming every transaction that inserts into a tallied
table ends within HOLD_BACK / 2 of its row's timestamp (the webhook's work is bounded by
gunicorn's 30 s timeout), every id below a row older than HOLD_BACK is committed or gone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Table, func, literal, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.dialect import dialect_of
from service.store.models import Notification, Tally, TallyMark, WebhookEvent

HOLD_BACK = dt.timedelta(minutes=5)
# A mark moves at most this many ids per read, so a read after a long pause stays short
# (the rest is counted above the mark until later reads catch up).
ADVANCE_LIMIT = 50_000
TOTAL = ""
_MARK = "~mark"  # a value no counted column holds


@dataclass(frozen=True)
class Tallied:
    """A table whose rows are tallied: its id, the time its rows were written, what is counted."""

    name: str
    id: Column[Any]
    written_at: Column[Any]
    by: Column[Any] | None  # None: only the total


def _table(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


_events, _notifications = _table(WebhookEvent), _table(Notification)
EVENTS = Tallied("webhook_events", _events.c.id, _events.c.received_at, _events.c.outcome)
# The outbox's states change all the time; only its total is tallied (the unsent states are
# few and counted through the state index, `sent` is the rest).
NOTIFICATIONS = Tallied("notifications", _notifications.c.id, _notifications.c.created_at, None)
TALLIED = (EVENTS, NOTIFICATIONS)

_tallies, _marks = _table(Tally), _table(TallyMark)


def _group(tallied: Tallied) -> Any:
    return tallied.by if tallied.by is not None else literal(TOTAL)


async def advance(session: AsyncSession, tallied: Tallied, now: dt.datetime) -> int:
    """Count the rows older than HOLD_BACK into the tally and move the mark past them.

    Returns how many ids the mark moved. Takes the mark's row lock before counting, when there
    is something to count (concurrent readers wait for each other there, never for webhooks).
    """
    # The newest row written before the cut-off, found from the top of the primary key: only
    # the last HOLD_BACK of rows is walked.
    newest_old = await session.execute(
        select(tallied.id)
        .where(tallied.written_at < now - HOLD_BACK)
        .order_by(tallied.id.desc())
        .limit(1)
    )
    newest = newest_old.scalar() or 0
    if newest <= await _mark(session, tallied):
        return 0  # nothing to move: no write, no lock
    locked = await session.execute(
        update(_marks)
        .where(_marks.c.name == tallied.name)
        .values(up_to_id=_marks.c.up_to_id)
        .returning(_marks.c.up_to_id)
    )
    mark = locked.scalar()
    if mark is None:
        return 0
    # Read again under the lock: another reader may have moved it meanwhile.
    target = min(newest, mark + ADVANCE_LIMIT)
    if target <= mark:
        return 0
    group = _group(tallied)
    counts = await session.execute(
        select(group, func.count()).where(tallied.id > mark, tallied.id <= target).group_by(group)
    )
    insert = dialect_of(session).insert(_tallies)
    for value, count in counts.all():
        await session.execute(
            insert.values(
                name=tallied.name, value=str(value), counted=int(count)
            ).on_conflict_do_update(
                index_elements=["name", "value"],
                set_={"counted": _tallies.c.counted + int(count)},
            )
        )
    await session.execute(
        update(_marks).where(_marks.c.name == tallied.name).values(up_to_id=target)
    )
    return int(target - mark)


def _parts(tallied: Tallied, mark: int) -> list[Any]:
    """The tally, the rows above `mark`, and the mark itself, as (value, count) rows.

    The mark is given as a number, not as a subquery, so that PostgreSQL plans the count for
    the few ids above it (a range of the primary key) instead of a third of the table; the
    mark read back in the same statement says whether it still held.
    """
    group = _group(tallied)
    return [
        select(_tallies.c.value.label("value"), _tallies.c.counted.label("n")).where(
            _tallies.c.name == tallied.name
        ),
        select(group.label("value"), func.count().label("n"))
        .where(tallied.id > mark)
        .group_by(group),
        select(literal(_MARK).label("value"), _marks.c.up_to_id.label("n")).where(
            _marks.c.name == tallied.name
        ),
    ]


async def _mark(session: AsyncSession, tallied: Tallied) -> int:
    found = await session.execute(select(_marks.c.up_to_id).where(_marks.c.name == tallied.name))
    return int(found.scalar() or 0)


async def _summed(
    session: AsyncSession, tallied: Tallied, extra: Sequence[Any] = ()
) -> dict[str, int]:
    """Summed by value, in one statement (one snapshot, even under READ COMMITTED)."""
    mark = await _mark(session, tallied)
    while True:
        both = union_all(*_parts(tallied, mark), *extra).subquery()
        rows = await session.execute(
            select(both.c.value, func.sum(both.c.n)).group_by(both.c.value)
        )
        found = {str(value): int(n) for value, n in rows}
        seen = found.pop(_MARK, 0)
        if seen == mark:
            return {value: n for value, n in found.items() if n != 0}
        # Another reader moved the mark between the two statements: count again from it.
        mark = seen


async def event_counts(session: AsyncSession) -> dict[str, int]:
    """Events by outcome, exact as of this statement."""
    return await _summed(session, EVENTS)


async def notification_counts(
    session: AsyncSession, states: Sequence[str], rest: str
) -> dict[str, int]:
    """Notifications by state, exact: `states` counted through the state index, `rest` (the
    state almost every row ends in) the tallied total minus them, all in one statement."""
    column = _notifications.c.state
    counted = select(column.label("value"), func.count().label("n")).where(column.in_(states))
    found = await _summed(session, NOTIFICATIONS, [counted.group_by(column)])
    total = found.pop(TOTAL, 0)
    found[rest] = total - sum(found.values())
    return {state: n for state, n in found.items() if n}
