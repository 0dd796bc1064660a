"""Steps 2 and 4 of starting a training: the photos' zip for FAL, and FAL's answer registered.

See service.bot.training for the order of the steps and why it keeps every crash recoverable.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from telegram import Bot
from telegram.error import TelegramError

from service.bot.photos import make_zip
from service.bot.services import Services
from service.fal.queue import Submission
from service.jobs import registry
from service.jobs.ingest import register
from service.jobs.states import AvatarStatus, GenerationStatus
from service.store import training_data
from service.store.models import Avatar, FalJob, Generation, utcnow

log = structlog.get_logger("service.bot.training")

DOWNLOAD_CONCURRENCY = 4


class PhotosUnavailable(Exception):
    """Telegram would not give the photos back."""


async def training_data_token(svc: Services, bot: Bot, avatar_id: str) -> str:
    """The token of the avatar's zip: the stored one renewed, or a new one from Telegram."""
    ttl = svc.settings.training_data_ttl_seconds
    renewed = await svc.transaction(lambda s: training_data.renew(s, avatar_id, ttl))
    if renewed is not None:
        return renewed.token
    photos = await svc.transaction(lambda s: _photos_of(s, avatar_id))
    images = await download(bot, [photo["file_id"] for photo in photos])
    content = make_zip(images)
    stored = await svc.transaction(
        lambda s: training_data.store(s, avatar_id, content, len(images), ttl)
    )
    return stored.token


async def _photos_of(session: AsyncSession, avatar_id: str) -> list[dict[str, str]]:
    photos = (
        await session.execute(select(Avatar.photos).where(Avatar.id == avatar_id))
    ).scalar_one()
    if not photos:
        raise PhotosUnavailable("the avatar has no photos on record")
    return list(photos)


async def download(bot: Bot, file_ids: list[str]) -> list[bytes]:
    """The files' bytes from Telegram, in order, a few at a time."""
    gate = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)

    async def one(file_id: str) -> bytes:
        async with gate:
            telegram_file = await bot.get_file(file_id)
            return bytes(await telegram_file.download_as_bytearray())

    try:
        return list(await asyncio.gather(*(one(file_id) for file_id in file_ids)))
    except TelegramError as exc:
        raise PhotosUnavailable(f"Telegram: {exc}") from exc


async def sending(session: AsyncSession, avatar_id: str) -> None:
    """Mark the avatar as about to be submitted: from now on FAL may have it (see
    service.bot.unconfirmed), so a lost answer or a crash no longer means "not submitted"."""
    await session.execute(
        update(Avatar)
        .where(Avatar.id == avatar_id, Avatar.status == AvatarStatus.TRAINING.value)
        .values(training_started_at=utcnow(), updated_at=utcnow())
    )


async def unsubmitted(
    session: AsyncSession, model: type[Avatar] | type[Generation], subject_id: str, error: str
) -> None:
    """A submission FAL refused, or never answered with a request id: the avatar goes back to
    draft, the generation fails. Only if no job is registered for it: a callback may have
    matched it by its hint meanwhile, and then the callback's state stands."""
    now = utcnow()
    values: dict[str, object] = {"error_message": error[:2000], "updated_at": now}
    if model is Avatar:
        waiting, registered = AvatarStatus.TRAINING.value, FalJob.avatar_id
        values.update(status=AvatarStatus.DRAFT.value, training_started_at=None)
    else:
        waiting, registered = GenerationStatus.QUEUED.value, FalJob.generation_id
        values.update(status=GenerationStatus.FAILED.value, finished_at=now)
    await session.execute(
        update(model)
        .where(
            model.id == subject_id, model.status == waiting, ~exists().where(registered == model.id)
        )
        .values(values)
    )


async def keep_job(
    session: AsyncSession, subject: Avatar | Generation, submission: Submission, app: str
) -> None:
    """Keep FAL's answer (its URLs) on the job of `subject` (locked by the caller), and read the
    subject again: the events the job was waiting for may have moved it on.

    The job is the one a callback that raced the submission registered from its hint without
    the URLs, else a new one, registered now. A job registered for another request or another
    generation is left as it is, and logged.
    """
    if isinstance(subject, Generation):
        kind, avatar_id, generation_id = registry.JobKind.GENERATION, subject.avatar_id, subject.id
        submitted_at = subject.created_at
        registered = await session.get(FalJob, submission.request_id)
    else:
        kind, avatar_id, generation_id = registry.JobKind.TRAINING, subject.id, None
        assert subject.training_started_at is not None, "set when the submission began"
        submitted_at = subject.training_started_at
        registered = await registry.training_of(session, avatar_id)
    # A generation's job is looked up by its request id, a training's by its avatar: either
    # way it is this submission's only if both the request and the generation match.
    this = (submission.request_id, generation_id)
    if registered is not None and (registered.request_id, registered.generation_id) != this:
        log.warning(
            f"{kind.value}_request_mismatch",
            avatar_id=avatar_id,
            generation_id=generation_id,
            submitted=submission.request_id,
            stored=registered.request_id,
            registered_for=registered.generation_id,
        )
        return
    job = registered or FalJob(
        request_id=submission.request_id,
        kind=kind.value,
        user_id=subject.user_id,
        avatar_id=avatar_id,
        generation_id=generation_id,
        submitted_at=submitted_at,
    )
    job.app = app
    job.status_url = submission.status_url
    job.response_url = submission.response_url
    job.cancel_url = submission.cancel_url
    if registered is None:
        # A callback that arrived before this commit and found nothing is applied now.
        await register(session, job)
    await session.flush()
    await session.refresh(subject)


async def record(session: AsyncSession, avatar_id: str, submission: Submission, app: str) -> str:
    """Register FAL's answer as the avatar's training job; the avatar's status afterwards."""
    avatar = (
        await session.execute(select(Avatar).where(Avatar.id == avatar_id).with_for_update())
    ).scalar_one()
    if avatar.training_started_at is None:
        avatar.training_started_at = utcnow()
    await keep_job(session, avatar, submission, app)
    return avatar.status
