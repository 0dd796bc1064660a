"""The reconciler's generations: submitted by the bot's own code to the local FAL queue, then
asked about at FAL on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot import generation
from service.bot.generation import Choice
from service.bot.reconciler import Policy, Report, reconcile_once
from service.bot.services import Services
from service.fal.flux_lora import Frame
from service.settings import Settings
from service.store import generations, migrate
from service.store.models import FalJob, Generation, Notification, utcnow
from tests.fakes.fal_queue import FalQueueServer
from tests.support.bot_generations import completed_avatar

KEY = "fal-key-id:fal-key-secret"
TELEGRAM_ID = 5151
POLICY = Policy(
    interval=1,
    expected=60,
    hard_limit=3600,
    stale_claim=120,
    data_retention=86400,
    generation_expected=60,
    generation_hard_limit=600,
)
T = TypeVar("T")


@pytest.fixture
def fal() -> Iterator[FalQueueServer]:
    with FalQueueServer(KEY) as server:
        yield server


class World:
    def __init__(self, database_url: str, fal: FalQueueServer) -> None:
        migrate.upgrade(database_url)
        self.url = database_url
        self.fal = fal
        self.settings = Settings(
            database_url=database_url,
            fal_key=KEY,
            fal_queue_url=fal.url,
            fal_webhook_url="http://127.0.0.1:9/unused",
        )

    def run(self, work: Callable[[Services], Awaitable[T]]) -> T:
        async def go() -> T:
            svc = Services.open(self.settings, fal_timeout=2.0)
            try:
                return await work(svc)
            finally:
                await svc.close()

        return asyncio.run(go())

    def query(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        return self.run(lambda svc: svc.transaction(work))

    def submitted(self, count: int, age_seconds: float) -> tuple[str, str]:
        """A generation made through the bot's own reserve and submit, `age_seconds` old."""
        avatar = completed_avatar(self.url, TELEGRAM_ID, "Anna")
        assert avatar.lora_url and avatar.trigger_word
        self.fal.add_lora(avatar.lora_url, avatar.trigger_word)
        choice = Choice(avatar.id, Frame.SQUARE, count, style="studio")

        async def work(svc: Services) -> str:
            reserved = await generation.reserve(svc, TELEGRAM_ID, choice, "ru")
            assert await generation.submit(svc, reserved) == "queued"
            return reserved.id

        generation_id = self.run(work)
        then = utcnow() - dt.timedelta(seconds=age_seconds)

        async def age(session: AsyncSession) -> str:
            await session.execute(
                update(FalJob)
                .where(FalJob.generation_id == generation_id)
                .values(submitted_at=then)
            )
            job = await session.execute(
                select(FalJob.request_id).where(FalJob.generation_id == generation_id)
            )
            return str(job.scalar_one())

        return generation_id, self.query(age)

    def reconcile(self) -> Report:
        return self.run(lambda svc: reconcile_once(svc, POLICY))

    def status(self, generation_id: str) -> tuple[str, str | None]:
        row = self.query(lambda s: s.get_one(Generation, generation_id))
        return row.status, row.error_message

    def notifications(self, generation_id: str) -> list[Notification]:
        async def work(session: AsyncSession) -> list[Notification]:
            rows = await session.execute(
                select(Notification).where(Notification.generation_id == generation_id)
            )
            return list(rows.scalars())

        return self.query(work)


@pytest.fixture
def world(database_url: str, fal: FalQueueServer) -> World:
    return World(database_url, fal)


def test_a_young_generation_is_left_alone(world: World) -> None:
    generation_id, request_id = world.submitted(2, age_seconds=10)
    world.fal.complete(request_id, deliver=False)
    assert world.reconcile().checked == 0
    assert world.status(generation_id)[0] == "queued"


def test_a_finished_generation_without_its_callback_is_applied_once(world: World) -> None:
    generation_id, request_id = world.submitted(3, age_seconds=POLICY.generation_expected + 5)
    world.fal.complete(request_id, deliver=False, nsfw=[False, True, False])
    report = world.reconcile()
    assert report.checked == 1 and report.applied == 1
    assert world.status(generation_id)[0] == "completed"
    (album,) = world.notifications(generation_id)
    assert album.message_type == "album" and len(album.media or []) == 2
    # Done: the next pass asks nothing.
    assert world.reconcile().checked == 0
    assert len(world.notifications(generation_id)) == 1


def test_one_past_the_hard_limit_is_cancelled_failed_and_not_counted(world: World) -> None:
    generation_id, request_id = world.submitted(4, age_seconds=POLICY.generation_hard_limit + 5)
    report = world.reconcile()
    assert report.checked == 1 and report.timed_out == 1
    status, error = world.status(generation_id)
    assert status == "failed" and "did not finish within 10 minutes" in (error or "")
    assert world.fal.request(request_id).cancelled
    (failure,) = world.notifications(generation_id)
    assert failure.message_type == "text" and "gen:again:" in str(failure.reply_markup)
    user_id = world.query(lambda s: s.get_one(Generation, generation_id)).user_id
    left = world.query(lambda s: generations.photos_left(s, user_id, 20, utcnow()))
    assert left == 20
