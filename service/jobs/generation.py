"""The generation kind: the generation an event is about, and the writes that apply it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Text, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import Event, EventStatus
from service.jobs import generation_texts
from service.jobs.kinds import ENQUEUE, REGISTER, lookups, read, registering, unclaimed, unmoved
from service.jobs.registry import JobKind, Plan
from service.jobs.states import GenerationStatus, generation_transition
from service.outbox.messages import Message, row_values
from service.store.chains import Step, StepContext, write_chain
from service.store.direct import DirectConnection
from service.store.generations import WINDOW, photos_used_since
from service.store.models import UTCDateTime, utcnow
from service.store.tables import generations, jobs, users

# GENERATIONS_PER_DAY's default; the processes that apply events set theirs (`set_quota`).
DEFAULT_PER_DAY = 20


@dataclass(frozen=True)
class Target:
    """The generation an event is about, as read (under its row lock on a session)."""

    id: str
    user_id: int
    avatar_id: str
    status: GenerationStatus
    label: str
    # Photos of the owner's last 24 hours that count against the quota, this one included.
    photos_used: int
    request_id: str | None
    telegram_id: int
    language_code: str | None

    @property
    def recorded_as(self) -> dict[str, str | None]:
        return {"avatar_id": None, "generation_id": self.id}


_COLUMNS = (
    generations.c.id,
    generations.c.user_id,
    generations.c.avatar_id,
    generations.c.status,
    generations.c.label,
    photos_used_since(generations.c.user_id, bindparam("since", type_=UTCDateTime())).label(
        "photos_used"
    ),
    jobs.c.request_id,
    users.c.telegram_id,
    users.c.language_code,
)
_READS = lookups(
    _COLUMNS, generations, jobs.c.generation_id == generations.c.id, JobKind.GENERATION
)


async def _find(session: AsyncSession | DirectConnection, query: Any, key: str) -> Target | None:
    row = await read(session, query, {"key": key, "since": utcnow() - WINDOW})
    if row is None:
        return None
    status, used = GenerationStatus(row["status"]), int(row["photos_used"])
    return Target(**{**row, "status": status, "photos_used": used})


class Generations:
    """The handler of the kind `generation` (service.jobs.registry.Handler)."""

    def __init__(self, per_day: int = DEFAULT_PER_DAY) -> None:
        # Only for the "photos left today" of the outcome; the bot enforces the quota.
        self.per_day = per_day

    async def by_request(
        self, session: AsyncSession | DirectConnection, request_id: str
    ) -> Target | None:
        if isinstance(session, DirectConnection):
            return await _find(session, _READS.peek_by_request, request_id)
        return await _find(session, _READS.by_request, request_id)

    def unmoved(self, subject: Target) -> tuple[Step, dict[str, Any]]:
        return UNMOVED, {"id": subject.id, "status": subject.status.value}

    async def by_hint(self, session: AsyncSession, event: Event) -> Target | None:
        """The generation named by `?generation_id=`, if no other request is registered for it."""
        if event.generation_id is None:
            return None
        found = await _find(session, _READS.by_subject, event.generation_id)
        return unclaimed(found, event, "generation")

    def plan(self, subject: Target, event: Event, now: dt.datetime) -> Plan:
        return _plan(subject, event, now, self.per_day)


HANDLER = Generations()


def set_quota(per_day: int) -> None:
    """The GENERATIONS_PER_DAY of this process, for the photos left that outcomes tell."""
    HANDLER.per_day = per_day


def _change(ctx: StepContext) -> Any:
    p = ctx.param
    return (
        update(generations)
        .where(generations.c.id == p("id"), ctx.gate)
        .values(
            status=p("status"),
            updated_at=p("now", UTCDateTime()),
            finished_at=p("finished_at", UTCDateTime()),
            images=p("images", JSON(none_as_null=True)),
            seed=p("seed", Text()),
            error_message=p("error_message", Text()),
        )
        .returning(generations.c.id)
    )


UNMOVED, CHANGE = unmoved(generations, "status"), Step("changed", _change)


def _plan(target: Target, event: Event, now: dt.datetime, per_day: int) -> Plan:
    """The writes that apply `event` to `target`, through the generation's transition table."""
    status = event.status
    if status is EventStatus.COMPLETED and event.generated is None:
        # Finished without photos we can read: for the person, that is a failure.
        status = EventStatus.FAILED
    after = generation_transition(target.status, status)
    if after is None:
        return Plan()
    steps: list[Step] = []
    params: dict[str, dict[str, Any]] = {}
    if target.request_id is None:
        step, values = registering(
            event, JobKind.GENERATION, target.user_id, target.avatar_id, target.id, now
        )
        steps.append(step)
        params[step.name] = values
    result = event.generated if after is GenerationStatus.COMPLETED else None
    failed = after is GenerationStatus.FAILED
    steps.append(CHANGE)
    params[CHANGE.name] = {
        "id": target.id,
        "status": after.value,
        "now": now,
        "finished_at": now if after.is_terminal else None,
        "images": [vars(image) for image in result.images] if result else None,
        "seed": str(result.seed) if result and result.seed is not None else None,
        "error_message": (event.error_message or "FAL gave no reason") if failed else None,
    }
    if after.is_terminal:
        steps.append(ENQUEUE)
        message = _message(target, after, event, per_day)
        params[ENQUEUE.name] = row_values(
            f"generation:{target.id}:{after.value}",
            f"gen_{after.value}",
            message,
            avatar_id=target.avatar_id,
            generation_id=target.id,
            now=now,
        )
    return Plan(f"{target.status.value}->{after.value}", tuple(steps), params)


def _message(target: Target, after: GenerationStatus, event: Event, per_day: int) -> Message:
    """The one outbox message of the outcome, rendered now in the owner's language."""
    if after is GenerationStatus.FAILED:
        return generation_texts.failed(
            target.telegram_id, target.id, target.avatar_id, event.error_message,
            target.language_code,
        )  # fmt: skip
    assert event.generated is not None
    return generation_texts.completed(
        target.telegram_id,
        target.id,
        target.avatar_id,
        target.label,
        [image.url for image in event.generated.deliverable],
        event.generated.held_back,
        max(0, per_day - target.photos_used),
        target.language_code,
    )


INTERRUPTED = "the submission to FAL was interrupted before FAL accepted it"


async def fail_interrupted(session: AsyncSession, generation_id: str, now: dt.datetime) -> bool:
    """Fail a generation left `queued` with no job (the bot stopped mid-submission),
    with its one outbox row, as a failure from FAL would; False if it has moved on since."""
    target = await _find(session, _READS.by_subject, generation_id)
    if target is None or target.status is not GenerationStatus.QUEUED or target.request_id:
        return False
    event = Event(request_id="", status=EventStatus.FAILED, error_message=INTERRUPTED)
    plan = _plan(target, event, now, HANDLER.per_day)
    # No job to register: the chain starts at the generation's change.
    chain = tuple(step for step in plan.steps if step is not REGISTER)
    written = await write_chain(session, chain, plan.params)
    return written[CHANGE.name] > 0
