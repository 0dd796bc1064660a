"""The training kind: the avatar an event is about, and the writes that apply the event to it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, delete, func, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import Event
from service.jobs.kinds import ENQUEUE, lookups, read, registering, unclaimed, unmoved
from service.jobs.outcomes import render_outcome
from service.jobs.registry import JobKind, Plan
from service.jobs.states import AvatarStatus, Change, transition
from service.outbox.messages import Message, row_values
from service.store.chains import Step, StepContext
from service.store.direct import DirectConnection
from service.store.models import UTCDateTime
from service.store.tables import avatars, jobs, training_data, users


@dataclass(frozen=True)
class Target:
    """The avatar an event is about, as read under its row lock, with its owner's chat."""

    id: str
    user_id: int
    name: str
    training_type: str
    status: AvatarStatus
    progress: int
    request_id: str | None
    telegram_id: int
    language_code: str | None

    @property
    def recorded_as(self) -> dict[str, str | None]:
        return {"avatar_id": self.id, "generation_id": None}


_COLUMNS = (
    avatars.c.id,
    avatars.c.user_id,
    avatars.c.name,
    avatars.c.training_type,
    avatars.c.status,
    avatars.c.progress,
    jobs.c.request_id,
    users.c.telegram_id,
    users.c.language_code,
)
_READS = lookups(_COLUMNS, avatars, jobs.c.avatar_id == avatars.c.id, JobKind.TRAINING)


async def _find(session: AsyncSession | DirectConnection, query: Any, key: str) -> Target | None:
    row = await read(session, query, {"key": key})
    if row is None:
        return None
    return Target(**{**row, "status": AvatarStatus(row["status"])})


class Trainings:
    """The handler of the kind `training` (service.jobs.registry.Handler)."""

    async def by_request(
        self, session: AsyncSession | DirectConnection, request_id: str
    ) -> Target | None:
        """The avatar whose registered training is `request_id` (unlocked on a direct
        connection, whose write takes the lock in `unmoved`'s step)."""
        if isinstance(session, DirectConnection):
            return await _find(session, _READS.peek_by_request, request_id)
        return await _find(session, _READS.by_request, request_id)

    def unmoved(self, subject: Target) -> tuple[Step, dict[str, Any]]:
        seen = {"id": subject.id, "status": subject.status.value, "progress": subject.progress}
        return UNMOVED, seen

    async def by_hint(self, session: AsyncSession, event: Event) -> Target | None:
        return await _by_hint(session, event)

    def plan(self, subject: Target, event: Event, now: dt.datetime) -> Plan:
        return _plan(subject, event, now)


HANDLER = Trainings()


async def _by_hint(session: AsyncSession, event: Event) -> Target | None:
    """The avatar named by the event's `?avatar_id=` or comment, if it has no other training."""
    if event.avatar_id is None:
        return None
    return unclaimed(await _find(session, _READS.by_subject, event.avatar_id), event, "avatar")


def _change(ctx: StepContext) -> Any:
    p = ctx.param
    now = p("now", UTCDateTime())
    return (
        update(avatars)
        .where(avatars.c.id == p("id"), ctx.gate)
        .values(
            status=p("status"),
            progress=p("progress"),
            updated_at=now,
            training_started_at=func.coalesce(avatars.c.training_started_at, now),
            finished_at=func.coalesce(p("finished_at", UTCDateTime()), avatars.c.finished_at),
            lora_url=func.coalesce(p("lora_url", Text()), avatars.c.lora_url),
            config_url=func.coalesce(p("config_url", Text()), avatars.c.config_url),
            error_message=func.coalesce(p("error_message", Text()), avatars.c.error_message),
        )
        .returning(avatars.c.id)
    )


def _unzip(ctx: StepContext) -> Any:
    # FAL has the photos or will never need them again: the zip must not outlive the training.
    return (
        delete(training_data)
        .where(training_data.c.avatar_id == ctx.param("avatar_id"), ctx.gate)
        .returning(training_data.c.token)
    )


UNMOVED = unmoved(avatars, "status", "progress")
CHANGE, UNZIP = Step("changed", _change), Step("unzipped", _unzip)


def _plan(target: Target, event: Event, now: dt.datetime) -> Plan:
    """The writes that apply `event` to `target`, through the training's transition table."""
    change = transition(target.status, target.progress, event.status, event.progress)
    if change is None:
        return Plan()
    described = f"{target.status.value}->{change.status.value}:{change.progress}"
    steps: list[Step] = []
    params: dict[str, dict[str, Any]] = {}
    if target.request_id is None:
        step, values = registering(event, JobKind.TRAINING, target.user_id, target.id, None, now)
        steps.append(step)
        params[step.name] = values
    terminal = change.status.is_terminal
    steps.append(CHANGE)
    params[CHANGE.name] = {
        "id": target.id,
        "status": change.status.value,
        "progress": change.progress,
        "now": now,
        "finished_at": now if terminal else None,
        "lora_url": event.lora_url,
        "config_url": event.config_url,
        "error_message": event.error_message,
    }
    if terminal:
        steps += [UNZIP, ENQUEUE]
        params[UNZIP.name] = {"avatar_id": target.id}
        params[ENQUEUE.name] = _notification(target, change, now)
    return Plan(described, tuple(steps), params)


def _notification(target: Target, change: Change, now: dt.datetime) -> dict[str, Any]:
    """The outbox row for the avatar's final state, rendered now in the owner's language."""
    kind = change.status.value
    rendered = render_outcome(
        kind, target.id, target.name, target.training_type, target.language_code
    )
    message = Message(
        chat_id=target.telegram_id, text=rendered.text, reply_markup=rendered.reply_markup
    )
    # Terminal states are final, so one message per avatar outcome.
    return row_values(f"avatar:{target.id}:outcome", kind, message, avatar_id=target.id, now=now)
