"""Steps 2 and 4 of starting a training: the photos' zip for FAL, and FAL's answer registered.

See service.bot.training for the order of the steps and why it keeps every crash recoverable.
"""

from __future__ import annotations

import asyncio
import datetime as dt

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
from service.jobs.states import AvatarStatus
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


async def back_to_draft(session: AsyncSession, avatar_id: str, error: str) -> None:
    # Only if FAL never answered with a request id: a callback may have matched it meanwhile.
    await session.execute(
        update(Avatar)
        .where(
            Avatar.id == avatar_id,
            Avatar.status == AvatarStatus.TRAINING.value,
            ~exists().where(FalJob.avatar_id == Avatar.id),
        )
        .values(
            status=AvatarStatus.DRAFT.value,
            error_message=error[:2000],
            training_started_at=None,
            updated_at=utcnow(),
        )
    )


async def keep_job(
    session: AsyncSession,
    subject: Avatar | Generation,
    registered: FalJob | None,
    submission: Submission,
    app: str,
    *,
    kind: registry.JobKind,
    avatar_id: str,
    submitted_at: dt.datetime,
    generation_id: str | None = None,
) -> FalJob | None:
    """Keep FAL's answer (its URLs) on the job of `subject` (locked by the caller), and read the
    subject again: the events the job was waiting for may have moved it on.

    The job is `registered`, when a callback that raced the submission registered it from its
    hint without them, else a new one of `kind`, registered now. A job registered for another
    request or another generation is left as it is and returned, for the caller to log.
    """
    # A generation's job is looked up by its request id, a training's by its avatar: either
    # way it is this submission's only if both the request and the generation match.
    this = (submission.request_id, generation_id)
    if registered is not None and (registered.request_id, registered.generation_id) != this:
        return registered
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
    return None


async def record(session: AsyncSession, avatar_id: str, submission: Submission, app: str) -> str:
    """Register FAL's answer as the avatar's training job; the avatar's status afterwards."""
    avatar = (
        await session.execute(select(Avatar).where(Avatar.id == avatar_id).with_for_update())
    ).scalar_one()
    if avatar.training_started_at is None:
        avatar.training_started_at = utcnow()
    other = await keep_job(
        session,
        avatar,
        await registry.training_of(session, avatar_id),
        submission,
        app,
        kind=registry.JobKind.TRAINING,
        avatar_id=avatar.id,
        submitted_at=avatar.training_started_at,
    )
    if other is not None:
        log.warning(
            "training_request_mismatch",
            avatar_id=avatar_id,
            stored=other.request_id,
            submitted=submission.request_id,
        )
    return avatar.status
