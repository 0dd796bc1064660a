"""Submissions FAL never answered: kept "submitted, unconfirmed", then back to draft.

When FAL's answer to a training submission is lost (FalNoAnswer: a read timeout, or the
connection closed or reset after the request went out), FAL may have queued the training all
the same, and it would call back when the training ends. So the avatar stays in `training`,
with `training_started_at` set (service.bot.submit.sending) and no job registered: it keeps
the person's one slot, and a callback carrying its `?avatar_id=` hint is matched by the hint
lookup of service.jobs.training, which registers the job and applies the outcome. A bot that
stopped in the middle of a submission leaves the same state, and it is as uncertain.

Only after SUBMISSION_UNCONFIRMED_SECONDS without such a callback does the reconciler put the
avatar back to draft and tell its owner, with Retry and Delete buttons, in one outbox message.
Before that, a retry could start a second, paid training of the same photos. A callback that
comes later still finds the draft by its hint and applies (unless a retry has registered
another training for it: then it is unmatched).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ColumnElement, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot import keyboards
from service.bot.texts import lang_of, t
from service.jobs.states import AvatarStatus
from service.outbox import queue as outbox
from service.outbox.messages import Message
from service.store.models import Avatar, FalJob, User

REASON = "FAL never confirmed the submission, and no callback came for it"


def _unregistered() -> ColumnElement[bool]:
    return ~exists().where(FalJob.avatar_id == Avatar.id)


async def expire(session: AsyncSession, window: float, now: dt.datetime) -> int:
    """Return to draft every unconfirmed submission older than `window` seconds; how many."""
    due = now - dt.timedelta(seconds=window)
    rows = await session.execute(
        select(Avatar.id, Avatar.name, Avatar.training_started_at, User.telegram_id)
        .add_columns(User.language_code)
        .join(User, User.id == Avatar.user_id)
        .where(
            Avatar.status == AvatarStatus.TRAINING.value,
            Avatar.started_by == "bot",
            Avatar.training_started_at <= due,
            _unregistered(),
        )
        .with_for_update(of=Avatar)
    )
    expired = 0
    for avatar_id, name, started, telegram_id, language_code in rows:
        # Checked again by the update itself: a callback may have registered the job since.
        moved = await session.execute(
            update(Avatar)
            .where(
                Avatar.id == avatar_id,
                Avatar.status == AvatarStatus.TRAINING.value,
                _unregistered(),
            )
            .values(
                status=AvatarStatus.DRAFT.value,
                training_started_at=None,
                error_message=REASON,
                updated_at=now,
            )
        )
        if not moved.rowcount:  # type: ignore[attr-defined]
            continue
        lang = lang_of(language_code)
        markup = keyboards.rows([keyboards.draft_actions(lang, avatar_id, name)])
        message = Message(
            chat_id=telegram_id,
            text=t(lang, "unconfirmed_expired", name=name),
            reply_markup=markup.to_dict() if markup is not None else None,
        )
        # One message per unconfirmed attempt, however many reconcilers see it.
        key = f"avatar:{avatar_id}:unconfirmed:{started.isoformat()}"
        await outbox.enqueue(session, key, "unconfirmed", message, avatar_id=avatar_id)
        expired += 1
    return expired
