"""GET /health, /api/v1/webhook/status and /metrics: what an operator or a prober reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import metrics
from service.jobs.states import AvatarStatus, GenerationStatus
from service.outbox.states import UNSENT, NotificationState
from service.store import tallies
from service.store.engine import run_transaction, sqlite_path, within
from service.store.models import Avatar, Generation, Notification, WebhookEvent, utcnow
from service.web.runtime import Runtime

log = structlog.get_logger("service.monitoring")

VERSION = "0.1.0"
HEALTH_TIMEOUT_SECONDS = 2.0
_NOT_SENT = tuple(s.value for s in NotificationState if s is not NotificationState.SENT)
# Written by `aibots certs check` (deploy/certs.sh, on the aibots-certs timer) into the
# service's working directory, /var/lib/aibots: the expiry of the certificate nginx serves,
# in the Prometheus text format, passed on as it is. The service cannot read the
# certificate itself (/etc/ssl/aibots is root's) and should not depend on nginx to answer.
TLS_METRICS_FILE = Path("tls-certificate.prom")
# Still running at FAL: the age of the oldest of these is the "stuck training" signal.
RUNNING = (AvatarStatus.TRAINING.value, AvatarStatus.CANCELLING.value)
GENERATING = tuple(s.value for s in GenerationStatus if not s.is_terminal)
# Less room than this beside an embedded database: its next writes (a WAL frame, a page) fail
# with "database or disk is full", and webhooks are answered 503.
DISK_FULL_BYTES = 1024 * 1024


async def health(request: Request) -> Response:
    """200 when the database answers (and an embedded one has room to write), 503 (so a
    balancer stops sending) when it does not."""
    runtime: Runtime = request.app.state.runtime

    async def ping() -> None:
        async with runtime.sessions() as session:
            await session.execute(text("SELECT 1"))

    try:
        # Not wait_for: cancelling a statement on a stalled server waits on it (store/engine.py).
        await within(HEALTH_TIMEOUT_SECONDS, ping())
        database = "ok"
    except Exception:
        database = "error"
    body: dict[str, Any] = {"database": database}
    free = _disk_free(runtime.settings.database_url)
    if free is not None:
        # SELECT 1 still answers on a full disk; only writes fail.
        body.update(disk="full" if free < DISK_FULL_BYTES else "ok", disk_free_bytes=free)
    healthy = database == "ok" and body.get("disk") != "full"
    body = {
        "status": "ok" if healthy else "degraded",
        **body,
        "telegram": "configured" if runtime.settings.telegram_configured else "not_configured",
        "version": VERSION,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


def _disk_free(database_url: str) -> int | None:
    """Bytes an unprivileged writer may still use beside an embedded database's file; None
    for a database server (its disk is not ours to see) or when the folder cannot be read."""
    path = sqlite_path(database_url)
    if path is None:
        return None
    try:
        stat = os.statvfs(path.parent)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


async def _count_by(session: AsyncSession, column: Any, every: Any) -> dict[str, int]:
    """Rows by `column`, every value of the enum `every` present (0 when none has it)."""
    rows = await session.execute(select(column, func.count()).group_by(column))
    return {**{s.value: 0 for s in every}, **{str(key): int(count) for key, count in rows}}


async def _oldest_age(session: AsyncSession, started: Any, where: Any) -> float | None:
    oldest = (await session.execute(select(func.min(started)).where(where))).scalar()
    return round((utcnow() - oldest).total_seconds(), 3) if oldest else None


async def _counts(session: AsyncSession) -> dict[str, Any]:
    # Each figure is exact as of its statement. Events and notifications read no more than the
    # unsent notifications and the last minutes' rows (service.store.tallies), whatever the
    # tables' sizes; avatars (one per training, not per callback) are counted through their
    # status index.
    events = await tallies.event_counts(session)
    last_event = (await session.execute(select(func.max(WebhookEvent.received_at)))).scalar()
    notifications = await tallies.notification_counts(session, _NOT_SENT, NotificationState.SENT)
    oldest_pending = (
        await session.execute(
            select(func.min(Notification.created_at)).where(Notification.state.in_(UNSENT))
        )
    ).scalar()
    # Avatars and generations (one row per training or per request, not per callback) are
    # counted through their status index.
    started = func.coalesce(Avatar.training_started_at, Avatar.created_at)
    return {
        "events": events,
        "avatars": await _count_by(session, Avatar.status, AvatarStatus),
        "oldest_training_age_seconds": await _oldest_age(
            session, started, Avatar.status.in_(RUNNING)
        ),
        "generations": await _count_by(session, Generation.status, GenerationStatus),
        "oldest_generation_age_seconds": await _oldest_age(
            session, Generation.created_at, Generation.status.in_(GENERATING)
        ),
        "last_event_at": last_event.isoformat() if last_event else None,
        "notifications": notifications,
        "oldest_pending_age_seconds": (
            round((utcnow() - oldest_pending).total_seconds(), 3) if oldest_pending else None
        ),
    }


async def _advance(session: AsyncSession) -> None:
    now = utcnow()
    for tallied in tallies.TALLIED:
        await tallies.advance(session, tallied, now)


async def _read_counts(runtime: Runtime) -> dict[str, Any] | None:
    try:
        # Its own short transaction, so the counts' read takes no lock.
        await within(HEALTH_TIMEOUT_SECONDS, run_transaction(runtime.sessions, _advance))
    except Exception:
        # The counts stay exact with an old mark, only the read gets a little longer.
        log.warning("tally_advance_failed", exc_info=True)

    async def read() -> dict[str, Any]:
        async with runtime.sessions() as session:
            return await _counts(session)

    try:
        return await within(HEALTH_TIMEOUT_SECONDS, read())
    except Exception:
        return None


async def webhook_status(request: Request) -> Response:
    """Counts from the database, the verification mode, and whether Telegram is configured."""
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    counts = await _read_counts(runtime)
    body: dict[str, Any] = {
        "endpoint": "/api/v1/avatar/status_update",
        "legacy_endpoint": "/api/avatar/status_update",
        "verification": settings.fal_webhook_verify,
        "unsigned_from": [str(n) for n in settings.webhook_unsigned_from],
        "telegram_configured": settings.telegram_configured,
        "database": "ok" if counts is not None else "error",
    }
    if counts is not None:
        events = counts["events"]
        body.update(
            events={"total": sum(events.values()), **events},
            last_event_at=counts["last_event_at"],
            notifications=counts["notifications"],
            oldest_pending_notification_age_seconds=counts["oldest_pending_age_seconds"],
            generations=counts["generations"],
            oldest_generation_age_seconds=counts["oldest_generation_age_seconds"],
        )
    return JSONResponse(body, status_code=200 if counts is not None else 503)


async def prometheus(request: Request) -> Response:
    """Process metrics of every worker, plus outbox and event gauges read from the database."""
    runtime: Runtime = request.app.state.runtime
    output = metrics.render_process_metrics().decode()
    counts = await _read_counts(runtime)
    output += metrics.gauge_lines(
        "database_up", "1 when the database answered this scrape", {"": 1.0 if counts else 0.0}, ""
    )
    if counts is not None:
        output += "".join(metrics.gauge_lines(*gauge) for gauge in _database_gauges(counts))
    output += metrics.gauge_lines(
        "training_hard_limit_seconds",
        "TRAINING_HARD_LIMIT_SECONDS: a training running longer is stuck",
        {"": runtime.settings.training_hard_limit_seconds},
        "",
    )
    output += _tls_metrics()
    return Response(output, media_type=metrics.CONTENT_TYPE)


Gauge = tuple[str, str, dict[str, float], str]


def _database_gauges(counts: dict[str, Any]) -> list[Gauge]:
    """(name, help, samples, label) of every gauge read from the database at a scrape."""
    # Every state, so a gauge falls back to 0 instead of vanishing when its last row moves.
    states = {s.value: 0.0 for s in NotificationState}
    states.update(_by_label(counts["notifications"]))
    events = _by_label(counts["events"])
    return [
        ("notifications", "Notifications in the outbox by state", states, "state"),
        _oldest(
            "notification_oldest_pending_age_seconds",
            "Age of the oldest notification not yet sent",
            counts["oldest_pending_age_seconds"],
        ),
        ("webhook_events", "Webhook events recorded, by outcome", events, "outcome"),
        ("avatars", "Avatars by status", _by_label(counts["avatars"]), "status"),
        _oldest(
            "training_oldest_running_age_seconds",
            "Age of the oldest training still running (training or cancelling), 0 if none",
            counts["oldest_training_age_seconds"],
        ),
        ("generations", "Generations by status", _by_label(counts["generations"]), "status"),
        _oldest(
            "generation_oldest_unfinished_age_seconds",
            "Age of the oldest generation not finished (queued, running), 0 if none",
            counts["oldest_generation_age_seconds"],
        ),
    ]


def _by_label(counted: dict[str, Any]) -> dict[str, float]:
    return {label: float(count) for label, count in counted.items()}


def _oldest(name: str, help_text: str, age: float | None) -> Gauge:
    """A gauge without labels: an age in seconds, 0 when there is nothing to age."""
    return (name, help_text, {"": float(age or 0.0)}, "")


def _tls_metrics() -> str:
    """The certificate check's lines; only its own names, so a stray line cannot break the
    whole scrape."""
    try:
        lines = TLS_METRICS_FILE.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    kept = [
        line
        for line in lines
        if line.startswith(
            ("tls_certificate_", "# HELP tls_certificate_", "# TYPE tls_certificate_")
        )
    ]
    return "".join(f"{line}\n" for line in kept)
