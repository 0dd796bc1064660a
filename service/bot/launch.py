"""Launching a chosen generation: the limits' answer, FAL's submission, what the person hears."""

from __future__ import annotations

from telegram import Bot, Update
from telegram.ext import ContextTypes

from service.bot import generation, keyboards
from service.bot.generation import Choice
from service.bot.services import Services, lang, say, services
from service.bot.texts import Lang, status_name, t
from service.fal.queue import FalAuthError, FalError, FalRejected
from service.jobs.states import GenerationStatus
from service.store.models import utcnow


def photos(language: Lang, count: int) -> str:
    if language == "en":
        return f"{count} photo" if count == 1 else f"{count} photos"
    return f"{count} фото"


def wait(language: Lang, seconds: float) -> str:
    minutes = max(1, int(seconds // 60) + (1 if seconds % 60 else 0))
    hours, minutes = divmod(minutes, 60)
    h, m = ("h", "min") if language == "en" else ("ч", "мин")
    if not hours:
        return f"{minutes} {m}"
    return f"{hours} {h} {minutes} {m}" if minutes else f"{hours} {h}"


async def go(update: Update, context: ContextTypes.DEFAULT_TYPE, choice: Choice) -> bool:
    """Reserve the generation (or say why not), then submit it in the background."""
    person, chat = update.effective_user, update.effective_chat
    assert person is not None and chat is not None
    language = lang(update)
    svc = services(context)
    try:
        reserved = await generation.reserve(svc, person.id, choice, language)
    except generation.Refused as refused:
        await say(update, refusal(svc, language, refused, choice.count))
        return False
    # FAL answers within seconds, but up to its timeout: other people's updates go on.
    context.application.create_task(
        submit_and_tell(svc, context.bot, chat.id, language, reserved),
        update=update,
        name=f"generate:{reserved.id}",
    )
    return True


def refusal(svc: Services, language: Lang, refused: generation.Refused, count: int) -> str:
    """Why the generation cannot start, in words for the person (HTML)."""
    settings = svc.settings
    if isinstance(refused, generation.TooManyRunning):
        limit = settings.generations_in_flight
        return t(language, "gen_too_many_running", running=refused.running, limit=limit)
    if isinstance(refused, generation.OverQuota):
        text = t(
            language,
            "gen_over_quota",
            photos=photos(language, count),
            left=refused.left,
            per_day=settings.generations_per_day,
        )
        if refused.left > 0:
            text += " " + t(language, "gen_fewer", left=refused.left)
        if refused.free_at is not None:
            seconds = (refused.free_at - utcnow()).total_seconds()
            text += " " + t(language, "gen_free_in", wait=wait(language, seconds))
        return text
    if isinstance(refused, generation.AvatarNotReady):
        status = status_name(language, refused.status)
        return t(language, "gen_avatar_not_ready", name=refused.name, status=status)
    return t(language, "not_found")


def _fal_reason(language: Lang, exc: FalError) -> str:
    if isinstance(exc, FalAuthError):
        return t(language, "gen_fal_auth")
    if isinstance(exc, FalRejected):
        return t(language, "gen_fal_rejected", detail=exc.detail[:300])
    return t(language, "gen_fal_unavailable")


async def submit_and_tell(
    svc: Services, bot: Bot, chat_id: int, language: Lang, reserved: generation.Reserved
) -> None:
    """Submit to FAL, then tell the person it is on its way, or why not and what to do."""
    try:
        status = await generation.submit(svc, reserved)
    except FalError as exc:
        text = f"{_fal_reason(language, exc)}\n\n{t(language, 'gen_not_counted')}"
        markup = keyboards.generation_failed(language, reserved.id)
        await bot.send_message(chat_id, text, reply_markup=markup)
        return
    if GenerationStatus(status).is_terminal:
        # A callback already ended it; its photos (or its failure) come from the outbox.
        return
    await bot.send_message(
        chat_id,
        t(
            language,
            "gen_queued",
            photos=photos(language, reserved.count),
            name=reserved.avatar_name,
            label=reserved.label,
            left=reserved.left,
            per_day=svc.settings.generations_per_day,
        ),
    )
