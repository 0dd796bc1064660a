"""Generations counted in the database: a person's photos of the last 24 hours, jobs at FAL."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.tables import generations

# The quota is rolling: the photos asked in the 24 hours before now.
WINDOW = dt.timedelta(hours=24)
# GenerationStatus's words (service/jobs/states.py, which the store may not import; a test holds
# them equal): a failed generation never counts, and these three are still at FAL.
FAILED = "failed"
IN_FLIGHT = ("queued", "running")


def photos_used_since(user_id: ColumnElement[Any] | int, since: Any) -> ScalarSelect[Any]:
    """The photos the person asked since `since` (a value or a bound parameter), failed ones
    left out: one expression for the quota check and for the outcome's "photos left"."""
    # An alias of its own, so that inside a query of `generations` it is not correlated to it.
    counted = generations.alias("counted")
    return (
        select(func.coalesce(func.sum(counted.c.num_images), 0))
        .where(
            counted.c.user_id == user_id,
            counted.c.status != FAILED,
            counted.c.created_at > since,
        )
        .scalar_subquery()
    )


async def photos_left(session: AsyncSession, user_id: int, per_day: int, now: dt.datetime) -> int:
    """How many photos the person may still ask for: `per_day` less those of the last 24 h."""
    used = (await session.execute(select(photos_used_since(user_id, now - WINDOW)))).scalar_one()
    return max(0, per_day - int(used))


async def in_flight(session: AsyncSession, user_id: int) -> int:
    """The person's generations not yet finished (being submitted, queued or running at FAL)."""
    count = await session.execute(
        select(func.count()).where(
            generations.c.user_id == user_id, generations.c.status.in_(IN_FLIGHT)
        )
    )
    return int(count.scalar_one())
