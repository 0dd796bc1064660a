"""A person's generation quota, counted in the database: photos in the last day, jobs at once."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import Generation

# The window of GENERATIONS_PER_DAY: rolling, not a calendar day (nobody's midnight is ours).
WINDOW = dt.timedelta(hours=24)
# GenerationStatus values (service/jobs/states.py; the store does not import jobs/). A failed
# generation made nothing, so it does not count; one not yet finished holds its photos.
FAILED = "failed"
ACTIVE = ("submitting", "queued", "running")


async def photos_left(session: AsyncSession, user_id: int, per_day: int, now: dt.datetime) -> int:
    """How many photos the person may still ask for: `per_day` less those of the last 24 h."""
    used = (
        await session.execute(
            select(func.coalesce(func.sum(Generation.num_images), 0)).where(
                Generation.user_id == user_id,
                Generation.created_at > now - WINDOW,
                Generation.status != FAILED,
            )
        )
    ).scalar_one()
    return max(0, per_day - int(used))


async def in_flight(session: AsyncSession, user_id: int) -> int:
    """The person's generations submitted (or being submitted) and not yet finished."""
    return int(
        (
            await session.execute(
                select(func.count())
                .select_from(Generation)
                .where(Generation.user_id == user_id, Generation.status.in_(ACTIVE))
            )
        ).scalar_one()
    )
