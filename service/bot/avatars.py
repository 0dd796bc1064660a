"""My avatars: the list, and its buttons (refresh, cancel, retry, delete; generate leads on)."""

from __future__ import annotations

import html

import structlog
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession
from telegram import InlineKeyboardButton, Update
from telegram.ext import ContextTypes

from service.bot import keyboards, reconciler, training
from service.bot.services import Services, answer_tap, lang, services
from service.bot.texts import Lang, age, kind_name, status_name, t
from service.fal.payload import Event, EventStatus
from service.fal.queue import CancelAnswer, FalError, FalNotFound, QueueState
from service.jobs import registry
from service.jobs.outcomes import shorten
from service.jobs.states import AvatarStatus
from service.store.models import Avatar, FalJob, User, utcnow

log = structlog.get_logger("service.bot.avatars")

LISTED = 10
ERROR_CHARS = 150
_ICONS = {
    "draft": "📝",
    "training": "⏳",
    "cancelling": "⏹",
    "completed": "✅",
    "failed": "❌",
    "cancelled": "🚫",
}


async def _latest(session: AsyncSession, telegram_id: int) -> list[tuple[Avatar, FalJob | None]]:
    """The person's latest avatars, each with its training job if FAL accepted one."""
    rows = await session.execute(
        select(Avatar, FalJob)
        .join(User, User.id == Avatar.user_id)
        .outerjoin(
            FalJob,
            and_(FalJob.avatar_id == Avatar.id, FalJob.kind == registry.JobKind.TRAINING.value),
        )
        .where(User.telegram_id == telegram_id)
        .order_by(Avatar.created_at.desc())
        .limit(LISTED)
    )
    return [(avatar, job) for avatar, job in rows]


def _line(language: Lang, avatar: Avatar) -> str:
    seconds = (utcnow() - avatar.created_at).total_seconds()
    line = t(
        language,
        "avatar_line",
        icon=_ICONS.get(avatar.status, "•"),
        name=shorten(avatar.name),
        kind=kind_name(language, avatar.training_type),
        status=status_name(language, avatar.status),
        age=age(language, seconds),
    )
    if avatar.status == AvatarStatus.TRAINING.value and avatar.progress:
        line += t(language, "avatar_progress", progress=avatar.progress)
    if avatar.status == AvatarStatus.COMPLETED.value and avatar.trigger_word:
        line += t(language, "avatar_trigger", trigger=avatar.trigger_word)
    if avatar.status in ("failed", "draft") and avatar.error_message:
        line += t(language, "avatar_error", error=shorten(avatar.error_message, ERROR_CHARS))
    return line


async def list_avatars(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show the person's latest avatars with status, progress and age, and their buttons."""
    await answer_tap(update)
    person, chat = update.effective_user, update.effective_chat
    assert person is not None and chat is not None
    language = lang(update)
    avatars = await services(context).transaction(lambda s: _latest(s, person.id))
    if not avatars:
        await chat.send_message(t(language, "avatars_empty"))
        return
    lines = [t(language, "avatars_title"), *(_line(language, a) for a, _ in avatars)]
    buttons: list[list[InlineKeyboardButton]] = []
    for avatar, job in avatars:
        if avatar.status == AvatarStatus.TRAINING.value and job and job.cancel_url:
            buttons.append(keyboards.training_actions(language, avatar.id, avatar.name))
        elif avatar.status == AvatarStatus.DRAFT.value:
            buttons.append(keyboards.draft_actions(language, avatar.id, avatar.name))
        elif avatar.status == AvatarStatus.COMPLETED.value and avatar.lora_url:
            buttons.append(keyboards.generate_action(language, avatar.id, avatar.name))
    await chat.send_message("\n\n".join(lines), reply_markup=keyboards.rows(buttons))


async def avatar_action(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Dispatch a press on one avatar's button to its action."""
    query = update.callback_query
    assert query is not None and query.data is not None and query.message is not None
    person, chat = update.effective_user, update.effective_chat
    assert person is not None and chat is not None
    await query.answer()
    _, action, avatar_id = query.data.split(":", 2)
    language = lang(update)
    svc = services(context)
    if action == "retry":
        await _retry(update, context, svc, avatar_id)
        return
    if action == "discard":
        try:
            name = await training.discard(svc, person.id, avatar_id)
        except training.NotFound:
            text = t(language, "not_found")
        except training.NotDraft as exc:
            text = t(language, "not_draft", name=exc.name, status=status_name(language, exc.status))
        else:
            text = t(language, "discarded", name=name)
        await chat.send_message(text)
        return

    async def own(session: AsyncSession) -> tuple[Avatar, FalJob | None]:
        avatar = await training.own_avatar(session, person.id, avatar_id)
        return avatar, await registry.training_of(session, avatar.id)

    try:
        avatar, job = await svc.transaction(own)
    except training.NotFound:
        await chat.send_message(t(language, "not_found"))
        return
    if avatar.status != AvatarStatus.TRAINING.value:
        status = status_name(language, avatar.status)
        await chat.send_message(t(language, "not_training", name=avatar.name, status=status))
        return
    if job is None or job.status_url is None:
        await chat.send_message(t(language, "not_submitted", name=avatar.name))
        return
    current = reconciler.training_of(avatar, job)
    if action == "refresh":
        await chat.send_message(await _refresh(svc, language, current))
    elif action == "cancel":
        await chat.send_message(await _stop(svc, language, current))


async def _refresh(svc: Services, language: Lang, current: reconciler.Training) -> str:
    try:
        state = await reconciler.resolve(svc, current)
    except FalError as exc:
        log.warning("refresh_failed", avatar_id=current.avatar_id, error=str(exc))
        return t(language, "refresh_failed", reason=_reason(language, exc))
    key = {
        QueueState.IN_QUEUE: "refresh_queue",
        QueueState.IN_PROGRESS: "refresh_progress",
        QueueState.COMPLETED: "refresh_done",
    }[state]
    return t(language, key, name=current.name)


async def _stop(svc: Services, language: Lang, current: reconciler.Training) -> str:
    """Ask FAL to cancel, and act on its answer (fal.ai docs, "Cancel a request")."""
    if current.cancel_url is None:
        return t(language, "not_submitted", name=current.name)
    try:
        answer = await svc.fal.cancel(current.cancel_url)
    except FalNotFound:
        answer = CancelAnswer.NOT_FOUND
    except FalError as exc:
        log.warning("cancel_failed", avatar_id=current.avatar_id, error=str(exc))
        return t(language, "refresh_failed", reason=_reason(language, exc))
    log.info("cancel_answered", avatar_id=current.avatar_id, answer=answer.value)
    if answer is CancelAnswer.OK:
        # Removed from FAL's queue: it will never run. The outbox tells the person, once.
        await _apply(svc, current, EventStatus.CANCELLED, "cancelled")
        return t(language, "cancel_requested", name=current.name)
    if answer is CancelAnswer.CANCELLATION_REQUESTED:
        # Running: the app only got a signal. The outcome still counts (a LoRA that finishes
        # anyway completes the avatar); the outbox tells the person how it ends.
        await _apply(svc, current, EventStatus.CANCEL_REQUESTED, "CANCELLATION_REQUESTED")
        return t(language, "cancel_signalled", name=current.name)
    if answer is CancelAnswer.ALREADY_COMPLETED:
        await _resolve_quietly(svc, current)
        return t(language, "cancel_too_late", name=current.name)
    # NOT_FOUND: FAL's status URL says what became of it.
    try:
        state = await reconciler.resolve(svc, current)
    except FalNotFound:
        # FAL knows nothing of it at all: nothing will ever finish it.
        await _apply(svc, current, EventStatus.CANCELLED, "cancelled")
        return t(language, "cancel_unknown", name=current.name)
    except FalError as exc:
        log.warning("cancel_resolve_failed", avatar_id=current.avatar_id, error=str(exc))
        return t(language, "refresh_failed", reason=_reason(language, exc))
    if state is QueueState.COMPLETED:
        return t(language, "cancel_too_late", name=current.name)
    return t(language, "cancel_unknown_running", name=current.name)


async def _apply(
    svc: Services, current: reconciler.Training, status: EventStatus, said: str
) -> None:
    """Record what the cancel learnt through the webhook's domain path."""
    event = Event(current.request_id, status)
    await reconciler.apply(svc, current, event, {"request_id": current.request_id, "status": said})


async def _resolve_quietly(svc: Services, current: reconciler.Training) -> None:
    try:
        await reconciler.resolve(svc, current)
    except FalError as exc:
        # The reconciler asks again later; the person is told the result will come.
        log.warning("cancel_resolve_failed", avatar_id=current.avatar_id, error=str(exc))


def _reason(language: Lang, exc: FalError) -> str:
    # t() escapes what it fills in, and this reason is HTML already.
    return html.unescape(training.failure_reason(language, exc))


async def _retry(
    update: Update, context: ContextTypes.DEFAULT_TYPE, svc: Services, avatar_id: str
) -> None:
    person, chat = update.effective_user, update.effective_chat
    assert person is not None and chat is not None
    language = lang(update)
    try:
        avatar = await training.claim_draft(svc, person.id, avatar_id)
    except training.NotFound:
        await chat.send_message(t(language, "not_found"))
        return
    except training.NotDraft as exc:
        status = status_name(language, exc.status)
        await chat.send_message(t(language, "not_draft", name=exc.name, status=status))
        return
    except training.AlreadyTraining as exc:
        key = "already_training" if exc.name else "already_training_unnamed"
        await chat.send_message(t(language, key, name=exc.name or ""))
        return
    await chat.send_message(t(language, "preparing", name=avatar.name))
    context.application.create_task(
        training.launch_and_tell(svc, context.bot, chat.id, language, avatar),
        update=update,
        name=f"launch:{avatar.id}",
    )
