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
- claimed but never sent to FAL (the bot stopped before the submission) for a while: back to
  `draft`, from which the person can retry;
- sent, but FAL's answer was lost, for SUBMISSION_UNCONFIRMED_SECONDS: back to `draft`, with a
  retry offered (service/bot/unconfirmed.py).
It also deletes training zips that expired long ago (drafts nobody retried), and passes over
the generations (service/bot/reconcile_generations.py) by the same rules and times of their own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from dataclasses import dataclass, field

import structlog
from sqlalchemy import and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot import reconcile_generations, unconfirmed
from service.bot.asking import Asked as Asked
from service.bot.asking import apply as apply
from service.bot.asking import resolve as resolve
from service.bot.asking import result_pending, settle_late
from service.bot.reconcile_generations import GenerationPolicy
from service.bot.services import Services
from service.jobs.registry import JobKind
from service.jobs.states import AvatarStatus
from service.settings import Settings
from service.store import training_data
from service.store.models import Avatar, FalJob, utcnow

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
    # A submission whose answer was lost waits this long for its callback.
    unconfirmed: float = 3600.0
    generations: GenerationPolicy = field(default_factory=GenerationPolicy)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            interval=settings.reconcile_interval_seconds,
            expected=settings.training_expected_seconds,
            hard_limit=settings.training_hard_limit_seconds,
            stale_claim=min(600.0, max(settings.training_expected_seconds, 60.0)),
            data_retention=7 * 86400.0,
            unconfirmed=settings.submission_unconfirmed_seconds,
            generations=GenerationPolicy(
                expected=settings.generation_expected_seconds,
                hard_limit=settings.generation_hard_limit_seconds,
            ),
        )


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

    @property
    def subject(self) -> dict[str, str]:
        return {"avatar_id": self.avatar_id}


@dataclass
class Report:
    checked: int = 0
    applied: int = 0
    timed_out: int = 0
    reverted: int = 0
    purged: int = 0
    # Generations: asked about, applied, failed after the hard limit or mid-submission.
    generations_checked: int = 0
    generations_applied: int = 0
    generations_timed_out: int = 0
    generations_interrupted: int = 0


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


def _too_late(policy: Policy) -> str:
    hours = policy.hard_limit / 3600
    return f"The training did not finish within {hours:g} hours, so it was stopped."


async def _candidates(session: AsyncSession, policy: Policy, now: dt.datetime) -> list[Training]:
    pending = result_pending()
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
            # Set once the submission goes out: FAL may have it (see unconfirmed.expire).
            Avatar.training_started_at.is_(None),
            Avatar.updated_at <= now - dt.timedelta(seconds=policy.stale_claim),
        )
        .values(
            status=AvatarStatus.DRAFT.value,
            error_message="the training was interrupted before FAL accepted it",
            updated_at=now,
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def reconcile_once(svc: Services, policy: Policy) -> Report:
    """One pass over the trainings that need it; FAL is asked outside any transaction."""
    now = utcnow()
    report = Report()
    report.reverted = await svc.transaction(lambda s: _revert_stale_claims(s, policy, now))
    report.reverted += await svc.transaction(
        lambda s: unconfirmed.expire(s, policy.unconfirmed, now)
    )
    late = await svc.transaction(lambda s: _candidates(s, policy, now))
    ages = ((training, now - training.started_at) for training in late)
    tally = await settle_late(svc, ages, policy.hard_limit, _too_late(policy))
    report.checked, report.applied, report.timed_out = tally
    cutoff = now - dt.timedelta(seconds=policy.data_retention)
    report.purged = await svc.transaction(lambda s: training_data.purge_expired(s, cutoff))
    await reconcile_generations.reconcile_once(svc, policy.generations, report, now)
    if any(vars(report).values()):
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
