"""One transaction per event: record it, match its FAL job, let the job's kind apply it.

The webhook, the bot's reconciler and its cancel button all change a job's state through
`ingest`, each saying where the event came from; `register` adds a job to the registry and
applies the events that arrived before it.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import Event, EventStatus, PayloadError, parse_body, parse_event
from service.jobs import generation, training
from service.jobs.registry import ENQUEUED, Handler, JobKind, Plan, Source, Subject
from service.store.chains import Chain, Step, StepContext, write_chain, write_guarded
from service.store.dialect import dialect_of
from service.store.direct import DirectConnection
from service.store.models import FalJob, UTCDateTime, utcnow
from service.store.tables import events

log = structlog.get_logger(__name__)


class Outcome(enum.StrEnum):
    RECEIVED = "received"
    DUPLICATE = "duplicate"
    UNMATCHED = "unmatched"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Delivery:
    """An event with the raw record of how it reached us (a webhook: verified and parsed)."""

    raw_body: bytes
    event: Event
    headers: dict[str, str]
    query: str
    client_ip: str | None
    signed: bool
    source: Source = Source.WEBHOOK

    @classmethod
    def learnt(cls, event: Event, source: Source, evidence: dict[str, Any]) -> Delivery:
        """An event we learnt ourselves; `evidence` (what FAL answered) is its raw record."""
        body = json.dumps(evidence, sort_keys=True, separators=(",", ":")).encode()
        return cls(body, event, {}, "", None, signed=False, source=source)

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
    generation_id: str | None = None


EVENT_COLUMNS = (
    "dedupe_key", "request_id", "avatar_id", "generation_id", "status", "outcome", "signed",
    "client_ip", "query", "headers", "body", "transition", "source", "received_at",
    "applied_at",
)  # fmt: skip


def _record(ctx: StepContext) -> Any:
    chosen = select(*(ctx.param(c, events.c[c].type) for c in EVENT_COLUMNS)).where(ctx.gate)
    return (
        ctx.dialect.insert(events)
        .from_select(EVENT_COLUMNS, chosen)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(events.c.id)
    )


def _rematch(ctx: StepContext) -> Any:
    """A stored unmatched event, now applied to the job registered for it."""
    p = ctx.param
    return (
        update(events)
        .where(events.c.id == p("id"))
        .values(
            avatar_id=p("avatar_id"),
            generation_id=p("generation_id"),
            outcome=p("outcome"),
            transition=p("transition"),
            applied_at=p("applied_at", UTCDateTime()),
        )
        .returning(events.c.id)
    )


RECORD, REMATCH = Step("recorded", _record), Step("rematched", _rematch)

# Each kind of job and its handler; an event goes to the kind whose registry row it matches.
HANDLERS: dict[JobKind, Handler[Any]] = {
    JobKind.TRAINING: training.HANDLER,
    JobKind.GENERATION: generation.HANDLER,
}


async def ingest(session: AsyncSession, delivery: Delivery) -> Result:
    """Record the event and apply it to its job; call inside a transaction, answer after it."""
    event = delivery.event
    found = await _match(session, event)
    chain, params, result = _prepare(delivery, found)
    # On PostgreSQL the event, the change and the outbox row go as one statement.
    written = await write_chain(session, chain, params)
    return _answer(result, written)


# How often the direct path reads again when another event moved the job's subject between
# its read and its write; then the session path (which waits on the row lock) takes over.
_DIRECT_TRIES = 3


async def ingest_matched(db: DirectConnection, delivery: Delivery) -> Result | None:
    """The webhook's common case on the driver's connection: the event's job is registered.

    A read (no lock), the plan, then one statement that locks the subject, checks it has not
    moved since the read, and writes the chain: its own transaction, committed before it
    answers. None when no job is registered for the request id (or the subject kept moving):
    the caller then runs `ingest` on a session, where the unmatched path takes the
    registration lock.
    """
    for _ in range(_DIRECT_TRIES):
        found = await _by_request(db, delivery.event.request_id)
        if found is None:
            return None
        handler, subject = found
        chain, params, planned = _prepare(delivery, found)
        guard, unmoved = handler.unmoved(subject)
        written = await write_guarded(db, guard, chain, {**params, guard.name: unmoved})
        if written[guard.name]:
            return _answer(planned, written)
    return None


def _prepare(
    delivery: Delivery, found: tuple[Handler[Any], Subject] | None
) -> tuple[Chain, dict[str, dict[str, Any]], Result]:
    """The writes for the event and its matched job (or none), and the answer if they all go."""
    event = delivery.event
    now = utcnow()
    target: Subject | None = None
    if found is None:
        plan = Plan()
        outcome = Outcome.UNMATCHED
    else:
        handler, target = found
        plan = handler.plan(target, event, now)
        outcome = Outcome.RECEIVED if plan.transition or _is_news(event) else Outcome.IGNORED
    subject: dict[str, str | None] = {"avatar_id": None, "generation_id": None}
    if target is not None:
        subject = target.recorded_as
    record = {
        "dedupe_key": delivery.dedupe_key,
        "request_id": event.request_id,
        **subject,
        "status": event.status.value,
        "outcome": outcome.value,
        "signed": delivery.signed,
        "client_ip": delivery.client_ip,
        "query": delivery.query,
        "headers": delivery.headers,
        "body": delivery.raw_body,
        "transition": plan.transition,
        "source": delivery.source.value,
        "received_at": now,
        "applied_at": now if target else None,
    }
    result = _result(outcome, event.request_id, subject, plan)
    return (RECORD, *plan.steps), {RECORD.name: record, **plan.params}, result


def _result(
    outcome: Outcome,
    request_id: str,
    subject: dict[str, str | None],
    plan: Plan,
    enqueued: bool = False,
) -> Result:
    avatar_id, generation_id = subject["avatar_id"], subject["generation_id"]
    return Result(outcome, request_id, avatar_id, plan.transition, enqueued, generation_id)


def _answer(planned: Result, written: dict[str, int]) -> Result:
    if not written[RECORD.name]:
        # Nothing else has been written in this transaction, so answering now changes nothing.
        return replace(planned, outcome=Outcome.DUPLICATE, transition=None)
    enqueued = written.get(ENQUEUED, 0) > 0
    return replace(planned, notification_enqueued=enqueued)


def _is_news(event: Event) -> bool:
    # FAL finished but could not send the output: nothing changes yet, but it is not stale news.
    return event.status is EventStatus.RESULT_PENDING


async def _match(session: AsyncSession, event: Event) -> tuple[Handler[Any], Subject] | None:
    """The job's kind and subject: by the registry's request id, else by the event's hint."""
    found = await _by_request(session, event.request_id)
    if found is None:
        await _lock_request_id(session, event.request_id)
        # Again under the lock: a registration may have committed since the first look.
        found = await _by_request(session, event.request_id)
    if found is None:
        for handler in HANDLERS.values():
            subject = await handler.by_hint(session, event)
            if subject is not None:
                return handler, subject
    return found


async def _by_request(
    session: AsyncSession | DirectConnection, request_id: str
) -> tuple[Handler[Any], Subject] | None:
    # One query per kind, each joining the registry to its own subject's table,
    # so that the matched path stays a single look-up.
    for handler in HANDLERS.values():
        subject = await handler.by_request(session, request_id)
        if subject is not None:
            return handler, subject
    return None


async def _lock_request_id(session: AsyncSession, request_id: str) -> None:
    """Serialise a webhook that found no job with the registration of that request id:
    whichever takes the lock second sees the other's commit, so the event is either matched
    or found by the registration, never neither. Matched webhooks, the common case, never
    take it."""
    await dialect_of(session).lock_key(session, request_id)


async def register(session: AsyncSession, job: FalJob) -> list[Result]:
    """Add `job` to the registry, then apply the events stored as unmatched for it, oldest first.

    Call in the transaction that created (or claimed) the job's subject (`avatars attach`,
    the bot's submission); the subject is up to date in the database afterwards.
    """
    await _lock_request_id(session, job.request_id)
    session.add(job)
    await session.flush()
    waiting = await session.execute(
        select(events.c.id, events.c.body, events.c.query)
        .where(events.c.request_id == job.request_id, events.c.outcome == Outcome.UNMATCHED.value)
        .order_by(events.c.id)
    )
    handler = HANDLERS[JobKind(job.kind)]
    results = []
    for event_id, body, query in waiting.all():
        try:
            event = parse_event(parse_body(body), dict(parse_qsl(query)), job.request_id)
        except PayloadError:
            # It was parsed once before it was stored; only a code change can make this fail.
            log.exception("stored_event_unparseable", event_id=event_id)
            continue
        # Read again for each event: the one before may have moved it on.
        target = await handler.by_request(session, job.request_id)
        assert target is not None, "the job was registered above"
        plan = handler.plan(target, event, utcnow())
        outcome = Outcome.RECEIVED if plan.transition else Outcome.IGNORED
        rematch = {
            "id": event_id,
            **target.recorded_as,
            "outcome": outcome.value,
            "transition": plan.transition,
            "applied_at": utcnow(),
        }
        written = await write_chain(
            session, (REMATCH, *plan.steps), {REMATCH.name: rematch, **plan.params}
        )
        enqueued = written.get(ENQUEUED, 0) > 0
        results.append(_result(outcome, job.request_id, target.recorded_as, plan, enqueued))
    return results
