"""My avatars: the list, and its buttons (refresh, cancel, retry, delete, generate)."""

from __future__ import annotations

import html

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from telegram import InlineKeyboardButton, Update
from telegram.ext import ContextTypes

from service.bot import keyboards, reconciler, training
from service.bot.services import Services, lang, services
from service.bot.texts import Lang, age, kind_name, status_name, t
from service.fal.queue import CancelAnswer, FalError, FalNotFound, QueueState
from service.jobs.outcomes import shorten
from service.jobs.states import AvatarStatus
from service.store.models import Avatar, User, utcnow

log = structlog.get_logger("service.bot.avatars")

LISTED = 10
ERROR_CHARS = 150
_ICONS = {"draft": "📝", "training": "⏳", "completed": "✅", "failed": "❌", "cancelled": "🚫"}


async def _latest(session: AsyncSession, telegram_id: int) -> list[Avatar]:
    rows = await session.execute(
        select(Avatar)
        .join(User, User.id == Avatar.user_id)
        .where(User.telegram_id == telegram_id)
        .order_by(Avatar.created_at.desc())
        .limit(LISTED)
    )
    return list(rows.scalars())


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
    if update.callback_query:
        await update.callback_query.answer()
    person, chat = update.effective_user, update.effective_chat
    assert person is not None and chat is not None
    language = lang(update)
    avatars = await services(context).transaction(lambda s: _latest(s, person.id))
    if not avatars:
        await chat.send_message(t(language, "avatars_empty"))
        return
    lines = [t(language, "avatars_title"), *(_line(language, a) for a in avatars)]
    buttons: list[list[InlineKeyboardButton]] = []
    for avatar in avatars:
        if avatar.status == AvatarStatus.TRAINING.value and avatar.fal_cancel_url:
            buttons.append(keyboards.training_actions(language, avatar.id, avatar.name))
        elif avatar.status == AvatarStatus.DRAFT.value:
            buttons.append(keyboards.draft_actions(language, avatar.id, avatar.name))
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
    try:
        avatar = await svc.transaction(lambda s: training.own_avatar(s, person.id, avatar_id))
    except training.NotFound:
        await chat.send_message(t(language, "not_found"))
        return
    if action == "generate":
        trigger = avatar.trigger_word or "—"
        await chat.send_message(t(language, "generate_soon", name=avatar.name, trigger=trigger))
        return
    if avatar.status != AvatarStatus.TRAINING.value:
        status = status_name(language, avatar.status)
        await chat.send_message(t(language, "not_training", name=avatar.name, status=status))
        return
    if avatar.fal_request_id is None or avatar.fal_status_url is None:
        await chat.send_message(t(language, "not_submitted", name=avatar.name))
        return
    current = reconciler.training_of(avatar)
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
    if current.cancel_url is None:
        return t(language, "not_submitted", name=current.name)
    try:
        answer = await svc.fal.cancel(current.cancel_url)
        # Until the avatar has a `cancelling` state, a requested cancel is recorded as the end.
        accepted = answer in (CancelAnswer.OK, CancelAnswer.CANCELLATION_REQUESTED)
        if answer is CancelAnswer.NOT_FOUND:
            # FAL no longer knows it: nothing will ever finish it, so it is cancelled here.
            accepted = True
    except FalNotFound:
        accepted = True
    except FalError as exc:
        log.warning("cancel_failed", avatar_id=current.avatar_id, error=str(exc))
        return t(language, "refresh_failed", reason=_reason(language, exc))
    if not accepted:
        try:
            await reconciler.resolve(svc, current)
        except FalError as exc:
            log.warning("cancel_resolve_failed", avatar_id=current.avatar_id, error=str(exc))
        return t(language, "cancel_too_late", name=current.name)
    # Through the webhook's path: the outbox then tells the person, once, that it is cancelled.
    await reconciler.apply_body(
        svc, current, {"request_id": current.request_id, "status": "cancelled"}
    )
    return t(language, "cancel_requested", name=current.name)


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
