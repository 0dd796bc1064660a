"""Generations whose callback never came: asked about at FAL, as the reconciler asks trainings.

Each pass (service.bot.reconciler.reconcile_once) looks at the generations in `queued` or
`running` that were submitted more than GENERATION_EXPECTED_SECONDS ago, or whose callback was
a `payload_error`: FAL's status URL is asked and a finished result applied through
service.jobs.ingest.ingest, so the photos (or the failure) are delivered once by the outbox.
One still not done after GENERATION_HARD_LIMIT_SECONDS is cancelled at FAL (best effort) and
failed: its photos then do not count.
"""

from __future__ import annotations

import datetime as dt

import structlog
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.fal_answers import Training, give_up, resolve
from service.bot.services import Services
from service.fal.payload import EventStatus
from service.fal.queue import FalError, QueueState
from service.jobs.states import GenerationStatus
from service.store.models import FalJob, Generation, WebhookEvent

log = structlog.get_logger("service.bot.reconciler")

UNFINISHED = (GenerationStatus.QUEUED.value, GenerationStatus.RUNNING.value)


async def _candidates(session: AsyncSession, expected: float, now: dt.datetime) -> list[Training]:
    pending = exists().where(
        WebhookEvent.request_id == FalJob.request_id,
        WebhookEvent.status == EventStatus.RESULT_PENDING.value,
    )
    due = now - dt.timedelta(seconds=expected)
    rows = await session.execute(
        select(Generation, FalJob, pending)
        .join(FalJob, FalJob.generation_id == Generation.id)
        .where(
            Generation.status.in_(UNFINISHED),
            FalJob.status_url.is_not(None),
            (FalJob.submitted_at <= due) | pending,
        )
        .order_by(FalJob.submitted_at)
    )
    # The reconciler's view of a job; for a generation, its avatar and what it was asked.
    return [
        Training(
            generation.avatar_id,
            generation.label,
            "generation",
            job.request_id,
            job.status_url,
            job.response_url,
            job.cancel_url,
            job.submitted_at,
            bool(flag),
        )
        for generation, job, flag in rows
    ]


async def reconcile(
    svc: Services, expected: float, hard_limit: float, now: dt.datetime
) -> tuple[int, int, int]:
    """One pass; (checked, applied, timed out)."""
    checked = applied = timed_out = 0
    for job in await svc.transaction(lambda s: _candidates(s, expected, now)):
        checked += 1
        state: QueueState | None = None
        try:
            state = await resolve(svc, job)
        except FalError as exc:
            log.warning("reconciler_status_failed", request_id=job.request_id, error=str(exc))
        if state is QueueState.COMPLETED:
            applied += 1
        elif (now - job.started_at).total_seconds() >= hard_limit:
            minutes = hard_limit / 60
            reason = f"The generation did not finish within {minutes:g} minutes, so it was stopped."
            await give_up(svc, job, reason)
            timed_out += 1
    return checked, applied, timed_out
