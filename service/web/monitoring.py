"""GET /health, /api/v1/webhook/status and /metrics: what an operator or a prober reads."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import metrics
from service.outbox.states import UNSENT, NotificationState
from service.store import tallies
from service.store.engine import run_transaction
from service.store.models import Notification, WebhookEvent, utcnow
from service.web.runtime import Runtime

log = structlog.get_logger("service.monitoring")

VERSION = "0.1.0"
HEALTH_TIMEOUT_SECONDS = 2.0
_NOT_SENT = tuple(s.value for s in NotificationState if s is not NotificationState.SENT)


async def health(request: Request) -> Response:
    """200 when the database answers, 503 (so a balancer stops sending) when it does not."""
    runtime: Runtime = request.app.state.runtime
    try:
        async with runtime.sessions() as session:
            await asyncio.wait_for(session.execute(text("SELECT 1")), HEALTH_TIMEOUT_SECONDS)
        database = "ok"
    except Exception:
        database = "error"
    body = {
        "status": "ok" if database == "ok" else "degraded",
        "database": database,
        "telegram": "configured" if runtime.settings.telegram_configured else "not_configured",
        "version": VERSION,
    }
    return JSONResponse(body, status_code=200 if database == "ok" else 503)


async def _counts(session: AsyncSession) -> dict[str, Any]:
    # Each figure is exact as of its statement; none reads more than the unsent notifications
    # and the last minutes' rows (service.store.tallies), whatever the tables' sizes.
    events = await tallies.event_counts(session)
    last_event = (await session.execute(select(func.max(WebhookEvent.received_at)))).scalar()
    notifications = await tallies.notification_counts(session, _NOT_SENT, NotificationState.SENT)
    oldest_pending = (
        await session.execute(
            select(func.min(Notification.created_at)).where(Notification.state.in_(UNSENT))
        )
    ).scalar()
    return {
        "events": events,
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
        await asyncio.wait_for(run_transaction(runtime.sessions, _advance), HEALTH_TIMEOUT_SECONDS)
    except Exception:
        # The counts stay exact with an old mark, only the read gets a little longer.
        log.warning("tally_advance_failed", exc_info=True)
    try:
        async with runtime.sessions() as session:
            return await asyncio.wait_for(_counts(session), HEALTH_TIMEOUT_SECONDS)
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
        # Every state, so a gauge falls back to 0 instead of vanishing when its last row moves.
        states = {s.value: 0.0 for s in NotificationState}
        states.update({k: float(v) for k, v in counts["notifications"].items()})
        output += metrics.gauge_lines(
            "notifications", "Notifications in the outbox by state", states, "state"
        )
        output += metrics.gauge_lines(
            "notification_oldest_pending_age_seconds",
            "Age of the oldest notification not yet sent",
            {"": float(counts["oldest_pending_age_seconds"] or 0.0)},
            "",
        )
        output += metrics.gauge_lines(
            "webhook_events",
            "Webhook events recorded, by outcome",
            {k: float(v) for k, v in counts["events"].items()},
            "outcome",
        )
    return Response(output, media_type=metrics.CONTENT_TYPE)
