"""My photos: the latest generations with their status, and their buttons (again, send again)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from telegram import InputMediaPhoto, Update
from telegram.ext import ContextTypes

from service.bot import generation, keyboards, launch
from service.bot.services import answer_tap, lang, say, services
from service.bot.styles import frame_label
from service.bot.texts import Lang, age, t
from service.fal.flux_lora import Frame
from service.jobs.outcomes import shorten
from service.jobs.states import GenerationStatus
from service.outbox.states import NotificationState
from service.store.models import Generation, Notification, User, utcnow

LISTED = 10
LABEL_CHARS = 60
ERROR_CHARS = 150
_ICONS = {"queued": "⏳", "running": "🎨", "completed": "✅", "failed": "❌"}


async def _latest(session: AsyncSession, telegram_id: int) -> list[Generation]:
    rows = await session.execute(
        select(Generation)
        .join(User, User.id == Generation.user_id)
        .where(User.telegram_id == telegram_id)
        .order_by(Generation.created_at.desc(), Generation.id)
        .limit(LISTED)
    )
    return list(rows.scalars())


def _line(language: Lang, number: int, row: Generation) -> str:
    try:
        frame = frame_label(Frame(row.frame), language)
    except ValueError:
        frame = row.frame
    line = t(
        language,
        "gen_line",
        number=number,
        icon=_ICONS.get(row.status, "•"),
        label=shorten(row.label, LABEL_CHARS),
        photos=launch.photos(language, row.num_images),
        frame=frame,
        status=t(language, f"gen_status_{row.status}"),
        age=age(language, (utcnow() - row.created_at).total_seconds()),
    )
    if row.status == GenerationStatus.FAILED.value and row.error_message:
        line += t(language, "gen_line_error", error=shorten(row.error_message, ERROR_CHARS))
    return line


async def my_photos(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """List the person's latest generations; a finished one can be sent again."""
    await answer_tap(update)
    person = update.effective_user
    assert person is not None
    language = lang(update)
    rows = await services(context).transaction(lambda s: _latest(s, person.id))
    if not rows:
        await say(update, t(language, "gen_mine_empty"))
        return
    lines = [t(language, "gen_mine_title")]
    finished: list[tuple[int, str]] = []
    for number, row in enumerate(rows, 1):
        lines.append(_line(language, number, row))
        if row.status == GenerationStatus.COMPLETED.value:
            finished.append((number, row.id))
    markup = keyboards.rows(keyboards.resend(language, finished))
    await say(update, "\n".join(lines), reply_markup=markup)


async def _sent_media(
    session: AsyncSession, telegram_id: int, generation_id: str
) -> tuple[bool, list[dict[str, Any]], str]:
    """Whether the generation is the person's, the photos its notification sent, its text."""
    owned = (
        await session.execute(
            select(Generation.id)
            .join(User, User.id == Generation.user_id)
            .where(Generation.id == generation_id, User.telegram_id == telegram_id)
        )
    ).scalar_one_or_none()
    if owned is None:
        return False, [], ""
    notification = (
        await session.execute(
            select(Notification)
            .where(
                Notification.generation_id == generation_id,
                Notification.state == NotificationState.SENT.value,
            )
            .order_by(Notification.id)
            .limit(1)
        )
    ).scalar_one_or_none()
    if notification is None:
        return True, [], ""
    media = [m for m in notification.media or [] if isinstance(m, dict) and m.get("file_id")]
    return True, media, notification.text


async def send_again(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send a finished generation's photos again by Telegram's file ids (FAL's URLs expire)."""
    query = update.callback_query
    assert query is not None and query.data is not None
    await query.answer()
    person, chat = update.effective_user, update.effective_chat
    assert person is not None and chat is not None
    language = lang(update)
    generation_id = query.data.rsplit(":", 1)[1]
    owned, media, text = await services(context).transaction(
        lambda s: _sent_media(s, person.id, generation_id)
    )
    if not owned:
        await say(update, t(language, "gen_not_found"))
    elif not media:
        await say(update, t(language, "gen_send_gone"))
    elif len(media) == 1:
        # A single photo went out with the message's text as its caption.
        await chat.send_photo(media[0]["file_id"], caption=text[:1024] or None)
    else:
        group = [
            InputMediaPhoto(m["file_id"], caption=m.get("caption") if i == 0 else None)
            for i, m in enumerate(media)
        ]
        await chat.send_media_group(group)


async def again(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """ "More like this" / "Try again": the same avatar, style or prompt, frame and count."""
    query = update.callback_query
    assert query is not None and query.data is not None
    await query.answer()
    person = update.effective_user
    assert person is not None
    try:
        choice = await generation.again(services(context), person.id, query.data.rsplit(":")[-1])
    except generation.NotFound:
        await say(update, t(lang(update), "gen_not_found"))
        return
    await launch.go(update, context, choice)
