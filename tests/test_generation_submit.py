"""The bot's submission of a generation against the local FAL queue and a real database, when
FAL's callback is faster than the bot's record of FAL's answer (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import pytest
import structlog.testing
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot import generation
from service.bot.generation import Choice
from service.bot.services import Services
from service.fal import flux_lora
from service.fal.flux_lora import Frame
from service.fal.payload import parse_body, parse_event
from service.fal.queue import Submission
from service.jobs.ingest import Delivery, Outcome, ingest
from service.settings import Settings
from service.store.models import FalJob, Generation, Notification
from tests.fakes.fal_generation import FLUX_LORA
from tests.fakes.fal_queue import FalQueueServer
from tests.support import schema
from tests.support.bot_generations import completed_avatar

KEY = "fal-key-id:fal-key-secret"
TELEGRAM_ID = 6161
T = TypeVar("T")


@pytest.fixture
def fal() -> Iterator[FalQueueServer]:
    with FalQueueServer(KEY) as server:
        yield server


def test_a_callback_before_the_record_is_applied_and_the_record_adds_the_urls(
    database_url: str, fal: FalQueueServer
) -> None:
    schema.upgrade(database_url)
    settings = Settings(
        database_url=database_url,
        fal_key=KEY,
        fal_queue_url=fal.url,
        fal_webhook_url="http://127.0.0.1:9/api/v1/avatar/status_update",
    )
    avatar = completed_avatar(database_url, TELEGRAM_ID, "Anna")
    assert avatar.lora_url and avatar.trigger_word
    fal.add_lora(avatar.lora_url, avatar.trigger_word)

    def run(work: Callable[[Services], Awaitable[T]]) -> T:
        async def go() -> T:
            svc = Services.open(settings, fal_timeout=2.0)
            try:
                return await work(svc)
            finally:
                await svc.close()

        return asyncio.run(go())

    choice = Choice(avatar.id, Frame.SQUARE, 2, style="studio")

    async def submitted(svc: Services) -> tuple[generation.Reserved, Submission]:
        reserved = await generation.reserve(svc, TELEGRAM_ID, choice, "ru")
        body = flux_lora.arguments(
            reserved.prompt, reserved.lora_url, scale=1.0, frame=choice.frame, num_images=2
        )
        hook = generation.webhook_url(settings.fal_webhook_url, reserved.id)
        return reserved, await svc.fal.submit(FLUX_LORA, body, hook)

    reserved, submission = run(submitted)
    # FAL is done and calls back before the bot has written down FAL's answer: the webhook
    # finds the generation by its ?generation_id= hint.
    fal.complete(submission.request_id, deliver=False)
    raw = fal.request(submission.request_id).last_callback
    webhook = fal.request(submission.request_id).webhook_url
    assert raw is not None and webhook is not None
    query = urlsplit(webhook).query
    event = parse_event(parse_body(raw), dict(parse_qsl(query)), submission.request_id)
    delivery = Delivery(raw, event, {}, query, "127.0.0.1", signed=True)
    received = run(lambda svc: svc.transaction(lambda s: ingest(s, delivery)))
    assert received.outcome is Outcome.RECEIVED and received.notification_enqueued

    status = run(
        lambda svc: svc.transaction(
            lambda s: generation.record(s, reserved.id, submission, FLUX_LORA)
        )
    )
    assert status == "completed"

    async def rows(session: AsyncSession) -> tuple[list[FalJob], Generation, int]:
        jobs = list((await session.execute(select(FalJob))).scalars())
        found = await session.get_one(Generation, reserved.id)
        sent = await session.execute(
            select(Notification.id).where(Notification.generation_id == reserved.id)
        )
        return jobs, found, len(sent.all())

    jobs, found, notifications = run(lambda svc: svc.transaction(rows))
    (job,) = jobs
    assert job.request_id == submission.request_id and job.generation_id == reserved.id
    assert job.kind == "generation" and job.app == FLUX_LORA
    assert job.status_url == submission.status_url and job.cancel_url == submission.cancel_url
    assert found.status == "completed" and notifications == 1


def test_an_answer_whose_request_is_registered_for_another_generation_is_left_and_logged(
    database_url: str,
) -> None:
    schema.upgrade(database_url)
    settings = Settings(database_url=database_url, fal_key=KEY)
    avatar = completed_avatar(database_url, TELEGRAM_ID, "Anna")
    shared = Submission("req-shared", "https://q/status", "https://q/response", "https://q/cancel")
    # The same request id in another answer (for another generation), with other URLs.
    again = Submission("req-shared", "https://q/other", "https://q/other", "https://q/other")

    async def work(
        svc: Services,
    ) -> tuple[str, list[FalJob], Generation, list[MutableMapping[str, Any]]]:
        first = await generation.reserve(
            svc, TELEGRAM_ID, Choice(avatar.id, Frame.SQUARE, 1, style="studio"), "ru"
        )
        second = await generation.reserve(
            svc, TELEGRAM_ID, Choice(avatar.id, Frame.SQUARE, 1, style="studio"), "ru"
        )
        await svc.transaction(lambda s: generation.record(s, first.id, shared, FLUX_LORA))
        with structlog.testing.capture_logs() as logged:
            status = await svc.transaction(
                lambda s: generation.record(s, second.id, again, FLUX_LORA)
            )

        async def rows(session: AsyncSession) -> tuple[list[FalJob], Generation]:
            jobs = list((await session.execute(select(FalJob))).scalars())
            return jobs, await session.get_one(Generation, second.id)

        jobs, found = await svc.transaction(rows)
        assert jobs[0].generation_id == first.id
        return status, jobs, found, logged

    async def go() -> tuple[str, list[FalJob], Generation, list[MutableMapping[str, Any]]]:
        svc = Services.open(settings, fal_timeout=2.0)
        try:
            return await work(svc)
        finally:
            await svc.close()

    status, jobs, second, logged = asyncio.run(go())
    # The job stays the first generation's; the second keeps waiting, without a job.
    assert len(jobs) == 1 and status == "queued" and second.status == "queued"
    assert jobs[0].status_url == shared.status_url and jobs[0].cancel_url == shared.cancel_url
    (mismatch,) = [e for e in logged if e["event"] == "generation_request_mismatch"]
    assert mismatch["generation_id"] == second.id and mismatch["submitted"] == "req-shared"
    assert mismatch["registered_for"] == jobs[0].generation_id
