"""Operator commands on avatars and notifications: the work behind `python -m service ...`."""

from __future__ import annotations

from typing import Any, TypeVarTuple

from sqlalchemy import Row, Select, and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.jobs import registry
from service.jobs.ingest import register
from service.jobs.states import AvatarStatus
from service.outbox.states import REQUEUEABLE, NotificationState
from service.store.models import Avatar, FalJob, Notification, User, utcnow
from service.store.users import ensure_user

Ts = TypeVarTuple("Ts")


class NotFound(LookupError):
    """No such avatar or notification."""


class Conflict(ValueError):
    """The request contradicts what is stored (for example, a request id already in use)."""


def avatar_json(avatar: Avatar, telegram_id: int, job: FalJob | None) -> dict[str, Any]:
    return {
        "id": avatar.id,
        "name": avatar.name,
        "telegram_id": telegram_id,
        "training_type": avatar.training_type,
        "status": avatar.status,
        "progress": avatar.progress,
        "fal_request_id": job.request_id if job else None,
        "lora_url": avatar.lora_url,
        "config_url": avatar.config_url,
        "error_message": avatar.error_message,
        "created_at": avatar.created_at.isoformat(),
        "updated_at": avatar.updated_at.isoformat(),
    }


async def attach(
    session: AsyncSession, telegram_id: int, name: str, training_type: str, request_id: str
) -> dict[str, Any]:
    """Register a training started elsewhere, then apply any events that arrived before it."""
    taken = await registry.by_request(session, request_id)
    if taken is not None:
        raise Conflict(f"request id {request_id} already belongs to avatar {taken.avatar_id}")
    user = await ensure_user(session, telegram_id)
    now = utcnow()
    avatar = Avatar(
        user_id=user.id,
        name=name,
        training_type=training_type,
        status=AvatarStatus.TRAINING.value,
        progress=0,
        training_started_at=now,
    )
    session.add(avatar)
    await session.flush()
    job = FalJob(
        request_id=request_id,
        kind=registry.JobKind.TRAINING.value,
        user_id=user.id,
        avatar_id=avatar.id,
        submitted_at=now,
    )
    await register(session, job)
    await session.refresh(avatar)
    return avatar_json(avatar, telegram_id, job)


def with_owner_and_job(
    subject: Any, job_of: Any, kind: registry.JobKind
) -> Select[Any, int, FalJob]:
    """Rows of `subject` (Avatar, Generation) with its owner's Telegram id and its FAL job of
    `kind` (None if not submitted), the job found by its column `job_of` naming the subject."""
    return (
        select(subject, User.telegram_id, FalJob)
        .join(User, User.id == subject.user_id)
        .outerjoin(FalJob, and_(job_of == subject.id, FalJob.kind == kind.value))
    )


async def one(session: AsyncSession, query: Select[*Ts], missing: str) -> Row[*Ts]:
    """The one row `query` finds; NotFound saying `missing` when there is none."""
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise NotFound(missing)
    return row


def _with_owner_and_job() -> Select[Any, int, FalJob]:
    return with_owner_and_job(Avatar, FalJob.avatar_id, registry.JobKind.TRAINING)


async def show(session: AsyncSession, request_id: str) -> dict[str, Any]:
    query = _with_owner_and_job().where(FalJob.request_id == request_id)
    avatar, telegram_id, job = await one(session, query, f"no avatar with request id {request_id}")
    return avatar_json(avatar, telegram_id, job)


async def list_avatars(session: AsyncSession, status: str | None) -> list[dict[str, Any]]:
    query = _with_owner_and_job()
    if status:
        query = query.where(Avatar.status == status)
    rows = await session.execute(query.order_by(Avatar.created_at))
    return [avatar_json(avatar, telegram_id, job) for avatar, telegram_id, job in rows]


def notification_json(n: Notification) -> dict[str, Any]:
    return {
        "id": n.id,
        "avatar_id": n.avatar_id,
        "chat_id": n.chat_id,
        "kind": n.kind,
        "state": n.state,
        "attempts": n.attempts,
        "next_attempt_at": n.next_attempt_at.isoformat(),
        "last_error": n.last_error,
        "created_at": n.created_at.isoformat(),
        "sent_at": n.sent_at.isoformat() if n.sent_at else None,
    }


async def list_notifications(session: AsyncSession, state: str | None) -> list[dict[str, Any]]:
    query = select(Notification).order_by(Notification.id)
    if state:
        query = query.where(Notification.state == state)
    return [notification_json(n) for n in (await session.execute(query)).scalars()]


async def retry_notifications(
    session: AsyncSession,
    notification_id: int | None,
    all_failed: bool,
    all_uncertain: bool = False,
) -> int:
    """Put notifications back in the queue (one, every failed or every uncertain one); returns
    how many were re-queued."""
    query = update(Notification).values(
        state=NotificationState.PENDING.value,
        attempts=0,
        next_attempt_at=utcnow(),
        lease_until=None,
        claimed_by=None,
    )
    if all_failed or all_uncertain:
        every = NotificationState.FAILED if all_failed else NotificationState.UNCERTAIN
        query = query.where(Notification.state == every)
    else:
        found = await session.get(Notification, notification_id)
        if found is None:
            raise NotFound(f"no notification {notification_id}")
        # Sent notifications are never re-queued: that would be a deliberate duplicate.
        if found.state not in REQUEUEABLE:
            raise Conflict(
                f"notification {notification_id} is {found.state}; only "
                f"{', '.join(REQUEUEABLE)} can be re-queued"
            )
        query = query.where(Notification.id == notification_id)
    result = await session.execute(query)
    return int(result.rowcount)  # type: ignore[attr-defined]
