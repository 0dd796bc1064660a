"""Making photos with a completed avatar: the quota and the row, FAL's submission, its record.

The order mirrors a training's (service.bot.training) and keeps every network call outside a
transaction:
1. one transaction locks the person's row (two taps at once queue here), checks
   GENERATIONS_IN_FLIGHT and GENERATIONS_PER_DAY, and writes the generation `queued` (no job yet):
   from then on it counts against both;
2. the request goes to `{FAL_QUEUE_URL}/{FAL_GENERATION_APP}` with `?generation_id=` in the
   webhook URL, so that a callback racing step 3 still finds its generation;
3. one transaction registers the FAL job (the generation stays `queued`); a refusal or
   an error marks it `failed` instead, which gives its photos back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.services import Services
from service.bot.styles import compose, style
from service.bot.submit import keep_job, unsubmitted
from service.fal import flux_lora
from service.fal.flux_lora import Frame
from service.fal.queue import FalError, Submission
from service.jobs.states import AvatarStatus, GenerationStatus
from service.store import generations
from service.store.models import Avatar, Generation, User, utcnow

log = structlog.get_logger("service.bot.generation")


@dataclass(frozen=True)
class Choice:
    """What the person asked for: a curated style or a prompt of their own, frame, count."""

    avatar_id: str
    frame: Frame
    count: int
    style: str | None = None
    own: str | None = None


@dataclass(frozen=True)
class Reserved:
    """A generation written `queued`, before FAL accepted it, detached from its session."""

    id: str
    avatar_id: str
    avatar_name: str
    label: str
    prompt: str
    lora_url: str
    frame: Frame
    count: int
    # Photos the person may still ask for today, this generation counted.
    left: int


class Refused(Exception):
    """The generation cannot start; nothing was written."""


class AvatarNotReady(Refused):
    def __init__(self, name: str, status: str) -> None:
        super().__init__(f"{name}: {status}")
        self.name = name
        self.status = status


class NotFound(Refused, LookupError):
    """No such avatar (or generation) for this person."""


class TooManyRunning(Refused):
    def __init__(self, running: int) -> None:
        super().__init__(f"{running} generations running")
        self.running = running


class OverQuota(Refused):
    def __init__(self, left: int, free_at: dt.datetime | None) -> None:
        super().__init__(f"{left} photos left")
        self.left = left
        # When enough of the last day's photos have aged out for the request to fit.
        self.free_at = free_at


def webhook_url(base: str, generation_id: str) -> str:
    """FAL_WEBHOOK_URL with `generation_id` added to its query."""
    parts = urlsplit(base)
    query = [*parse_qsl(parts.query, keep_blank_values=True), ("generation_id", generation_id)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def label_of(choice: Choice, language: str) -> str:
    """What the person sees the generation as: the style's name, or their own prompt."""
    chosen = style(choice.style) if choice.style else None
    if chosen is not None:
        return chosen.label(language)
    return choice.own or ""


async def free_at(
    session: AsyncSession, user_id: int, needed: int, per_day: int, now: dt.datetime
) -> dt.datetime | None:
    """When `needed` photos will fit in the rolling day: the oldest counted ones age out first."""
    rows = await session.execute(
        select(Generation.created_at, Generation.num_images)
        .where(
            Generation.user_id == user_id,
            Generation.created_at > now - generations.WINDOW,
            Generation.status != GenerationStatus.FAILED.value,
        )
        .order_by(Generation.created_at)
    )
    left = await generations.photos_left(session, user_id, per_day, now)
    for created_at, count in rows:
        left += count
        if left >= needed:
            return created_at + generations.WINDOW
    return None


async def reserve(svc: Services, telegram_id: int, choice: Choice, language: str) -> Reserved:
    """Step 1: check the limits with the person's row locked, and write the generation."""
    settings = svc.settings

    async def work(session: AsyncSession) -> Reserved:
        # The lock that makes the limits hold: a second tap waits here until the first commits,
        # then counts the first one's row (SQLite serialises every writer anyway).
        user = (
            await session.execute(
                select(User).where(User.telegram_id == telegram_id).with_for_update()
            )
        ).scalar_one_or_none()
        avatar = await session.get(Avatar, choice.avatar_id)
        if user is None or avatar is None or avatar.user_id != user.id:
            raise NotFound(choice.avatar_id)
        if (
            avatar.status != AvatarStatus.COMPLETED.value
            or not avatar.lora_url
            or not avatar.trigger_word
        ):
            raise AvatarNotReady(avatar.name, avatar.status)
        running = await generations.in_flight(session, user.id)
        if running >= settings.generations_in_flight:
            raise TooManyRunning(running)
        now = utcnow()
        per_day = settings.generations_per_day
        left = await generations.photos_left(session, user.id, per_day, now)
        if left < choice.count:
            when = await free_at(session, user.id, choice.count, per_day, now)
            raise OverQuota(left, when)
        prompt = compose(avatar.trigger_word, style_key=choice.style, own=choice.own)
        row = Generation(
            user_id=user.id,
            avatar_id=avatar.id,
            status=GenerationStatus.QUEUED.value,
            style=choice.style,
            label=label_of(choice, language),
            prompt=prompt,
            frame=choice.frame.value,
            num_images=choice.count,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        await session.flush()
        return Reserved(
            row.id,
            avatar.id,
            avatar.name,
            row.label,
            prompt,
            avatar.lora_url,
            choice.frame,
            choice.count,
            left - choice.count,
        )

    return await svc.transaction(work)


async def again(svc: Services, telegram_id: int, generation_id: str) -> Choice:
    """The choice behind one of the person's generations, to make it once more."""

    async def work(session: AsyncSession) -> Choice:
        found = (
            await session.execute(
                select(Generation)
                .join(User, User.id == Generation.user_id)
                .where(Generation.id == generation_id, User.telegram_id == telegram_id)
            )
        ).scalar_one_or_none()
        if found is None:
            raise NotFound(generation_id)
        own = None if found.style else found.label
        return Choice(found.avatar_id, Frame(found.frame), found.num_images, found.style, own)

    return await svc.transaction(work)


async def submit(svc: Services, reserved: Reserved) -> str:
    """Steps 2 and 3; returns the generation's status afterwards.

    Raises FalError after marking the generation failed (it then does not count).
    """
    settings = svc.settings
    app = settings.fal_generation_app
    body = flux_lora.arguments(
        reserved.prompt,
        reserved.lora_url,
        scale=settings.generation_lora_scale,
        frame=reserved.frame,
        num_images=reserved.count,
    )
    try:
        submission = await svc.fal.submit(
            app, body, webhook_url(settings.fal_webhook_url, reserved.id)
        )
    except FalError as exc:
        error = str(exc)
        log.warning("generation_not_submitted", generation_id=reserved.id, error=error)
        await svc.transaction(lambda s: unsubmitted(s, Generation, reserved.id, error))
        raise
    log.info("generation_submitted", generation_id=reserved.id, request_id=submission.request_id)
    return await svc.transaction(lambda s: record(s, reserved.id, submission, app))


async def record(
    session: AsyncSession, generation_id: str, submission: Submission, app: str
) -> str:
    """Register FAL's answer as the generation's job (it stays `queued` until FAL says it runs)."""
    generation = (
        await session.execute(
            select(Generation).where(Generation.id == generation_id).with_for_update()
        )
    ).scalar_one()
    await keep_job(session, generation, submission, app)
    return generation.status
