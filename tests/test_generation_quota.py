"""The daily photo quota and the jobs in flight, counted in the database (SQLite, PostgreSQL)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession

from service.jobs.states import GenerationStatus
from service.store import generations
from service.store.models import utcnow
from tests.support.db import run
from tests.support.generations import submitted
from tests.test_ingest import migrated


def counts(url: str, user_id: int, per_day: int = 20) -> tuple[int, int]:
    async def work(session: AsyncSession) -> tuple[int, int]:
        now = utcnow()
        left = await generations.photos_left(session, user_id, per_day, now)
        return left, await generations.in_flight(session, user_id)

    return run(url, work)


def test_the_last_24_hours_count_and_failed_ones_do_not(database_url: str) -> None:
    url = migrated(database_url)
    now = utcnow()
    first = submitted(url, 4, telegram_id=1, status=GenerationStatus.COMPLETED)
    user = first.user_id
    assert counts(url, user) == (16, 0)
    submitted(url, 3, telegram_id=1, status=GenerationStatus.FAILED)
    assert counts(url, user) == (16, 0)
    # Yesterday's photos, a second past the window, no longer count.
    submitted(url, 4, telegram_id=1, created_at=now - dt.timedelta(hours=24, seconds=1),
              status=GenerationStatus.COMPLETED)  # fmt: skip
    submitted(url, 2, telegram_id=1, created_at=now - dt.timedelta(hours=23))
    assert counts(url, user) == (14, 1)
    submitted(url, 1, telegram_id=1, registered=False)  # still being submitted
    assert counts(url, user) == (13, 2)
    # Another person's photos are theirs; the quota never goes below nothing.
    other = submitted(url, 4, telegram_id=2)
    assert counts(url, other.user_id, per_day=3) == (0, 1)
    assert counts(url, user) == (13, 2)


def test_the_stores_words_are_the_statuses() -> None:
    assert GenerationStatus.FAILED.value == generations.FAILED
    unfinished = {s.value for s in GenerationStatus if not s.is_terminal}
    assert set(generations.IN_FLIGHT) == unfinished
