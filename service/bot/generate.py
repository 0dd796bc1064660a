"""The "make photos" conversation: avatar -> style or own prompt -> frame -> count -> submitted.

What is chosen so far lives in `user_data` (nothing is written until the count is chosen), in
steps of its own rather than a ConversationHandler: the buttons carry what they choose, and the
one typed step (the prompt) is read by a handler that passes any other text on to the menu.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from telegram import Update
from telegram.ext import ContextTypes

from service.bot import keyboards, launch, menu
from service.bot.drafts import GENERATION_KEY
from service.bot.generation import Choice
from service.bot.services import Services, answer_tap, lang, say, services
from service.bot.styles import MAX_PROMPT_CHARS, PromptProblem, clean_prompt, frame_label, style
from service.bot.texts import Lang, status_name, t
from service.bot.timeouts import persist_now
from service.fal.flux_lora import Frame
from service.jobs.states import AvatarStatus
from service.store import generations
from service.store.models import Avatar, User, utcnow

# Steps.
STYLE, PROMPT, FRAME, COUNT = "style", "prompt", "frame", "count"
LISTED_AVATARS = 10


@dataclass
class Chosen:
    avatar_id: str
    name: str
    step: str = STYLE
    style: str | None = None
    own: str | None = None
    frame: Frame | None = None

    def label(self, language: Lang) -> str:
        chosen = style(self.style) if self.style else None
        return chosen.label(language) if chosen else (self.own or "")

    def as_json(self) -> dict[str, str | None]:
        return {**asdict(self), "frame": self.frame.value if self.frame else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chosen:
        frame = data.get("frame")
        return cls(**{**data, "frame": Frame(frame) if frame else None})


def chosen_of(context: ContextTypes.DEFAULT_TYPE) -> Chosen | None:
    """What the person has chosen so far; kept as plain JSON in `user_data`, so that a
    persistence can store it as it is."""
    found: Any = context.user_data.get(GENERATION_KEY) if context.user_data is not None else None
    if not isinstance(found, dict):
        return None
    try:
        return Chosen.from_json(found)
    except (TypeError, ValueError):
        return None


async def keep(update: Update, context: ContextTypes.DEFAULT_TYPE, chosen: Chosen) -> None:
    """The choices so far, stored before the next question is asked: a bot killed once the
    person has seen it still knows what they chose (the flush after every update comes only
    after the reply)."""
    assert context.user_data is not None
    context.user_data[GENERATION_KEY] = chosen.as_json()
    await persist_now(update, context)


async def _left(svc: Services, telegram_id: int) -> int:
    async def work(session: AsyncSession) -> int:
        user = (
            await session.execute(select(User).where(User.telegram_id == telegram_id))
        ).scalar_one_or_none()
        if user is None:
            return svc.settings.generations_per_day
        per_day = svc.settings.generations_per_day
        return await generations.photos_left(session, user.id, per_day, utcnow())

    return await svc.transaction(work)


async def begin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Start from an avatar's button ("Generate", "New prompt"): ask for the style."""
    await answer_tap(update)
    assert update.callback_query is not None and update.callback_query.data is not None
    await start(update, context, update.callback_query.data.rsplit(":", 1)[1])


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE, avatar_id: str) -> None:
    """Check the avatar is the person's and trained, then show the styles."""
    person = update.effective_user
    assert person is not None
    language = lang(update)
    svc = services(context)

    async def own(session: AsyncSession) -> Avatar | None:
        return (
            await session.execute(
                select(Avatar)
                .join(User, User.id == Avatar.user_id)
                .where(Avatar.id == avatar_id, User.telegram_id == person.id)
            )
        ).scalar_one_or_none()

    avatar = await svc.transaction(own)
    if avatar is None:
        await say(update, t(language, "not_found"))
        return
    if avatar.status != AvatarStatus.COMPLETED.value or not avatar.lora_url:
        status = status_name(language, avatar.status)
        await say(update, t(language, "gen_avatar_not_ready", name=avatar.name, status=status))
        return
    await keep(update, context, Chosen(avatar.id, avatar.name))
    left = await _left(svc, person.id)
    per_day = svc.settings.generations_per_day
    await say(
        update,
        t(language, "gen_ask_style", name=avatar.name, left=left, per_day=per_day),
        reply_markup=keyboards.styles(language),
    )


async def generate_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/generate: the one completed avatar, or a question which one when there are several."""
    person = update.effective_user
    assert person is not None
    language = lang(update)

    async def ready(session: AsyncSession) -> list[tuple[str, str]]:
        rows = await session.execute(
            select(Avatar.id, Avatar.name)
            .join(User, User.id == Avatar.user_id)
            .where(User.telegram_id == person.id, Avatar.status == AvatarStatus.COMPLETED.value)
            .order_by(Avatar.created_at.desc())
            .limit(LISTED_AVATARS)
        )
        return [(row[0], row[1]) for row in rows]

    avatars = await services(context).transaction(ready)
    if not avatars:
        await say(update, t(language, "gen_no_avatars"))
    elif len(avatars) == 1:
        await start(update, context, avatars[0][0])
    else:
        buttons = [keyboards.generate_action(language, aid, name) for aid, name in avatars]
        await say(update, t(language, "gen_choose_avatar"), reply_markup=keyboards.rows(buttons))


async def _tapped(update: Update, context: ContextTypes.DEFAULT_TYPE) -> tuple[Chosen | None, str]:
    """Answer the button's tap: the choices made so far, and the value the button carries."""
    await answer_tap(update)
    query = update.callback_query
    assert query is not None and query.data is not None
    return chosen_of(context), query.data.rsplit(":", 1)[1]


async def _outdated(update: Update) -> None:
    await say(update, t(lang(update), "gen_outdated"))


async def choose_style(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Record a curated style and ask for the frame."""
    chosen, key = await _tapped(update, context)
    if chosen is None or style(key) is None:
        await _outdated(update)
        return
    chosen.style, chosen.own, chosen.step = key, None, FRAME
    await keep(update, context, chosen)
    await _ask_frame(update, chosen)


async def choose_own(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Ask for a prompt of the person's own."""
    await answer_tap(update)
    chosen = chosen_of(context)
    if chosen is None:
        await _outdated(update)
        return
    chosen.step = PROMPT
    await keep(update, context, chosen)
    await say(update, t(lang(update), "gen_ask_prompt", max=MAX_PROMPT_CHARS))


async def text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The prompt, when one is awaited; any other text points at the menu."""
    chosen = chosen_of(context)
    if chosen is None or chosen.step != PROMPT:
        await menu.text_outside(update, context)
        return
    assert update.message is not None
    language = lang(update)
    if update.message.text is None:
        await say(update, t(language, "gen_prompt_not_text"))
        return
    try:
        chosen.own = clean_prompt(update.message.text)
    except PromptProblem as problem:
        length = len(" ".join(update.message.text.split()))
        await say(update, t(language, str(problem), length=length, max=MAX_PROMPT_CHARS))
        return
    chosen.style, chosen.step = None, FRAME
    await keep(update, context, chosen)
    await _ask_frame(update, chosen)


async def _ask_frame(update: Update, chosen: Chosen) -> None:
    language = lang(update)
    await say(
        update,
        t(language, "gen_ask_frame", label=chosen.label(language)),
        reply_markup=keyboards.frames(language),
    )


async def choose_frame(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Record the frame and ask how many photos."""
    chosen, value = await _tapped(update, context)
    if chosen is None or chosen.step not in (FRAME, COUNT):
        await _outdated(update)
        return
    chosen.frame = Frame[value.upper()]
    chosen.step = COUNT
    await keep(update, context, chosen)
    language = lang(update)
    person = update.effective_user
    assert person is not None
    left = await _left(services(context), person.id)
    await say(
        update,
        t(
            language,
            "gen_ask_count",
            label=chosen.label(language),
            frame=frame_label(chosen.frame, language),
            left=left,
        ),
        reply_markup=keyboards.counts(language),
    )


async def choose_count(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The last choice: submit."""
    chosen, value = await _tapped(update, context)
    if chosen is None or chosen.step != COUNT or chosen.frame is None:
        await _outdated(update)
        return
    count = int(value)
    choice = Choice(chosen.avatar_id, chosen.frame, count, chosen.style, chosen.own)
    if await launch.go(update, context, choice):
        assert context.user_data is not None
        context.user_data.pop(GENERATION_KEY, None)
    # Refused: the choices stay, so a smaller count (or a later press) works.


async def cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/cancel outside the avatar conversation: drop a half-chosen generation, if any."""
    if chosen_of(context) is None:
        await menu.nothing_to_cancel(update, context)
        return
    assert context.user_data is not None
    context.user_data.pop(GENERATION_KEY, None)
    await say(update, t(lang(update), "gen_cancelled"))
