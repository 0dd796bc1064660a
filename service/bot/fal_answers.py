"""What FAL says about one job, asked by the bot and applied as the job's callback would be.

The reconciler, and the refresh and cancel buttons of My avatars, ask FAL's status URL and, for
a finished request, its result; what they learn goes through service.jobs.ingest.ingest with
the source `reconciler`, the webhook's own transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import structlog

from service.bot.services import Services
from service.fal.payload import Event, EventStatus, from_result
from service.fal.queue import FalError, FalUnavailable, Outcome, QueueState
from service.jobs.ingest import Delivery, Result, ingest
from service.jobs.registry import Source
from service.store.models import Avatar, FalJob

log = structlog.get_logger("service.bot.reconciler")


@dataclass(frozen=True)
class Training:
    """A training as the reconciler (and the "refresh" button) sees it."""

    avatar_id: str
    name: str
    training_type: str
    request_id: str
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    started_at: dt.datetime
    result_pending: bool = False


def training_of(avatar: Avatar, job: FalJob, result_pending: bool = False) -> Training:
    return Training(
        avatar.id,
        avatar.name,
        avatar.training_type,
        job.request_id,
        job.status_url,
        job.response_url,
        job.cancel_url,
        avatar.training_started_at or avatar.created_at,
        result_pending,
    )


async def apply(
    svc: Services, training: Training, event: Event, evidence: dict[str, Any]
) -> Result:
    """Apply what the bot learnt from FAL to the training's job, in the webhook's transaction.

    `evidence` (what FAL answered) is kept as the event's raw record, with its source.
    """
    delivery = Delivery.learnt(event, Source.RECONCILER, evidence)
    result = await svc.transaction(lambda session: ingest(session, delivery))
    log.info(
        "reconciled",
        avatar_id=training.avatar_id,
        request_id=training.request_id,
        event_status=event.status.value,
        outcome=result.outcome.value,
        transition=result.transition,
    )
    return result


async def resolve(svc: Services, training: Training) -> QueueState:
    """Ask FAL where the training is; if it is done, apply its result. Raises FalError."""
    if training.status_url is None or training.response_url is None:
        raise FalError("the training was not submitted by this bot: no status URL")
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


async def give_up(svc: Services, job: Training, reason: str) -> None:
    """Cancel at FAL (best effort) a job nobody will wait for any more, and fail it."""
    if job.cancel_url is not None:
        try:
            # Stop paying for it; it may still finish anyway (then its callback is ignored).
            await svc.fal.cancel(job.cancel_url)
        except FalError as exc:
            log.warning("reconciler_cancel_failed", request_id=job.request_id, error=str(exc))
    event = Event(job.request_id, EventStatus.FAILED, error_message=reason)
    await apply(svc, job, event, {"request_id": job.request_id, "status": "ERROR", "error": reason})
