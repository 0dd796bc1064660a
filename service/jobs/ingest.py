"""One transaction per event: record it, apply the status change, enqueue the notification."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import Event, EventStatus, PayloadError, parse_body, parse_event
from service.jobs import ingest_sql as sql
from service.jobs.outcomes import render_outcome
from service.jobs.states import AvatarStatus, Change, transition
from service.outbox.messages import Message, row_values
from service.store.models import Avatar, utcnow

log = structlog.get_logger(__name__)


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
    event_row = {
        "e_dedupe_key": delivery.dedupe_key,
        "e_request_id": event.request_id,
        "e_avatar_id": target.id if target else None,
        "e_status": event.status.value,
        "e_outcome": outcome.value,
        "e_signed": delivery.signed,
        "e_client_ip": delivery.client_ip,
        "e_query": delivery.query,
        "e_headers": delivery.headers,
        "e_body": delivery.raw_body,
        "e_transition": change_text,
        "e_received_at": now,
        "e_applied_at": now if target else None,
    }
    avatar_id = target.id if target else None
    if target is not None and change is not None and _dialect(session) == "postgresql":
        # The common case on the production database, in one round trip.
        row = (
            await session.execute(
                sql.RECORD_AND_APPLY,
                {
                    **event_row,
                    **_change_row(target, event, change, now),
                    **_notification_row(target, change, now),
                },
            )
        ).one()
        if row[0] == 0:
            return Result(Outcome.DUPLICATE, event.request_id, avatar_id)
        _moved(target, event, change)
        return Result(outcome, event.request_id, avatar_id, change_text, row[1] > 0)
    insert_event, _ = sql.UPSERTS[_dialect(session)]
    inserted = await session.execute(insert_event, event_row)
    if inserted.scalar_one_or_none() is None:
        # Nothing else has been written in this transaction, so answering now changes nothing.
        return Result(Outcome.DUPLICATE, event.request_id, avatar_id)
    enqueued = False
    if target is not None and change is not None:
        enqueued = await _apply(session, target, event, change)
    return Result(outcome, event.request_id, avatar_id, change_text, enqueued)


def _is_news(event: Event) -> bool:
    # FAL finished but could not send the output: nothing changes yet, but it is not stale news.
    return event.status is EventStatus.RESULT_PENDING


async def _match(session: AsyncSession, event: Event) -> Target | None:
    """The avatar this event is about: by request id, else by an avatar id without one."""
    target = await _find(session, sql.TARGET_BY_REQUEST, event.request_id)
    if target is None:
        await _lock_request_id(session, event.request_id)
        # Again under the lock: a registration may have committed since the first look.
        target = await _find(session, sql.TARGET_BY_REQUEST, event.request_id)
    if target is None and event.avatar_id is not None:
        target = await _find(session, sql.TARGET_BY_ID, event.avatar_id)
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


def _change_row(target: Target, event: Event, change: Change, now: dt.datetime) -> dict[str, Any]:
    return {
        "target_id": target.id,
        "new_status": change.status.value,
        "new_progress": change.progress,
        "now": now,
        "new_request_id": event.request_id,
        "new_finished_at": now if change.status.is_terminal else None,
        "new_lora_url": event.lora_url,
        "new_config_url": event.config_url,
        "new_error_message": event.error_message,
    }


def _notification_row(target: Target, change: Change, now: dt.datetime) -> dict[str, Any]:
    """The outbox row for the avatar's final state (rendered now, in the owner's language).

    For a change that is not final the statement still needs every parameter, but writes
    no row (`terminal` is false), so nothing is rendered.
    """
    terminal = change.status.is_terminal
    kind = change.status.value
    rendered = (
        render_outcome(kind, target.id, target.name, target.training_type, target.language_code)
        if terminal
        else None
    )
    message = Message(
        chat_id=target.telegram_id,
        text=rendered.text if rendered else "",
        reply_markup=rendered.reply_markup if rendered else None,
    )
    # One message per avatar outcome: terminal states are final, so one per avatar.
    values = row_values(f"avatar:{target.id}:outcome", kind, message, avatar_id=target.id, now=now)
    return {"terminal": terminal, **{f"n_{name}": value for name, value in values.items()}}


def _moved(target: Target, event: Event, change: Change) -> None:
    target.status, target.progress = change.status, change.progress
    target.request_id = target.request_id or event.request_id


async def _apply(session: AsyncSession, target: Target, event: Event, change: Change) -> bool:
    """Write the avatar's new state; on an outcome, enqueue its notification. True if enqueued.

    Statement by statement: SQLite, and events applied by register_training.
    """
    now = utcnow()
    await session.execute(sql.UPDATE_AVATAR, _change_row(target, event, change, now))
    _moved(target, event, change)
    if not change.status.is_terminal:
        return False
    await session.execute(sql.DELETE_TRAINING_DATA, {"target_id": target.id})
    _, insert_notification = sql.UPSERTS[_dialect(session)]
    inserted = await session.execute(insert_notification, _notification_row(target, change, now))
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
    target = await _find(session, sql.TARGET_BY_REQUEST, request_id)
    assert target is not None, "register the avatar's request id first"
    waiting = await session.execute(
        select(sql.events.c.id, sql.events.c.body, sql.events.c.query)
        .where(
            sql.events.c.request_id == request_id,
            sql.events.c.outcome == Outcome.UNMATCHED.value,
        )
        .order_by(sql.events.c.id)
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
            update(sql.events)
            .where(sql.events.c.id == event_id)
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
