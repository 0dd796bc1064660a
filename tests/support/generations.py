"""Generations for tests: a trained avatar, its generation submitted as the bot does, FAL's bodies.

`submitted` writes what the bot writes (the generation `queued` with no job, then, on FAL's
acceptance, `register` of its job in the transaction that moves it to `queued`), so the tests of
the service side run on the rows the bot will leave.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.flux_lora import Frame, arguments
from service.fal.queue import Submission
from service.jobs.ingest import register
from service.jobs.registry import JobKind
from service.jobs.states import AvatarStatus, GenerationStatus
from service.store.models import Avatar, FalJob, Generation, Notification, WebhookEvent, utcnow
from service.store.users import ensure_user
from tests.fakes.fal_generation import FLUX_LORA, generate
from tests.fakes.fal_queue import callback_body
from tests.support.db import run

TRIGGER = "ohwx_tst"
LORA = "https://v3.fal.media/files/tst/pytorch_lora_weights.safetensors"
MEDIA = "https://v3.fal.media"


@dataclass(frozen=True)
class Submitted:
    generation_id: str
    request_id: str
    avatar_id: str
    user_id: int
    num_images: int


def flux_arguments(
    num_images: int, prompt: str = f"studio portrait of {TRIGGER}"
) -> dict[str, Any]:
    return arguments(prompt, LORA, scale=1.0, frame=Frame.PORTRAIT, num_images=num_images)


def submitted(
    database_url: str,
    num_images: int = 4,
    *,
    telegram_id: int = 7001,
    language: str | None = "ru",
    label: str = "Студийный портрет",
    registered: bool = True,
    created_at: dt.datetime | None = None,
    status: GenerationStatus | None = None,
    accepted: Submission | None = None,
) -> Submitted:
    """A completed avatar's generation; with `registered` also accepted by FAL (`queued`),
    under the request id and URLs of `accepted` (what FAL answered), if given."""
    request_id = accepted.request_id if accepted else str(uuid.uuid4())

    async def work(session: AsyncSession) -> Submitted:
        user = await ensure_user(session, telegram_id, language_code=language)
        avatar = (
            await session.execute(
                select(Avatar).where(
                    Avatar.user_id == user.id, Avatar.status == AvatarStatus.COMPLETED.value
                )
            )
        ).scalar_one_or_none()
        if avatar is None:
            avatar = Avatar(
                user_id=user.id, name="Ann", training_type="portrait",
                status=AvatarStatus.COMPLETED.value, progress=100, trigger_word=TRIGGER,
                lora_url=LORA,
            )  # fmt: skip
            session.add(avatar)
            await session.flush()
        generation = Generation(
            user_id=user.id,
            avatar_id=avatar.id,
            status=GenerationStatus.QUEUED.value,
            style="studio",
            label=label,
            prompt=flux_arguments(num_images)["prompt"],
            frame=Frame.PORTRAIT.value,
            num_images=num_images,
            created_at=created_at or utcnow(),
        )
        session.add(generation)
        await session.flush()
        if registered:
            job = job_of(request_id, user.id, avatar.id, generation.id, accepted)
            await register(session, job)
        if status is not None:
            generation.status = status.value
        return Submitted(generation.id, request_id, avatar.id, user.id, num_images)

    return run(database_url, work)


def job_of(
    request_id: str,
    user_id: int,
    avatar_id: str,
    generation_id: str,
    accepted: Submission | None = None,
) -> FalJob:
    """The registry row the bot writes on FAL's acceptance (`accepted`: FAL's answer)."""
    base = f"http://fal.invalid/{FLUX_LORA}/requests/{request_id}"
    urls = accepted or Submission(request_id, f"{base}/status", base, f"{base}/cancel")
    return FalJob(
        request_id=request_id,
        kind=JobKind.GENERATION.value,
        user_id=user_id,
        avatar_id=avatar_id,
        generation_id=generation_id,
        app=FLUX_LORA,
        status_url=urls.status_url,
        response_url=urls.response_url,
        cancel_url=urls.cancel_url,
        submitted_at=utcnow(),
    )


def output(request_id: str, num_images: int, nsfw: list[bool] | None = None) -> dict[str, Any]:
    return generate(MEDIA, request_id, flux_arguments(num_images), nsfw=nsfw)[0]


def generated(request_id: str, num_images: int, nsfw: list[bool] | None = None) -> bytes:
    """FAL's OK callback of a flux-lora request."""
    return callback_body(request_id, "OK", payload=output(request_id, num_images, nsfw))


def generation_error(request_id: str, message: str = "the LoRA could not be loaded") -> bytes:
    detail = [{"loc": ["body", "loras", 0, "path"], "msg": message, "type": "value_error"}]
    return callback_body(
        request_id, "ERROR", error="Invalid status code: 422", payload={"detail": detail}
    )


def result_pending(request_id: str) -> bytes:
    return callback_body(
        request_id, "OK", payload=None, payload_error="Response payload could not be serialized"
    )


def status_only(request_id: str, status: str = "IN_PROGRESS") -> bytes:
    return callback_body(request_id, status)


def generation_row(database_url: str, generation_id: str) -> Generation:
    async def work(session: AsyncSession) -> Generation:
        found = await session.get(Generation, generation_id)
        assert found is not None
        session.expunge(found)
        return found

    return run(database_url, work)


def outbox_of(database_url: str, generation_id: str) -> list[Notification]:
    async def work(session: AsyncSession) -> list[Notification]:
        rows = (
            await session.execute(
                select(Notification).where(Notification.generation_id == generation_id)
            )
        ).scalars()
        found = list(rows)
        for row in found:
            session.expunge(row)
        return found

    return run(database_url, work)


def events_of(database_url: str, request_id: str) -> list[WebhookEvent]:
    async def work(session: AsyncSession) -> list[WebhookEvent]:
        rows = await session.execute(
            select(WebhookEvent)
            .where(WebhookEvent.request_id == request_id)
            .order_by(WebhookEvent.id)
        )
        found = list(rows.scalars())
        for row in found:
            session.expunge(row)
        return found

    return run(database_url, work)
