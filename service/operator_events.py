"""Operator commands on stored webhook events: their arguments; list, show, replay via ingest."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.fal.payload import PayloadError, parse_body, parse_event
from service.jobs.ingest import Delivery, Outcome, Result, ingest
from service.jobs.registry import Source
from service.operator import Conflict, NotFound
from service.store.engine import run_transaction
from service.store.models import Avatar, FalJob, WebhookEvent, utcnow

# The kept header of an operator's replay that names the event it replayed.
REPLAY_OF = "x-aibots-replay-of"
# Duplicates are answered 200 and never stored: the unique dedupe key refuses the row.
NOT_STORED = (Outcome.DUPLICATE.value,)
_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """`30m`, `2h`, `3d`, `1w` ago, or an ISO date or date-time (UTC unless it says)."""
    relative = _RELATIVE.match(text.strip().lower())
    if relative:
        amount, unit = relative.groups()
        return (now or utcnow()) - dt.timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected 30m, 2h, 3d, 1w or an ISO date/time, got {text!r}") from None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def add_commands(commands: Any) -> None:
    """`events list | show | replay`, as subcommands of `python -m service`."""
    events = commands.add_parser("events", help="inspect or replay stored webhook events")
    actions = events.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="stored events, newest first")
    listing.add_argument(
        "--outcome",
        choices=("received", "ignored", "unmatched", "duplicate"),
        help="duplicates are answered 200 but never stored, so 'duplicate' lists nothing",
    )
    listing.add_argument("--request-id")
    listing.add_argument(
        "--since", type=_since, help="30m, 2h, 3d, 1w ago, or an ISO date/time (UTC unless given)"
    )
    listing.add_argument("--limit", type=int, default=100, help="at most N (default 100; 0: all)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = actions.add_parser("show", help="one event: headers, raw body, what it changed")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    replay = actions.add_parser("replay", help="apply stored events again (idempotent)")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=int)
    target.add_argument("--unmatched", action="store_true", help="every unmatched event")


def _since(text: str) -> dt.datetime:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def replay_key(dedupe_key: str) -> str:
    """The dedupe key of the replay of the event whose key is `dedupe_key`: at most one
    replay of an event is ever applied, however often or concurrently it is asked for."""
    return hashlib.sha256(b"replay\n" + dedupe_key.encode()).hexdigest()


@dataclass(frozen=True)
class _Replay(Delivery):
    """A stored event delivered again by an operator, under a key of its own."""

    replayed_key: str = ""

    @property
    def dedupe_key(self) -> str:
        return replay_key(self.replayed_key)


_LISTED = (
    WebhookEvent.id, WebhookEvent.received_at, WebhookEvent.source, WebhookEvent.outcome,
    WebhookEvent.status, WebhookEvent.request_id, WebhookEvent.avatar_id,
    WebhookEvent.transition, WebhookEvent.signed, WebhookEvent.client_ip,
    WebhookEvent.applied_at, func.length(WebhookEvent.body).label("body_bytes"),
)  # fmt: skip


def _summary(row: Any) -> dict[str, Any]:
    values = dict(row._mapping)
    for name in ("received_at", "applied_at"):
        values[name] = values[name].isoformat() if values[name] else None
    return values


async def list_events(
    session: AsyncSession,
    outcome: str | None,
    request_id: str | None,
    since: dt.datetime | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Stored events, newest first; `--outcome duplicate` finds none (they are not stored)."""
    if outcome in NOT_STORED:
        return []
    query = select(*_LISTED).order_by(WebhookEvent.id.desc())
    if outcome:
        query = query.where(WebhookEvent.outcome == outcome)
    if request_id:
        query = query.where(WebhookEvent.request_id == request_id)
    if since:
        query = query.where(WebhookEvent.received_at >= since)
    if limit > 0:
        query = query.limit(limit)
    return [_summary(row) for row in await session.execute(query)]


async def show_event(session: AsyncSession, event_id: int) -> dict[str, Any]:
    """One event with its kept headers, its raw body, and the job and avatar it concerns."""
    row = await session.get(WebhookEvent, event_id)
    if row is None:
        raise NotFound(f"no event {event_id}")
    summary = (await session.execute(select(*_LISTED).where(WebhookEvent.id == event_id))).one()
    shown = _summary(summary)
    try:
        shown.update(body=row.body.decode(), body_encoding="utf-8")
    except UnicodeDecodeError:
        shown.update(body=base64.b64encode(row.body).decode(), body_encoding="base64")
    job = await session.get(FalJob, row.request_id)
    avatar_id = row.avatar_id or (job.avatar_id if job else None)
    avatar = await session.get(Avatar, avatar_id) if avatar_id else None
    replayed_by = await _id_of(session, replay_key(row.dedupe_key))
    shown.update(
        query=row.query,
        headers=row.headers,
        job={"request_id": job.request_id, "kind": job.kind} if job else None,
        avatar={"id": avatar.id, "status": avatar.status, "progress": avatar.progress}
        if avatar
        else None,
        replay_of=int(row.headers[REPLAY_OF]) if REPLAY_OF in row.headers else None,
        replayed_by=replayed_by,
    )
    return shown


async def _id_of(session: AsyncSession, dedupe_key: str) -> int | None:
    found = select(WebhookEvent.id).where(WebhookEvent.dedupe_key == dedupe_key)
    return (await session.execute(found)).scalar_one_or_none()


async def unmatched_ids(session: AsyncSession) -> list[int]:
    found = select(WebhookEvent.id).where(WebhookEvent.outcome == Outcome.UNMATCHED.value)
    return list((await session.execute(found.order_by(WebhookEvent.id))).scalars())


@dataclass(frozen=True)
class Replayed:
    """What a replay did: `applied` is False when it changed nothing (and wrote nothing)."""

    applied: bool
    line: str
    failed: bool = False


async def replay(session: AsyncSession, event_id: int) -> Replayed:
    """Deliver a stored event again through `ingest`, as the operator; call in a transaction.

    Applied, it is recorded as a new event (source `operator`, with `x-aibots-replay-of`),
    and an unmatched original is marked matched (`ignored`: its replay made the change).
    Otherwise nothing is written: a replay of an applied event is harmless.
    """
    row = await session.get(WebhookEvent, event_id)
    if row is None:
        raise NotFound(f"no event {event_id}")
    try:
        signed_id = row.headers.get("x-fal-webhook-request-id")
        event = parse_event(parse_body(row.body), dict(parse_qsl(row.query)), signed_id)
    except PayloadError as exc:
        problem = f"its body does not parse: {exc}"
        raise Conflict(f"event {event_id} cannot be replayed: {problem}") from None
    headers = {**row.headers, REPLAY_OF: str(row.id)}
    delivery = _Replay(
        row.body, event, headers, row.query, None, row.signed, Source.OPERATOR, row.dedupe_key
    )
    attempt = await session.begin_nested()
    try:
        result = await ingest(session, delivery)
    except IntegrityError as exc:
        await attempt.rollback()
        raise Conflict(f"event {event_id} contradicts the stored state: {exc.orig}") from None
    if result.transition is None:
        # Nothing changed (or it was replayed before): keep no trace of the attempt.
        await attempt.rollback()
        return Replayed(False, await _why_nothing(session, event_id, result, row))
    await attempt.commit()
    if row.outcome == Outcome.UNMATCHED.value:
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == row.id)
            .values(
                avatar_id=result.avatar_id,
                generation_id=result.generation_id,
                outcome=Outcome.IGNORED.value,
                applied_at=utcnow(),
            )
        )
    replay_id = await _id_of(session, delivery.dedupe_key)
    note = ", notification enqueued" if result.notification_enqueued else ""
    subject = (
        f"generation {result.generation_id}"
        if result.generation_id
        else f"avatar {result.avatar_id}"
    )
    return Replayed(
        True, f"event {event_id}: applied as event {replay_id}: {subject} {result.transition}{note}"
    )


async def _why_nothing(
    session: AsyncSession, event_id: int, result: Result, row: WebhookEvent
) -> str:
    if result.outcome is Outcome.DUPLICATE:
        earlier = await _id_of(session, replay_key(row.dedupe_key))
        return f"event {event_id}: already replayed as event {earlier}; nothing changed"
    if result.outcome is Outcome.UNMATCHED:
        return (
            f"event {event_id}: still unmatched: no job has request id {row.request_id}; "
            "nothing changed"
        )
    avatar = await session.get(Avatar, result.avatar_id) if result.avatar_id else None
    # Applied before, or older news than the avatar's state: the transition table says no.
    now = f", avatar {avatar.id} is {avatar.status} {avatar.progress}%" if avatar else ""
    return f"event {event_id}: nothing to apply{now}; nothing changed"


async def replay_each(sessions: async_sessionmaker[AsyncSession], ids: list[int]) -> list[Replayed]:
    """Replay each event in a transaction of its own: one that fails does not stop the rest."""
    done = []
    for event_id in ids:
        try:
            work = functools.partial(replay, event_id=event_id)
            done.append(await run_transaction(sessions, work))
        except (Conflict, NotFound) as exc:
            # An unknown id, or one pruned since the list was read; the others still go.
            done.append(Replayed(False, f"error: {exc}", failed=True))
    return done


TABLE_COLUMNS = (
    "id", "received_at", "source", "outcome", "status", "request_id", "avatar_id", "transition",
)  # fmt: skip


SHOWN_COLUMNS = ("signed", "client_ip", "applied_at", "query", "replay_of", "replayed_by")


def render(shown: dict[str, Any]) -> str:
    """`events show` as text: the fields, the kept headers, then the body as stored."""
    lines = [
        f"{name}: {shown[name] if shown[name] is not None else '-'}"
        for name in (*TABLE_COLUMNS, *SHOWN_COLUMNS)
    ]
    job, avatar = shown["job"], shown["avatar"]
    lines.append(f"job: {job['kind']} {job['request_id']}" if job else "job: - (none registered)")
    if avatar:
        lines.append(f"avatar now: {avatar['id']} {avatar['status']} {avatar['progress']}%")
    lines.append("headers:")
    lines += [f"  {name}: {value}" for name, value in sorted(shown["headers"].items())]
    lines.append(f"body ({shown['body_bytes']} bytes, {shown['body_encoding']}):")
    lines.append(shown["body"])
    return "\n".join(lines)
