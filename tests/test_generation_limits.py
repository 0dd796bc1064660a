"""The generation limits hold in the database: taps at the same moment cannot both pass."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.generation import Choice, OverQuota, Reserved, TooManyRunning, reserve
from service.bot.services import Services
from service.fal.flux_lora import Frame
from service.settings import Settings
from service.store import generations
from service.store.models import Generation, utcnow
from tests.support import schema
from tests.support.bot_generations import completed_avatar, earlier_generation
from tests.support.db import run

TELEGRAM_ID = 4242


@pytest.fixture
def db(database_url: str) -> str:
    schema.upgrade(database_url)
    return database_url


async def _taps(database_url: str, choices: list[Choice], **limits: int) -> list[object]:
    """Each choice reserved at once, each through its own bot services (own connections)."""
    settings = Settings(
        database_url=database_url,
        generations_per_day=limits.get("per_day", 20),
        generations_in_flight=limits.get("in_flight", 2),
    )
    opened = [Services.open(settings) for _ in choices]
    try:
        return await asyncio.gather(
            *(reserve(svc, TELEGRAM_ID, c, "ru") for svc, c in zip(opened, choices, strict=True)),
            return_exceptions=True,
        )
    finally:
        for svc in opened:
            await svc.close()


def test_two_taps_for_the_last_photos_of_the_day_cannot_both_pass(db: str) -> None:
    avatar = completed_avatar(db, TELEGRAM_ID, "Anna")
    earlier_generation(db, avatar, 4, "completed", hours_ago=3)
    tap = Choice(avatar.id, Frame.SQUARE, 4, style="studio")
    results = asyncio.run(_taps(db, [tap] * 4, per_day=8, in_flight=10))
    passed = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, OverQuota)]
    assert len(passed) == 1 and len(refused) == 3, results
    assert all(r.left == 0 for r in refused)

    async def left(session: AsyncSession) -> int:
        return await generations.photos_left(session, avatar.user_id, 8, utcnow())

    assert run(db, left) == 0


def test_two_taps_at_the_in_flight_limit_cannot_both_pass(db: str) -> None:
    avatar = completed_avatar(db, TELEGRAM_ID, "Anna")
    earlier_generation(db, avatar, 1, "queued", hours_ago=0.1)
    tap = Choice(avatar.id, Frame.PORTRAIT, 1, own="in a park")
    results = asyncio.run(_taps(db, [tap] * 3, per_day=100, in_flight=2))
    assert sum(not isinstance(r, BaseException) for r in results) == 1, results
    assert all(isinstance(r, TooManyRunning) for r in results if isinstance(r, BaseException))

    async def statuses(session: AsyncSession) -> list[str]:
        rows = await session.execute(select(Generation.status))
        return sorted(rows.scalars())

    assert run(db, statuses) == ["queued", "queued"]


def test_failed_and_day_old_generations_do_not_count_and_finished_ones_leave_the_flight(
    db: str,
) -> None:
    avatar = completed_avatar(db, TELEGRAM_ID, "Anna")
    earlier_generation(db, avatar, 4, "failed", hours_ago=1)
    earlier_generation(db, avatar, 4, "completed", hours_ago=24.1)
    running = earlier_generation(db, avatar, 2, "running", hours_ago=0.5)
    tap = Choice(avatar.id, Frame.LANDSCAPE, 4, style="city")
    (first,) = asyncio.run(_taps(db, [tap], per_day=6, in_flight=1))
    assert isinstance(first, TooManyRunning)

    async def finish(session: AsyncSession) -> None:
        await session.execute(
            update(Generation).where(Generation.id == running).values(status="completed")
        )

    run(db, finish)
    (second,) = asyncio.run(_taps(db, [tap], per_day=6, in_flight=1))
    assert isinstance(second, Reserved), second
    assert second.left == 0
    (third,) = asyncio.run(_taps(db, [tap], per_day=100, in_flight=5))
    assert not isinstance(third, BaseException)
    # The window is rolling: what made 6 photos half an hour ago frees them in 23.5 hours.
    two = Choice(avatar.id, Frame.LANDSCAPE, 2, style="city")
    (fourth,) = asyncio.run(_taps(db, [two], per_day=6, in_flight=5))
    assert isinstance(fourth, OverQuota) and fourth.free_at is not None
    expected = utcnow() + dt.timedelta(hours=23.5)
    assert abs((fourth.free_at - expected).total_seconds()) < 60
