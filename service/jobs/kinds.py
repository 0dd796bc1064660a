"""What every kind of job shares: how its subject is read, its registry row, its outbox row."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from sqlalchemy import ColumnElement, Select, Table, and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import Event
from service.jobs.registry import ENQUEUED, JobKind
from service.outbox.messages import OUTBOX_CHANNEL
from service.store.chains import Step, StepContext
from service.store.direct import DirectConnection
from service.store.tables import jobs, notifications, users

log = structlog.get_logger("service.jobs.ingest")


class Hinted(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def request_id(self) -> str | None: ...


H = TypeVar("H", bound=Hinted)


@dataclass(frozen=True)
class Lookups:
    """A kind's reads of its subject (with its owner and its job), each keyed by `:key`."""

    # By the job's request id, unlocked: the direct path's write re-checks under the lock.
    peek_by_request: Select[Any]
    # The same, the subject's row locked: concurrent events for one subject queue on it.
    by_request: Select[Any]
    # By the subject's own id (an event's hint), locked, its job if it has one.
    by_subject: Select[Any]


def lookups(
    columns: tuple[ColumnElement[Any], ...],
    subject: Table,
    link: ColumnElement[bool],
    kind: JobKind,
) -> Lookups:
    """The reads of `subject`'s table, joined to its job by `link` and to its owner."""
    is_kind = jobs.c.kind == kind.value
    owner = users.c.id == subject.c.user_id
    peek = (
        select(*columns)
        .select_from(jobs.join(subject, link).join(users, owner))
        .where(jobs.c.request_id == bindparam("key"), is_kind)
    )
    by_subject = (
        select(*columns)
        .select_from(subject.join(users, owner).outerjoin(jobs, and_(link, is_kind)))
        .where(subject.c.id == bindparam("key"))
        .with_for_update(of=subject)
    )
    return Lookups(peek, peek.with_for_update(of=subject), by_subject)


async def read(
    session: AsyncSession | DirectConnection, query: Any, params: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The query's one row (or none), on a session or on the direct path's connection."""
    if isinstance(session, DirectConnection):
        return await session.first(query, params)
    found = (await session.execute(query, params)).mappings().one_or_none()
    return dict(found) if found is not None else None


def unclaimed(target: H | None, event: Event, subject: str) -> H | None:
    """The subject an event's hint named, unless another request is registered for it: the
    hint comes from a URL or a comment, a registered request id is the stronger fact."""
    if target is not None and target.request_id is not None:
        log.warning(
            f"webhook_{subject}_request_mismatch",
            request_id=event.request_id,
            **{f"{subject}_id": target.id, f"{subject}_request_id": target.request_id},
        )
        return None
    return target


JOB_COLUMNS = ("request_id", "kind", "user_id", "avatar_id", "generation_id", "submitted_at")


def _register(ctx: StepContext) -> Any:
    """The job, learnt from its first event (its subject was found by a hint)."""
    chosen = select(*(ctx.param(c, jobs.c[c].type) for c in JOB_COLUMNS)).where(ctx.gate)
    return (
        ctx.dialect.insert(jobs)
        .from_select(JOB_COLUMNS, chosen)
        .on_conflict_do_nothing()
        .returning(jobs.c.request_id)
    )


NOTIFICATION_COLUMNS = (
    "dedupe_key", "avatar_id", "generation_id", "chat_id", "kind", "message_type", "text",
    "media", "reply_markup", "state", "attempts", "next_attempt_at", "created_at", "updated_at",
)  # fmt: skip


def _enqueue(ctx: StepContext) -> Any:
    chosen = select(*(ctx.param(c, notifications.c[c].type) for c in NOTIFICATION_COLUMNS)).where(
        ctx.gate
    )
    return (
        ctx.dialect.insert(notifications)
        .from_select(NOTIFICATION_COLUMNS, chosen)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        # On PostgreSQL this also wakes the dispatcher on commit, only when a row went in.
        .returning(notifications.c.id, *ctx.dialect.wake(OUTBOX_CHANNEL))
    )


REGISTER, ENQUEUE = Step("registered", _register), Step(ENQUEUED, _enqueue)


def registering(
    event: Event,
    kind: JobKind,
    user_id: int,
    avatar_id: str,
    generation_id: str | None,
    now: dt.datetime,
) -> tuple[Step, dict[str, Any]]:
    """REGISTER with its parameters: the job its first event names, found by a hint."""
    values = {
        "request_id": event.request_id,
        "kind": kind.value,
        "user_id": user_id,
        "avatar_id": avatar_id,
        "generation_id": generation_id,
        "submitted_at": now,
    }
    return REGISTER, values


def unmoved(subject: Table, *columns: str) -> Step:
    """A guard for the direct path: the subject's row, locked, if its `columns` still hold
    what the plan was made from (the step's parameters `id` and each column's name)."""

    def build(ctx: StepContext) -> Any:
        same = [subject.c[name] == ctx.param(name) for name in ("id", *columns)]
        return select(subject.c.id).where(*same).with_for_update()

    return Step("unmoved", build)
