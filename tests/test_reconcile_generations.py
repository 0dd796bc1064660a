"""The reconciler's pass over generations, against the local FAL queue (flux-lora) and a real
database (SQLite and PostgreSQL): late callbacks fetched, stalled ones failed, once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.reconcile_generations import GenerationPolicy
from service.bot.reconciler import Policy, Report, reconcile_once
from service.fal.queue import Submission
from service.jobs.ingest import Outcome
from service.jobs.states import GenerationStatus
from service.outbox.messages import MessageType
from service.store import generations as quota
from service.store.models import FalJob, Generation, utcnow
from tests.fakes.fal_generation import FLUX_LORA
from tests.fakes.fal_queue import FalQueueServer
from tests.support import schema
from tests.support.db import run
from tests.support.files import FileServer
from tests.support.generations import (
    LORA,
    TRIGGER,
    Submitted,
    events_of,
    flux_arguments,
    generation_row,
    outbox_of,
    result_pending,
    submitted,
)
from tests.test_ingest import deliver
from tests.test_reconciler import KEY, World

POLICY = Policy(
    interval=1,
    expected=60,
    hard_limit=3600,
    stale_claim=120,
    data_retention=86400,
    generations=GenerationPolicy(expected=120, hard_limit=1800, stale_submission=300),
)


@pytest.fixture
def fal() -> Iterator[FalQueueServer]:
    with FalQueueServer(KEY) as server:
        server.add_lora(LORA, TRIGGER)
        yield server


class Generations(World):
    def __init__(self, database_url: str, fal: FalQueueServer) -> None:
        # Generations download nothing: the file server is never started.
        super().__init__(database_url, fal, FileServer())
        self.url = database_url
        self.chats = iter(range(9_100_000, 9_200_000))

    def reconcile(self) -> Report:
        return self.run(lambda svc: reconcile_once(svc, POLICY))

    def at_fal(self, num_images: int, age_seconds: float) -> Submitted:
        """A generation FAL accepted `age_seconds` ago (its callback still to come)."""
        body = flux_arguments(num_images)
        accepted: Submission = self.run(lambda svc: svc.fal.submit(FLUX_LORA, body, "http://x/"))
        gen = submitted(self.url, num_images, telegram_id=next(self.chats), accepted=accepted)
        self.age(gen, age_seconds)
        return gen

    def age(self, gen: Submitted, seconds: float) -> None:
        then = utcnow() - dt.timedelta(seconds=seconds)

        async def work(session: AsyncSession) -> None:
            await session.execute(
                update(FalJob)
                .where(FalJob.generation_id == gen.generation_id)
                .values(submitted_at=then)
            )
            await session.execute(
                update(Generation)
                .where(Generation.id == gen.generation_id)
                .values(updated_at=then, created_at=then)
            )

        run(self.url, work)


@pytest.fixture
def world(database_url: str, fal: FalQueueServer) -> Generations:
    schema.upgrade(database_url)
    return Generations(database_url, fal)


def test_a_lost_callback_is_fetched_and_applied_once(world: Generations) -> None:
    gen = world.at_fal(3, age_seconds=130)
    fresh = world.at_fal(2, age_seconds=10)
    world.fal.complete(gen.request_id, deliver=False, nsfw=[False, False, True])
    world.fal.complete(fresh.request_id, deliver=False)
    report = world.reconcile()
    assert (report.generations_checked, report.generations_applied) == (1, 1)
    assert generation_row(world.url, gen.generation_id).status == "completed"
    (note,) = outbox_of(world.url, gen.generation_id)
    assert note.message_type == MessageType.ALBUM.value and len(note.media or []) == 2
    assert "Скрыто фильтром безопасности: 1." in note.text
    (event,) = events_of(world.url, gen.request_id)
    assert (event.source, event.generation_id) == ("reconciler", gen.generation_id)
    # Within its expected time the other one was not even asked about.
    assert generation_row(world.url, fresh.generation_id).status == "queued"
    again = world.reconcile()
    assert again.generations_checked == 0 and len(outbox_of(world.url, gen.generation_id)) == 1


def test_payload_error_sends_nothing_until_the_result_is_fetched(world: Generations) -> None:
    gen = world.at_fal(1, age_seconds=5)
    world.fal.complete(gen.request_id, deliver=False)
    first = deliver(world.url, result_pending(gen.request_id))
    assert first.outcome is Outcome.RECEIVED and not first.notification_enqueued
    assert outbox_of(world.url, gen.generation_id) == []
    # Young as it is, the stored payload_error makes it due at once.
    report = world.reconcile()
    assert report.generations_applied == 1
    (note,) = outbox_of(world.url, gen.generation_id)
    assert note.message_type == MessageType.PHOTO.value
    row = generation_row(world.url, gen.generation_id)
    assert row.status == "completed" and row.images and row.seed


def test_a_generation_past_the_hard_limit_fails_and_gives_its_photos_back(
    world: Generations,
) -> None:
    gen = world.at_fal(4, age_seconds=1801)
    world.fal.start_training(gen.request_id)  # running at FAL, never ending
    report = world.reconcile()
    assert (report.generations_checked, report.generations_timed_out) == (1, 1)
    assert world.fal.request(gen.request_id).cancelled
    row = generation_row(world.url, gen.generation_id)
    assert row.status == "failed" and "30 minutes" in (row.error_message or "")
    (note,) = outbox_of(world.url, gen.generation_id)
    assert note.message_type == MessageType.TEXT.value
    assert "сервис генерации не успел их сделать" in note.text

    async def left(session: AsyncSession) -> int:
        return await quota.photos_left(session, gen.user_id, 20, utcnow())

    assert run(world.url, left) == 20


def test_an_abandoned_submission_is_failed_with_one_message(world: Generations) -> None:
    stuck = submitted(world.url, 2, telegram_id=next(world.chats), registered=False)
    world.age(stuck, 301)
    recent = submitted(world.url, 2, telegram_id=next(world.chats), registered=False)
    report = world.reconcile()
    assert report.generations_interrupted == 1
    row = generation_row(world.url, stuck.generation_id)
    assert row.status == GenerationStatus.FAILED.value and row.finished_at is not None
    (note,) = outbox_of(world.url, stuck.generation_id)
    assert "запрос прервался" in note.text
    assert note.dedupe_key == f"generation:{stuck.generation_id}:failed"
    assert generation_row(world.url, recent.generation_id).status == "queued"
    assert world.reconcile().generations_interrupted == 0
    assert world.fal.calls == []
