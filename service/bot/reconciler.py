"""Trainings whose callback never came: ask FAL, and apply its answer as the callback would.

Why it runs in the bot and not in the webhook service:
- the bot already holds FAL_KEY (it submits trainings); the internet-facing webhook service
  only verifies FAL's signatures and never needs to call FAL's API with our key;
- the bot is one process (Telegram allows one getUpdates poller per token), while the webhook
  service runs several gunicorn workers that would need electing a leader for it;
- it changes nothing about notifications: what it learns goes, as an event from the source
  `reconciler`, through service.jobs.ingest.ingest, the webhook's own transaction, so the
  outcome is recorded once and its message is enqueued once in the outbox, which the webhook
  service's dispatcher sends. Should two reconcilers ever run, ingest's dedupe (request id +
  body) and the one-row-per-outcome outbox keep it at one.

Every RECONCILE_INTERVAL_SECONDS (with +-20 % jitter) it looks at the bot's avatars in
`training` (or `cancelling`):
- submitted more than TRAINING_EXPECTED_SECONDS ago, or with a stored `payload_error` callback
  (FAL finished but could not send the output): ask the status URL; on COMPLETED fetch the
  result and apply it (completed, or failed with FAL's reason);
- older than TRAINING_HARD_LIMIT_SECONDS and still not done: cancel at FAL (best effort) and
  apply a failure saying so, which fails the avatar with a clear message;
- claimed but never submitted (the bot stopped between creating the avatar and hearing from
  FAL) for a while: back to `draft`, from which the person can retry; a generation left in
  `submitting` so is failed (it then neither counts nor holds an in-flight place).
It also deletes training zips that expired long ago (drafts nobody retried).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from dataclasses import dataclass

import structlog
from sqlalchemy import and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot import reconcile_generations
from service.bot.fal_answers import Training, give_up, resolve, training_of
from service.bot.services import Services
from service.fal.payload import EventStatus
from service.fal.queue import FalError, QueueState
from service.jobs.registry import JobKind
from service.jobs.states import AvatarStatus, GenerationStatus
from service.settings import Settings
from service.store import training_data
from service.store.models import Avatar, FalJob, Generation, WebhookEvent, utcnow

log = structlog.get_logger("service.bot.reconciler")

JITTER = 0.2
# The trainings FAL may still be working on (a cancelled one may yet finish).
UNFINISHED = (AvatarStatus.TRAINING.value, AvatarStatus.CANCELLING.value)


@dataclass(frozen=True)
class Policy:
    interval: float
    expected: float
    hard_limit: float
    # A claim with no request id this old was abandoned mid-submission.
    stale_claim: float
    # Expired zips are kept this much longer (a retry renews them), then deleted.
    data_retention: float
    # Generations (service/bot/reconcile_generations.py): asked about after this, failed after
    # that.
    generation_expected: float = 300.0
    generation_hard_limit: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            interval=settings.reconcile_interval_seconds,
            expected=settings.training_expected_seconds,
            hard_limit=settings.training_hard_limit_seconds,
            stale_claim=min(600.0, max(settings.training_expected_seconds, 60.0)),
            data_retention=7 * 86400.0,
            generation_expected=settings.generation_expected_seconds,
            generation_hard_limit=settings.generation_hard_limit_seconds,
        )


@dataclass
class Report:
    checked: int = 0
    applied: int = 0
    timed_out: int = 0
    reverted: int = 0
    purged: int = 0


async def _give_up(svc: Services, training: Training, policy: Policy) -> None:
    hours = policy.hard_limit / 3600
    await give_up(
        svc, training, f"The training did not finish within {hours:g} hours, so it was stopped."
    )


async def _candidates(session: AsyncSession, policy: Policy, now: dt.datetime) -> list[Training]:
    pending = exists().where(
        WebhookEvent.request_id == FalJob.request_id,
        WebhookEvent.status == EventStatus.RESULT_PENDING.value,
    )
    due = now - dt.timedelta(seconds=policy.expected)
    rows = await session.execute(
        select(Avatar, FalJob, pending)
        .join(FalJob, and_(FalJob.avatar_id == Avatar.id, FalJob.kind == JobKind.TRAINING.value))
        .where(
            Avatar.status.in_(UNFINISHED),
            Avatar.started_by == "bot",
            (Avatar.training_started_at <= due) | pending,
        )
        .order_by(Avatar.training_started_at)
    )
    return [training_of(avatar, job, bool(flag)) for avatar, job, flag in rows]


async def _revert_stale_claims(session: AsyncSession, policy: Policy, now: dt.datetime) -> int:
    result = await session.execute(
        update(Avatar)
        .where(
            Avatar.status == AvatarStatus.TRAINING.value,
            Avatar.started_by == "bot",
            ~exists().where(FalJob.avatar_id == Avatar.id),
            Avatar.updated_at <= now - dt.timedelta(seconds=policy.stale_claim),
        )
        .values(
            status=AvatarStatus.DRAFT.value,
            error_message="the training was interrupted before FAL accepted it",
            updated_at=now,
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def _fail_stale_submissions(session: AsyncSession, policy: Policy, now: dt.datetime) -> int:
    """Generations the bot wrote and never heard FAL accept (it stopped in between): failed,
    so that they neither count nor hold one of the person's in-flight places."""
    result = await session.execute(
        update(Generation)
        .where(
            Generation.status == GenerationStatus.SUBMITTING.value,
            ~exists().where(FalJob.generation_id == Generation.id),
            Generation.updated_at <= now - dt.timedelta(seconds=policy.stale_claim),
        )
        .values(
            status=GenerationStatus.FAILED.value,
            error_message="the generation was interrupted before FAL accepted it",
            updated_at=now,
            finished_at=now,
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def reconcile_once(svc: Services, policy: Policy) -> Report:
    """One pass over the trainings that need it; FAL is asked outside any transaction."""
    now = utcnow()
    report = Report()
    report.reverted = await svc.transaction(lambda s: _revert_stale_claims(s, policy, now))
    report.reverted += await svc.transaction(lambda s: _fail_stale_submissions(s, policy, now))
    for training in await svc.transaction(lambda s: _candidates(s, policy, now)):
        report.checked += 1
        state: QueueState | None = None
        try:
            state = await resolve(svc, training)
        except FalError as exc:
            log.warning(
                "reconciler_status_failed",
                avatar_id=training.avatar_id,
                request_id=training.request_id,
                error=str(exc),
            )
        if state is QueueState.COMPLETED:
            report.applied += 1
        elif (now - training.started_at).total_seconds() >= policy.hard_limit:
            await _give_up(svc, training, policy)
            report.timed_out += 1
    checked, applied, timed_out = await reconcile_generations.reconcile(
        svc, policy.generation_expected, policy.generation_hard_limit, now
    )
    report.checked += checked
    report.applied += applied
    report.timed_out += timed_out
    cutoff = now - dt.timedelta(seconds=policy.data_retention)
    report.purged = await svc.transaction(lambda s: training_data.purge_expired(s, cutoff))
    if report.checked or report.reverted or report.purged:
        log.info("reconciler_pass", **vars(report))
    return report


def next_delay(interval: float, rng: random.Random | None = None) -> float:
    return interval * (rng or random).uniform(1 - JITTER, 1 + JITTER)


async def run_forever(svc: Services, policy: Policy) -> None:
    """Reconcile every `policy.interval` seconds (jittered) until cancelled; never raises."""
    # The first pass comes soon after a start, to catch up on whatever happened while down.
    delay = next_delay(min(policy.interval, 5.0))
    while True:
        await asyncio.sleep(delay)
        try:
            await reconcile_once(svc, policy)
        except Exception:
            log.exception("reconciler_pass_failed")
        delay = next_delay(policy.interval)
