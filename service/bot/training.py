"""Starting a training: claim the person's one slot, zip the photos, submit to FAL, record it.

The order keeps every crash recoverable and every network call outside a transaction:
1. one transaction creates the avatar in `training` (the database's partial unique index lets a
   person hold one such row, so this is the lock), with its photos' Telegram file ids;
2. the photos are downloaded from Telegram and zipped, and the zip is stored under a fresh
   token (a transaction of its own);
3. the training is submitted to FAL, with the avatar id in the webhook URL so that a callback
   racing step 4 still finds the avatar;
4. one transaction registers the FAL job (request id, app, URLs) and applies any callback
   that came first (`service.jobs.ingest.register`).
A failure in 2 or 3 puts the avatar back to `draft`, from which the person can retry; the zip,
if made, is kept for that retry. Except when the submission went out and its answer was lost
(FalNoAnswer): FAL may have accepted it, so the avatar keeps its slot, "submitted,
unconfirmed", until its callback comes or SUBMISSION_UNCONFIRMED_SECONDS pass
(service.bot.unconfirmed); a retry before then could start a second paid training.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from telegram import Bot
from telegram import User as TelegramUser

from service.bot import keyboards, submit
from service.bot.photos import Draft
from service.bot.services import Services
from service.bot.submit import PhotosUnavailable
from service.bot.texts import Lang, t
from service.fal.queue import FalAuthError, FalError, FalNoAnswer, FalRejected
from service.jobs import registry
from service.jobs.states import AvatarStatus
from service.store import training_data
from service.store.models import Avatar, TrainingData, User, new_id
from service.store.users import ensure_user

log = structlog.get_logger("service.bot.training")

TRAINERS = {
    "portrait": "fal-ai/flux-lora-portrait-trainer",
    "style": "fal-ai/flux-lora-fast-training",
}
# What the person is told to expect; FAL's trainers at their default steps.
EXPECTED_MINUTES = {"portrait": 30, "style": 15}


class AlreadyTraining(Exception):
    """The person already has a training running (named when we know which)."""

    def __init__(self, name: str | None) -> None:
        super().__init__(name or "a training is running")
        self.name = name


class NotFound(LookupError):
    """No such avatar for this person."""


class NotDraft(Exception):
    """The avatar is not a draft, so it cannot be (re)started."""

    def __init__(self, name: str, status: str) -> None:
        super().__init__(status)
        self.name = name
        self.status = status


@dataclass(frozen=True)
class AvatarRef:
    """What the messages about an avatar need, detached from any session."""

    id: str
    name: str
    training_type: str


def trigger_word(avatar_id: str) -> str:
    # A rare token the LoRA binds the person (or style) to; prompts use it later.
    return f"aibots{avatar_id[:6]}"


def webhook_url(base: str, avatar_id: str, training_type: str) -> str:
    """FAL_WEBHOOK_URL with `avatar_id` and `training_type` added to its query."""
    parts = urlsplit(base)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [("avatar_id", avatar_id), ("training_type", training_type)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def fal_arguments(training_type: str, images_url: str, trigger: str) -> dict[str, object]:
    if training_type == "style":
        return {"images_data_url": images_url, "trigger_word": trigger, "is_style": True}
    return {"images_data_url": images_url, "trigger_phrase": trigger, "subject_crop": True}


async def _running_training(session: AsyncSession, user_id: int) -> str | None:
    """The name of the person's training in progress, whoever started it."""
    return (
        await session.execute(
            select(Avatar.name)
            .where(Avatar.user_id == user_id, Avatar.status == AvatarStatus.TRAINING.value)
            .limit(1)
        )
    ).scalar_one_or_none()


async def create(svc: Services, person: TelegramUser, draft: Draft) -> AvatarRef:
    """Create the avatar in `training`, holding the person's one slot; AlreadyTraining if not."""

    async def work(session: AsyncSession) -> AvatarRef:
        user = await ensure_user(
            session,
            person.id,
            username=person.username,
            first_name=person.first_name,
            language_code=person.language_code,
        )
        running = await _running_training(session, user.id)
        if running is not None:
            raise AlreadyTraining(running)
        avatar_id = new_id()
        session.add(
            Avatar(
                id=avatar_id,
                user_id=user.id,
                name=draft.name,
                training_type=draft.training_type,
                status=AvatarStatus.TRAINING.value,
                progress=0,
                started_by="bot",
                trigger_word=trigger_word(avatar_id),
                photo_count=len(draft.photos),
                photos=[photo.as_json() for photo in draft.photos],
            )
        )
        await session.flush()
        return AvatarRef(avatar_id, draft.name, draft.training_type)

    try:
        return await svc.transaction(work)
    except IntegrityError:
        # Two starts at once: the partial unique index let exactly one of them in.
        raise AlreadyTraining(None) from None


async def claim_draft(svc: Services, telegram_id: int, avatar_id: str) -> AvatarRef:
    """Move the person's draft back to `training` for another attempt."""

    async def work(session: AsyncSession) -> AvatarRef:
        avatar = await own_avatar(session, telegram_id, avatar_id)
        if avatar.status != AvatarStatus.DRAFT.value:
            raise NotDraft(avatar.name, avatar.status)
        running = await _running_training(session, avatar.user_id)
        if running is not None:
            raise AlreadyTraining(running)
        avatar.status = AvatarStatus.TRAINING.value
        avatar.started_by = "bot"
        avatar.error_message = None
        await session.flush()
        return AvatarRef(avatar.id, avatar.name, avatar.training_type)

    try:
        return await svc.transaction(work)
    except IntegrityError:
        raise AlreadyTraining(None) from None


async def own_avatar(session: AsyncSession, telegram_id: int, avatar_id: str) -> Avatar:
    """The avatar if it belongs to this person (callback data can be forged), else NotFound."""
    avatar = (
        await session.execute(
            select(Avatar)
            .join(User, User.id == Avatar.user_id)
            .where(Avatar.id == avatar_id, User.telegram_id == telegram_id)
            .with_for_update(of=Avatar)
        )
    ).scalar_one_or_none()
    if avatar is None:
        raise NotFound(avatar_id)
    return avatar


async def discard(svc: Services, telegram_id: int, avatar_id: str) -> str:
    """Delete a draft and its photos; returns its name."""

    async def work(session: AsyncSession) -> str:
        avatar = await own_avatar(session, telegram_id, avatar_id)
        submitted = await registry.training_of(session, avatar.id)
        if avatar.status != AvatarStatus.DRAFT.value or submitted is not None:
            raise NotDraft(avatar.name, avatar.status)
        await session.execute(delete(TrainingData).where(TrainingData.avatar_id == avatar.id))
        await session.delete(avatar)
        return avatar.name

    return await svc.transaction(work)


async def launch(svc: Services, bot: Bot, avatar: AvatarRef) -> str:
    """Steps 2-4 for an avatar in `training`; returns its status afterwards.

    Raises FalError or PhotosUnavailable after putting the avatar back to `draft`, except
    FalNoAnswer, after which it stays in `training`, unconfirmed.
    """
    settings = svc.settings
    try:
        token = await submit.training_data_token(svc, bot, avatar.id)
        await svc.transaction(lambda s: submit.sending(s, avatar.id))
        submission = await svc.fal.submit(
            TRAINERS[avatar.training_type],
            fal_arguments(
                avatar.training_type,
                training_data.url_for(settings.public_base_url, token),
                trigger_word(avatar.id),
            ),
            webhook_url(settings.fal_webhook_url, avatar.id, avatar.training_type),
        )
    except FalNoAnswer as exc:
        log.warning("training_submission_unconfirmed", avatar_id=avatar.id, error=str(exc))
        raise
    except (FalError, PhotosUnavailable) as exc:
        error = str(exc)
        log.warning("training_not_submitted", avatar_id=avatar.id, error=error)
        await svc.transaction(lambda s: submit.unsubmitted(s, Avatar, avatar.id, error))
        raise
    log.info("training_submitted", avatar_id=avatar.id, request_id=submission.request_id)
    app = TRAINERS[avatar.training_type]
    return await svc.transaction(lambda s: submit.record(s, avatar.id, submission, app))


def failure_reason(lang: Lang, exc: Exception) -> str:
    """What went wrong, in words for the person (HTML)."""
    if isinstance(exc, FalAuthError):
        return t(lang, "fal_auth")
    if isinstance(exc, FalRejected):
        return t(lang, "fal_rejected", detail=exc.detail[:300])
    if isinstance(exc, PhotosUnavailable):
        return t(lang, "photos_unavailable")
    return t(lang, "fal_unavailable")


def failure_text(lang: Lang, exc: Exception, name: str) -> str:
    """What went wrong, and that the draft is kept for a retry."""
    return f"{failure_reason(lang, exc)}\n\n{t(lang, 'kept_draft', name=name)}"


async def launch_and_tell(
    svc: Services, bot: Bot, chat_id: int, lang: Lang, avatar: AvatarRef
) -> None:
    """Launch the training, then tell the person it started, or why not and how to retry."""
    try:
        status = await launch(svc, bot, avatar)
    except FalNoAnswer:
        minutes = max(1, round(svc.settings.submission_unconfirmed_seconds / 60))
        await bot.send_message(chat_id, t(lang, "unconfirmed", name=avatar.name, minutes=minutes))
        return
    except (FalError, PhotosUnavailable) as exc:
        await bot.send_message(
            chat_id,
            failure_text(lang, exc, avatar.name),
            reply_markup=keyboards.rows([keyboards.draft_actions(lang, avatar.id, avatar.name)]),
        )
        return
    if status == AvatarStatus.TRAINING.value:
        minutes = EXPECTED_MINUTES.get(avatar.training_type, 30)
        await bot.send_message(chat_id, t(lang, "started", name=avatar.name, minutes=minutes))
    # Otherwise a callback already ended it; its outcome message comes from the outbox.
