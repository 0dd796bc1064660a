"""Asking FAL where a job is, and applying its answer as the job's callback would have been.

The reconciler, the "refresh" and "stop" buttons all learn this way: an event from the source
`reconciler`, through service.jobs.ingest.ingest, the webhook's own transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

import structlog
from sqlalchemy import Exists, exists

from service.bot.services import Services
from service.fal.payload import Event, EventStatus, from_result
from service.fal.queue import FalError, FalUnavailable, Outcome, QueueState
from service.jobs.ingest import Delivery, Result, ingest
from service.jobs.registry import Source
from service.store.models import FalJob, WebhookEvent

log = structlog.get_logger("service.bot.reconciler")


class Asked(Protocol):
    """A job the bot asks FAL about (a training, a generation)."""

    @property
    def request_id(self) -> str: ...
    @property
    def status_url(self) -> str | None: ...
    @property
    def response_url(self) -> str | None: ...
    @property
    def cancel_url(self) -> str | None: ...
    @property
    def subject(self) -> dict[str, str]:
        """Its subject's id, for the log."""


async def apply(svc: Services, job: Asked, event: Event, evidence: dict[str, Any]) -> Result:
    """Apply what the bot learnt from FAL to the job, in the webhook's transaction.

    `evidence` (what FAL answered) is kept as the event's raw record, with its source.
    """
    delivery = Delivery.learnt(event, Source.RECONCILER, evidence)
    result = await svc.transaction(lambda session: ingest(session, delivery))
    log.info(
        "reconciled",
        **job.subject,
        request_id=job.request_id,
        event_status=event.status.value,
        outcome=result.outcome.value,
        transition=result.transition,
    )
    return result


async def resolve(svc: Services, training: Asked) -> QueueState:
    """Ask FAL where the job is; if it is done, apply its result. Raises FalError."""
    if training.status_url is None or training.response_url is None:
        raise FalError("the job was not submitted by this bot: no status URL")
    status = await svc.fal.status(training.status_url)
    if status.state is QueueState.COMPLETED:
        try:
            outcome = await svc.fal.result(training.response_url)
        except FalUnavailable:
            if status.error is None:
                raise
            # The status already says the run failed and why; the result adds nothing to wait
            # for.
            detail = {"detail": status.error}
            outcome = Outcome(False, detail, 0, error_type=status.error_type, error=status.error)
        # The evidence reads as FAL's webhook for the same result would have.
        evidence: dict[str, Any] = {"request_id": training.request_id}
        if outcome.succeeded:
            event = from_result(training.request_id, outcome.output)
            evidence.update(status="OK", payload=outcome.output)
        else:
            error = _failure_words(outcome)
            event = from_result(training.request_id, outcome.output, error)
            evidence.update(status="ERROR", error=error, payload=outcome.output)
        await apply(svc, training, event, evidence)
    return status.state


def _failure_words(outcome: Outcome) -> str:
    """FAL's reason for a failed run, as a webhook's `error` would carry it."""
    reason = outcome.error or f"Invalid status code: {outcome.http_status}"
    return f"{outcome.error_type}: {reason}" if outcome.error_type else reason


async def fail(svc: Services, job: Asked, reason: str) -> Result:
    """Fail the job for a reason of our own (it stalled), as FAL's ERROR callback would."""
    event = Event(job.request_id, EventStatus.FAILED, error_message=reason)
    return await apply(
        svc, job, event, {"request_id": job.request_id, "status": "ERROR", "error": reason}
    )


def result_pending() -> Exists:
    """A job (in a query of FalJob) whose callback said FAL could not send its output."""
    return exists().where(
        WebhookEvent.request_id == FalJob.request_id,
        WebhookEvent.status == EventStatus.RESULT_PENDING.value,
    )


async def ask(svc: Services, job: Asked) -> QueueState | None:
    """`resolve`, with FAL's trouble logged rather than raised: None when FAL could not say."""
    try:
        return await resolve(svc, job)
    except FalError as exc:
        log.warning(
            "reconciler_status_failed", **job.subject, request_id=job.request_id, error=str(exc)
        )
        return None


class Tally(NamedTuple):
    """What a pass over late jobs did: asked about, applied, failed after the hard limit."""

    checked: int
    applied: int
    timed_out: int


async def settle_late(
    svc: Services, late: Iterable[tuple[Asked, dt.timedelta]], hard_limit: float, reason: str
) -> Tally:
    """Ask FAL about each late job (with its age) and apply a finished one's result; one older
    than `hard_limit` seconds and still not done is cancelled at FAL (best effort) and failed
    for `reason`."""
    checked = applied = timed_out = 0
    for job, age in late:
        checked += 1
        if await ask(svc, job) is QueueState.COMPLETED:
            applied += 1
        elif age.total_seconds() >= hard_limit:
            await _give_up(svc, job, reason)
            timed_out += 1
    return Tally(checked, applied, timed_out)


async def _give_up(svc: Services, job: Asked, reason: str) -> None:
    if job.cancel_url is not None:
        try:
            # Stop paying for a job nobody will wait for; it may still finish anyway.
            await svc.fal.cancel(job.cancel_url)
        except FalError as exc:
            log.warning("reconciler_cancel_failed", **job.subject, error=str(exc))
    await fail(svc, job, reason)
