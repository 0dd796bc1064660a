"""Trainings whose callback never came: ask FAL, and apply the answer as if it were the callback.

Why it runs in the bot and not in the webhook service:
- the bot already holds FAL_KEY (it submits trainings); the internet-facing webhook service
  only verifies FAL's signatures and never needs to call FAL's API with our key;
- the bot is one process (Telegram allows one getUpdates poller per token), while the webhook
  service runs several gunicorn workers that would need electing a leader for it;
- it changes nothing about notifications: what it learns goes through service.jobs.ingest.ingest,
  the webhook's own transaction, so the outcome is recorded once and its message is enqueued
  once in the outbox, which the webhook service's dispatcher sends. Should two reconcilers ever
  run, ingest's dedupe (request id + body) and the one-row-per-outcome outbox keep it at one.

Every RECONCILE_INTERVAL_SECONDS (with +-20 % jitter) it looks at the bot's avatars in
`training`:
- submitted more than TRAINING_EXPECTED_SECONDS ago, or with a stored `payload_error` callback
  (FAL finished but could not send the output): ask the status URL; on COMPLETED fetch the
  result and ingest it as FAL's webhook body would have been (`status` OK or ERROR);
- older than TRAINING_HARD_LIMIT_SECONDS and still not done: cancel at FAL (best effort) and
  ingest an ERROR saying so, which fails the avatar with a clear message;
- claimed but never submitted (the bot stopped between creating the avatar and hearing from
  FAL) for a while: back to `draft`, from which the person can retry.
It also deletes training zips that expired long ago (drafts nobody retried).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog
from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.services import Services
from service.fal.payload import EventStatus, parse_body, parse_event
from service.fal.queue import FalError, FalUnavailable, Outcome, QueueState
from service.jobs.ingest import Delivery, Result, ingest
from service.jobs.states import AvatarStatus
from service.settings import Settings
from service.store import training_data
from service.store.models import Avatar, WebhookEvent, utcnow

log = structlog.get_logger("service.bot.reconciler")

JITTER = 0.2
# Where the synthesised deliveries are recorded as coming from (webhook_events.headers).
SOURCE_HEADER = "x-aibots-source"


@dataclass(frozen=True)
class Policy:
    interval: float
    expected: float
    hard_limit: float
    # A claim with no request id this old was abandoned mid-submission.
    stale_claim: float
    # Expired zips are kept this much longer (a retry renews them), then deleted.
    data_retention: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            interval=settings.reconcile_interval_seconds,
            expected=settings.training_expected_seconds,
            hard_limit=settings.training_hard_limit_seconds,
            stale_claim=min(600.0, max(settings.training_expected_seconds, 60.0)),
            data_retention=7 * 86400.0,
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


@dataclass
class Report:
    checked: int = 0
    applied: int = 0
    timed_out: int = 0
    reverted: int = 0
    purged: int = 0


def training_of(avatar: Avatar, result_pending: bool = False) -> Training:
    assert avatar.fal_request_id is not None
    return Training(
        avatar.id,
        avatar.name,
        avatar.training_type,
        avatar.fal_request_id,
        avatar.fal_status_url,
        avatar.fal_response_url,
        avatar.fal_cancel_url,
        avatar.training_started_at or avatar.created_at,
        result_pending,
    )


async def apply_body(svc: Services, training: Training, body: dict[str, Any]) -> Result:
    """Ingest `body` as the training's webhook: the same transaction a callback runs."""
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    query = urlencode({"avatar_id": training.avatar_id, "training_type": training.training_type})
    event = parse_event(parse_body(raw), dict(parse_qsl(query)), training.request_id)
    delivery = Delivery(
        raw_body=raw,
        event=event,
        headers={SOURCE_HEADER: "reconciler"},
        query=query,
        client_ip=None,
        signed=False,
    )
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
        if outcome.succeeded:
            body: dict[str, Any] = {
                "request_id": training.request_id,
                "status": "OK",
                "payload": outcome.output,
            }
        else:
            body = {
                "request_id": training.request_id,
                "status": "ERROR",
                "error": _failure_words(outcome),
                "payload": outcome.output,
            }
        await apply_body(svc, training, body)
    return status.state


def _failure_words(outcome: Outcome) -> str:
    """FAL's reason for a failed run, as a webhook's `error` would carry it."""
    reason = outcome.error or f"Invalid status code: {outcome.http_status}"
    return f"{outcome.error_type}: {reason}" if outcome.error_type else reason


async def _give_up(svc: Services, training: Training, policy: Policy) -> None:
    if training.cancel_url is not None:
        try:
            # Stop paying for a training nobody will wait for; it may still finish anyway.
            await svc.fal.cancel(training.cancel_url)
        except FalError as exc:
            log.warning("reconciler_cancel_failed", avatar_id=training.avatar_id, error=str(exc))
    hours = policy.hard_limit / 3600
    await apply_body(
        svc,
        training,
        {
            "request_id": training.request_id,
            "status": "ERROR",
            "error": f"The training did not finish within {hours:g} hours, so it was stopped.",
        },
    )


async def _candidates(session: AsyncSession, policy: Policy, now: dt.datetime) -> list[Training]:
    pending = exists().where(
        WebhookEvent.request_id == Avatar.fal_request_id,
        WebhookEvent.status == EventStatus.RESULT_PENDING.value,
    )
    due = now - dt.timedelta(seconds=policy.expected)
    rows = await session.execute(
        select(Avatar, pending)
        .where(
            Avatar.status == AvatarStatus.TRAINING.value,
            Avatar.started_by == "bot",
            Avatar.fal_request_id.is_not(None),
            (Avatar.training_started_at <= due) | pending,
        )
        .order_by(Avatar.training_started_at)
    )
    return [training_of(avatar, bool(flag)) for avatar, flag in rows]


async def _revert_stale_claims(session: AsyncSession, policy: Policy, now: dt.datetime) -> int:
    result = await session.execute(
        update(Avatar)
        .where(
            Avatar.status == AvatarStatus.TRAINING.value,
            Avatar.started_by == "bot",
            Avatar.fal_request_id.is_(None),
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
