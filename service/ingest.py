"""One transaction per event: record it, apply the status change, enqueue the notification."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl

import structlog
from sqlalchemy import Table, Text, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import Event, PayloadError, parse_body, parse_event
from service.messages import render_outcome
from service.models import (
    Avatar,
    Notification,
    TrainingData,
    User,
    UTCDateTime,
    WebhookEvent,
    utcnow,
)
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


# The statements of the hot path are built once, with bound parameters: SQLAlchemy then reuses
# their compiled form and cache key instead of rebuilding both for every webhook.
_avatars = cast(Table, Avatar.__table__)
_users = cast(Table, User.__table__)
_events = cast(Table, WebhookEvent.__table__)
_notifications = cast(Table, Notification.__table__)
_training_data = cast(Table, TrainingData.__table__)

_TARGET = (
    select(
        _avatars.c.id,
        _avatars.c.name,
        _avatars.c.training_type,
        _avatars.c.status,
        _avatars.c.progress,
        _avatars.c.fal_request_id,
        _users.c.telegram_id,
        _users.c.language_code,
    )
    .select_from(_avatars.join(_users, _users.c.id == _avatars.c.user_id))
    # Concurrent events for one avatar queue here; only the avatar's row is locked.
    .with_for_update(of=_avatars)
)
_TARGET_BY_REQUEST = _TARGET.where(_avatars.c.fal_request_id == bindparam("key"))
_TARGET_BY_ID = _TARGET.where(_avatars.c.id == bindparam("key"))


def _text(name: str) -> Any:
    return bindparam(name, type_=Text)


_UPDATE_AVATAR = (
    update(_avatars)
    .where(_avatars.c.id == bindparam("target_id"))
    .values(
        status=bindparam("new_status"),
        progress=bindparam("new_progress"),
        updated_at=bindparam("now", type_=UTCDateTime),
        fal_request_id=func.coalesce(_avatars.c.fal_request_id, _text("new_request_id")),
        training_started_at=func.coalesce(
            _avatars.c.training_started_at, bindparam("now", type_=UTCDateTime)
        ),
        finished_at=func.coalesce(
            bindparam("new_finished_at", type_=UTCDateTime), _avatars.c.finished_at
        ),
        lora_url=func.coalesce(_text("new_lora_url"), _avatars.c.lora_url),
        config_url=func.coalesce(_text("new_config_url"), _avatars.c.config_url),
        error_message=func.coalesce(_text("new_error_message"), _avatars.c.error_message),
    )
)
_DELETE_TRAINING_DATA = delete(_training_data).where(
    _training_data.c.avatar_id == bindparam("target_id")
)


def _upsert_statements(dialect: str) -> tuple[Any, Any]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING for events and for the outbox."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    event = insert(_events).on_conflict_do_nothing(index_elements=["dedupe_key"])
    note = insert(_notifications).on_conflict_do_nothing(index_elements=["dedupe_key"])
    # On PostgreSQL the outbox insert also wakes the dispatcher on commit, in the same round
    # trip, and only when a row went in.
    wake = [func.pg_notify(OUTBOX_CHANNEL, "")] if dialect == "postgresql" else []
    return event.returning(_events.c.id), note.returning(_notifications.c.id, *wake)


_UPSERTS = {dialect: _upsert_statements(dialect) for dialect in ("postgresql", "sqlite")}


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


@dataclass
class Target:
    """The avatar an event is about, as read under its row lock, with its owner's chat."""

    id: str
    name: str
    training_type: str
    status: AvatarStatus
    progress: int
    request_id: str | None
    telegram_id: int
    language_code: str | None


async def _find(session: AsyncSession, query: Any, key: str) -> Target | None:
    row = (await session.execute(query, {"key": key})).one_or_none()
    if row is None:
        return None
    return Target(row[0], row[1], row[2], AvatarStatus(row[3]), row[4], row[5], row[6], row[7])


async def _lock_request_id(session: AsyncSession, request_id: str) -> None:
    """Serialise, on PostgreSQL, a webhook that found no avatar with the registration of that
    request id: whichever takes the lock second sees the other's commit, so the event is either
    matched or found by the registration, never neither. (SQLite's BEGIN IMMEDIATE serialises
    all writers anyway.) Matched webhooks, the common case, never take it."""
    if _dialect(session) == "postgresql":
        await session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(request_id, 0)))
        )


async def ingest(session: AsyncSession, delivery: Delivery) -> Result:
    """Record the delivery and apply it; call inside a transaction, answer after the commit."""
    event = delivery.event
    target = await _match(session, event)
    change = _plan(target, event) if target is not None else None
    change_text = _describe(target, change) if target is not None else None
    if target is None:
        outcome = Outcome.UNMATCHED
    else:
        outcome = Outcome.RECEIVED if change or _is_news(event) else Outcome.IGNORED
    now = utcnow()
    insert_event, _ = _UPSERTS[_dialect(session)]
    inserted = await session.execute(
        insert_event,
        {
            "dedupe_key": delivery.dedupe_key,
            "request_id": event.request_id,
            "avatar_id": target.id if target else None,
            "status": event.status.value,
            "outcome": outcome.value,
            "signed": delivery.signed,
            "client_ip": delivery.client_ip,
            "query": delivery.query,
            "headers": delivery.headers,
            "body": delivery.raw_body,
            "transition": change_text,
            "received_at": now,
            "applied_at": now if target else None,
        },
    )
    if inserted.scalar_one_or_none() is None:
        # Nothing else has been written in this transaction, so answering now changes nothing.
        return Result(Outcome.DUPLICATE, event.request_id, target.id if target else None)
    enqueued = False
    if target is not None and change is not None:
        enqueued = await _apply(session, target, event, change)
    return Result(outcome, event.request_id, target.id if target else None, change_text, enqueued)


def _is_news(event: Event) -> bool:
    # FAL finished but could not send the output: nothing changes yet, but it is not stale news.
    return event.status is EventStatus.RESULT_PENDING


async def _match(session: AsyncSession, event: Event) -> Target | None:
    """The avatar this event is about: by request id, else by an avatar id without one."""
    target = await _find(session, _TARGET_BY_REQUEST, event.request_id)
    if target is None:
        await _lock_request_id(session, event.request_id)
        # Again under the lock: a registration may have committed since the first look.
        target = await _find(session, _TARGET_BY_REQUEST, event.request_id)
    if target is None and event.avatar_id is not None:
        target = await _find(session, _TARGET_BY_ID, event.avatar_id)
        if target is not None and target.request_id is not None:
            # avatar_id is a hint from the URL or comment; a known request id is the stronger
            # fact.
            log.warning(
                "webhook_avatar_request_mismatch",
                request_id=event.request_id,
                avatar_id=target.id,
                avatar_request_id=target.request_id,
            )
            return None
    return target


def _plan(target: Target, event: Event) -> Change | None:
    return transition(target.status, target.progress, event.status, event.progress)


def _describe(target: Target, change: Change | None) -> str | None:
    """The transition as logged and stored with the event, e.g. `training->completed:100`."""
    return f"{target.status.value}->{change.status.value}:{change.progress}" if change else None


async def _apply(session: AsyncSession, target: Target, event: Event, change: Change) -> bool:
    """Write the avatar's new state; on an outcome, enqueue its notification. True if enqueued."""
    now = utcnow()
    terminal = change.status.is_terminal
    await session.execute(
        _UPDATE_AVATAR,
        {
            "target_id": target.id,
            "new_status": change.status.value,
            "new_progress": change.progress,
            "now": now,
            "new_request_id": event.request_id,
            "new_finished_at": now if terminal else None,
            "new_lora_url": event.lora_url,
            "new_config_url": event.config_url,
            "new_error_message": event.error_message,
        },
    )
    target.status, target.progress = change.status, change.progress
    target.request_id = target.request_id or event.request_id
    if not terminal:
        return False
    # FAL has the photos or will never need them again: the zip must not outlive the training.
    await session.execute(_DELETE_TRAINING_DATA, {"target_id": target.id})
    return await enqueue_outcome(session, target)


async def enqueue_outcome(session: AsyncSession, target: Target) -> bool:
    """Write the outbox row for the avatar's final state; a second call for it is a no-op."""
    kind = target.status.value
    rendered = render_outcome(
        kind, target.id, target.name, target.training_type, target.language_code
    )
    now = utcnow()
    _, insert_notification = _UPSERTS[_dialect(session)]
    inserted = await session.execute(
        insert_notification,
        {
            # One message per avatar outcome: terminal states are final, so one per avatar.
            "dedupe_key": f"avatar:{target.id}:outcome",
            "avatar_id": target.id,
            "chat_id": target.telegram_id,
            "kind": kind,
            "text": rendered.text,
            "reply_markup": rendered.reply_markup,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        },
    )
    return inserted.first() is not None


async def register_training(session: AsyncSession, avatar: Avatar) -> list[Result]:
    """Apply the events stored as unmatched for the avatar's new request id, oldest first.

    Call in the transaction that gave the avatar its request id (`avatars attach`, the bot);
    `avatar` is refreshed afterwards, as the events may have moved it on.
    """
    request_id = avatar.fal_request_id
    assert request_id is not None, "register the avatar's request id first"
    await session.flush()
    await _lock_request_id(session, request_id)
    target = await _find(session, _TARGET_BY_REQUEST, request_id)
    assert target is not None, "register the avatar's request id first"
    waiting = await session.execute(
        select(_events.c.id, _events.c.body, _events.c.query)
        .where(
            _events.c.request_id == request_id,
            _events.c.outcome == Outcome.UNMATCHED.value,
        )
        .order_by(_events.c.id)
    )
    results = []
    for event_id, body, query in waiting.all():
        try:
            event = parse_event(parse_body(body), dict(parse_qsl(query)), request_id)
        except PayloadError:
            # It was parsed once before it was stored; only a code change can make this fail.
            log.exception("stored_event_unparseable", event_id=event_id)
            continue
        change = _plan(target, event)
        change_text = _describe(target, change)
        enqueued = await _apply(session, target, event, change) if change else False
        outcome = Outcome.RECEIVED if change else Outcome.IGNORED
        await session.execute(
            update(_events)
            .where(_events.c.id == event_id)
            .values(
                avatar_id=target.id,
                outcome=outcome.value,
                transition=change_text,
                applied_at=utcnow(),
            )
        )
        results.append(Result(outcome, request_id, target.id, change_text, enqueued))
    if results:
        await session.refresh(avatar)
    return results
