"""Generations whose callback never came: ask FAL, apply its answer, fail the ones that stall.

A pass of the reconciler (service/bot/reconciler.py) also looks at the generations, by rules
of their own because a generation takes FAL seconds where a training takes minutes:
- queued or running, registered more than `expected` (2 minutes) ago, or with a stored
  `payload_error` callback: ask the status URL; on COMPLETED fetch the result and apply it
  through service.jobs.ingest (source `reconciler`): the photos, or FAL's failure;
- older than `hard_limit` (30 minutes) and still not done: cancel at FAL (best effort) and
  apply a failure saying so; a failed generation's photos do not count against the quota;
- `queued` with no job for `stale_submission` (5 minutes; the bot stopped between
  writing the generation and hearing FAL accept it): failed with its message, so that the
  person hears of it and the quota is given back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.asking import result_pending, settle_late
from service.bot.services import Services
from service.jobs import generation
from service.jobs.registry import JobKind
from service.jobs.states import GenerationStatus
from service.store.models import FalJob, Generation

if TYPE_CHECKING:
    from service.bot.reconciler import Report

log = structlog.get_logger("service.bot.reconciler")

AT_FAL = (GenerationStatus.QUEUED.value, GenerationStatus.RUNNING.value)
_URLS = (FalJob.request_id, FalJob.status_url, FalJob.response_url, FalJob.cancel_url)


@dataclass(frozen=True)
class GenerationPolicy:
    """When a generation is asked about, given up on, or taken for an abandoned submission."""

    expected: float = 120.0
    hard_limit: float = 1800.0
    stale_submission: float = 300.0


@dataclass(frozen=True)
class Pending:
    """A generation at FAL whose callback is late (service.bot.asking.Asked)."""

    generation_id: str
    request_id: str
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    submitted_at: dt.datetime

    @property
    def subject(self) -> dict[str, str]:
        return {"generation_id": self.generation_id}


async def _late(session: AsyncSession, policy: GenerationPolicy, now: dt.datetime) -> list[Pending]:
    pending = result_pending()
    due = now - dt.timedelta(seconds=policy.expected)
    rows = await session.execute(
        select(Generation.id, *_URLS, FalJob.submitted_at)
        .join(
            FalJob,
            and_(FalJob.generation_id == Generation.id, FalJob.kind == JobKind.GENERATION.value),
        )
        .where(Generation.status.in_(AT_FAL), (FalJob.submitted_at <= due) | pending)
        .order_by(FalJob.submitted_at)
    )
    return [Pending(*row) for row in rows]


async def _abandoned(
    session: AsyncSession, policy: GenerationPolicy, now: dt.datetime
) -> list[str]:
    rows = await session.execute(
        select(Generation.id).where(
            # Queued but never registered: FAL's acceptance was never recorded.
            Generation.status == GenerationStatus.QUEUED.value,
            ~exists().where(FalJob.generation_id == Generation.id),
            Generation.updated_at <= now - dt.timedelta(seconds=policy.stale_submission),
        )
    )
    return list(rows.scalars())


def _too_late(policy: GenerationPolicy) -> str:
    minutes = policy.hard_limit / 60
    return f"The photos did not finish within {minutes:g} minutes, so they were stopped."


async def reconcile_once(
    svc: Services, policy: GenerationPolicy, report: Report, now: dt.datetime
) -> None:
    """One pass over the generations that need it, counted into `report`; FAL is asked
    outside any transaction."""
    for generation_id in await svc.transaction(lambda s: _abandoned(s, policy, now)):
        interrupt = partial(generation.fail_interrupted, generation_id=generation_id, now=now)
        report.generations_interrupted += int(await svc.transaction(interrupt))
    late = await svc.transaction(lambda s: _late(s, policy, now))
    ages = ((job, now - job.submitted_at) for job in late)
    tally = await settle_late(svc, ages, policy.hard_limit, _too_late(policy))
    report.generations_checked, report.generations_applied, report.generations_timed_out = tally
