"""One transaction per event: record it, apply the status change, enqueue the notification."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import Event, PayloadError, parse_body, parse_event
from service.messages import render_outcome
from service.models import Avatar, Notification, TrainingData, User, WebhookEvent, utcnow
from service.states import AvatarStatus, Change, EventStatus, transition

log = structlog.get_logger(__name__)

# Woken on commit; the dispatcher LISTENs on it (PostgreSQL only; SQLite polls).
OUTBOX_CHANNEL = "outbox"


class Outcome(enum.StrEnum):
    RECEIVED = "received"
    DUPLICATE = "duplicate"
    UNMATCHED = "unmatched"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Delivery:
    """A webhook as it arrived, already verified and parsed."""

    raw_body: bytes
    event: Event
    headers: dict[str, str]
    query: str
    client_ip: str | None
    signed: bool

    @property
    def dedupe_key(self) -> str:
        # A repeat is the same request id with the same bytes, whatever its headers say.
        digest = hashlib.sha256(self.event.request_id.encode() + b"\n" + self.raw_body)
        return digest.hexdigest()


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    request_id: str
    avatar_id: str | None = None
    transition: str | None = None
    notification_enqueued: bool = False


def _insert(session: AsyncSession, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def _lock_request_id(session: AsyncSession, request_id: str) -> None:
    """Serialise, on PostgreSQL, a webhook that found no avatar with the registration of that
    request id: whichever takes the lock second sees the other's commit, so the event is either
    matched or found by the registration, never neither. (SQLite's BEGIN IMMEDIATE serialises
    all writers anyway.) Matched webhooks, the common case, never take it."""
    if _is_postgres(session):
        await session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(request_id, 0)))
        )


async def ingest(session: AsyncSession, delivery: Delivery) -> Result:
    """Record the delivery and apply it; call inside a transaction, answer after the commit."""
    event = delivery.event
    matched = await _match(session, event)
    avatar, owner = matched if matched else (None, None)
    change = _plan(avatar, event) if avatar is not None else None
    change_text = _describe(avatar, change) if avatar is not None else None
    if avatar is None:
        outcome = Outcome.UNMATCHED
    else:
        outcome = Outcome.RECEIVED if change or _is_news(event) else Outcome.IGNORED
    inserted = await session.execute(
        _insert(session, WebhookEvent)
        .values(
            dedupe_key=delivery.dedupe_key,
            request_id=event.request_id,
            avatar_id=avatar.id if avatar else None,
            status=event.status.value,
            outcome=outcome.value,
            signed=delivery.signed,
            client_ip=delivery.client_ip,
            query=delivery.query,
            headers=delivery.headers,
            body=delivery.raw_body,
            transition=change_text,
            received_at=utcnow(),
            applied_at=utcnow() if avatar else None,
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(WebhookEvent.id)
    )
    if inserted.scalar_one_or_none() is None:
        # Nothing else has been written in this transaction, so answering now changes nothing.
        return Result(Outcome.DUPLICATE, event.request_id, avatar.id if avatar else None)
    enqueued = False
    if avatar is not None and owner is not None and change is not None:
        enqueued = await _apply(session, avatar, owner, event, change)
    return Result(outcome, event.request_id, avatar.id if avatar else None, change_text, enqueued)


def _is_news(event: Event) -> bool:
    # FAL finished but could not send the output: nothing changes yet, but it is not stale news.
    return event.status is EventStatus.RESULT_PENDING


class Owner(NamedTuple):
    telegram_id: int
    language_code: str | None


def _with_owner() -> Any:
    # The owner comes with the avatar (one round trip); only the avatar's row is locked.
    return (
        select(Avatar, User.telegram_id, User.language_code)
        .join(User, User.id == Avatar.user_id)
        .with_for_update(of=Avatar)
    )


async def _match(session: AsyncSession, event: Event) -> tuple[Avatar, Owner] | None:
    """The avatar this event is about: by request id, else by an avatar id without one."""
    query = _with_owner().where(Avatar.fal_request_id == event.request_id)
    row = (await session.execute(query)).one_or_none()
    if row is None:
        await _lock_request_id(session, event.request_id)
        # Again under the lock: a registration may have committed since the first look.
        row = (await session.execute(query)).one_or_none()
    if row is None and event.avatar_id is not None:
        by_id = _with_owner().where(Avatar.id == event.avatar_id)
        row = (await session.execute(by_id)).one_or_none()
    if row is None:
        return None
    avatar, owner = row[0], Owner(row[1], row[2])
    if avatar.fal_request_id is None:
        avatar.fal_request_id = event.request_id
    elif avatar.fal_request_id != event.request_id:
        # avatar_id is a hint from the URL or comment; a known request id is the stronger fact.
        log.warning(
            "webhook_avatar_request_mismatch",
            request_id=event.request_id,
            avatar_id=avatar.id,
            avatar_request_id=avatar.fal_request_id,
        )
        return None
    return avatar, owner


def _plan(avatar: Avatar, event: Event) -> Change | None:
    return transition(AvatarStatus(avatar.status), avatar.progress, event.status, event.progress)


def _describe(avatar: Avatar, change: Change | None) -> str | None:
    """The transition as logged and stored with the event, e.g. `training->completed:100`."""
    return f"{avatar.status}->{change.status.value}:{change.progress}" if change else None


async def _apply(
    session: AsyncSession, avatar: Avatar, owner: Owner, event: Event, change: Change
) -> bool:
    """Write the avatar's new state; on an outcome, enqueue its notification. True if enqueued."""
    now = utcnow()
    avatar.status = change.status.value
    avatar.progress = change.progress
    avatar.updated_at = now
    if avatar.training_started_at is None:
        avatar.training_started_at = now
    if event.lora_url:
        avatar.lora_url = event.lora_url
    if event.config_url:
        avatar.config_url = event.config_url
    if event.error_message:
        avatar.error_message = event.error_message
    if not change.status.is_terminal:
        await session.flush()
        return False
    avatar.finished_at = now
    await session.flush()
    # FAL has the photos or will never need them again: the zip must not outlive the training.
    await session.execute(delete(TrainingData).where(TrainingData.avatar_id == avatar.id))
    return await enqueue_outcome(session, avatar, owner)


async def enqueue_outcome(session: AsyncSession, avatar: Avatar, owner: Owner) -> bool:
    """Write the outbox row for the avatar's final state; a second call for it is a no-op."""
    rendered = render_outcome(
        avatar.status, avatar.id, avatar.name, avatar.training_type, owner.language_code
    )
    inserted = await session.execute(
        _insert(session, Notification)
        .values(
            # One message per avatar outcome: terminal states are final, so one per avatar.
            dedupe_key=f"avatar:{avatar.id}:outcome",
            avatar_id=avatar.id,
            chat_id=owner.telegram_id,
            kind=avatar.status,
            text=rendered.text,
            reply_markup=rendered.reply_markup,
            state="pending",
            attempts=0,
            next_attempt_at=utcnow(),
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(
            Notification.id,
            # Wakes the dispatcher on commit, in the same round trip, only if a row went in.
            *([func.pg_notify(OUTBOX_CHANNEL, "")] if _is_postgres(session) else []),
        )
    )
    return inserted.first() is not None


async def register_training(session: AsyncSession, avatar: Avatar) -> list[Result]:
    """Apply the events stored as unmatched for this avatar's request id, oldest first."""
    assert avatar.fal_request_id is not None
    await _lock_request_id(session, avatar.fal_request_id)
    user = await session.get_one(User, avatar.user_id)
    owner = Owner(user.telegram_id, user.language_code)
    waiting = await session.execute(
        select(WebhookEvent)
        .where(
            WebhookEvent.request_id == avatar.fal_request_id,
            WebhookEvent.outcome == Outcome.UNMATCHED.value,
        )
        .order_by(WebhookEvent.id)
    )
    results = []
    for stored in waiting.scalars():
        try:
            event = parse_event(
                parse_body(stored.body), dict(parse_qsl(stored.query)), stored.request_id
            )
        except PayloadError:
            # It was parsed once before it was stored; only a code change can make this fail.
            log.exception("stored_event_unparseable", event_id=stored.id)
            continue
        change = _plan(avatar, event)
        change_text = _describe(avatar, change)
        enqueued = await _apply(session, avatar, owner, event, change) if change else False
        stored.avatar_id = avatar.id
        stored.outcome = (Outcome.RECEIVED if change_text else Outcome.IGNORED).value
        stored.transition = change_text
        stored.applied_at = utcnow()
        results.append(
            Result(Outcome(stored.outcome), event.request_id, avatar.id, change_text, enqueued)
        )
    return results
