"""The webhook endpoint: raw body -> verify -> parse -> one transaction -> answer."""

from __future__ import annotations

import time
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import metrics
from service.fal.keyset import KeySetUnavailable
from service.fal.payload import PayloadError, RequestIdMismatch, parse_body, parse_event
from service.fal.signature import (
    SignatureError,
    SignedHeaders,
    has_signature_headers,
    parse_headers,
)
from service.jobs.ingest import Delivery, Result, ingest, ingest_matched
from service.settings import MAX_BODY_BYTES
from service.store.engine import DatabaseUnavailable, run_transaction, within
from service.web.edges import RequestRefused, client_address, error_response, in_networks, read_body
from service.web.runtime import Runtime

log = structlog.get_logger("service.webhook")

# Kept with the event so it can be replayed; everything else a proxy adds is noise.
_KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
    "x-forwarded-for",
)


async def status_update(request: Request) -> Response:
    """POST /api/v1/avatar/status_update (and the old path): FAL's training callbacks."""
    started = time.perf_counter()
    runtime: Runtime = request.app.state.runtime
    client = client_address(request.scope, runtime.settings.forwarded_allow_ips)
    # The scope's own path: Starlette's `request.url` builds and parses a whole URL.
    fields: dict[str, Any] = {"client": client, "path": request.scope["path"]}
    try:
        answer = await _handle(request, runtime, client, fields)
    except RequestRefused as refused:
        answer = error_response(refused.status, refused.error, refused.detail)
        fields.update(outcome=refused.error, detail=refused.detail)
    duration = time.perf_counter() - started
    metrics.WEBHOOKS.labels(fields.get("outcome", "unknown")).inc()
    metrics.WEBHOOK_SECONDS.observe(duration)
    level = "info" if answer.status_code < 400 else "warning"
    getattr(log, level)(
        "webhook", http_status=answer.status_code, duration_ms=round(duration * 1000, 2), **fields
    )
    return answer


async def _handle(
    request: Request, runtime: Runtime, client: str | None, fields: dict[str, Any]
) -> Response:
    settings = runtime.settings
    if settings.allowed_ips and not in_networks(client, settings.allowed_ips):
        raise RequestRefused(403, "forbidden", "this client may not call the webhook")
    headers = _first_of_each(request)
    signed: SignedHeaders | None = None
    # Everything the headers alone can refuse is refused before the body is read: a stranger's
    # unsigned or stale request costs no memory for its body.
    if has_signature_headers(headers):
        # A request that claims to be signed is verified wherever it comes from.
        try:
            signed = parse_headers(headers, now=runtime.clock())
        except SignatureError as exc:
            raise RequestRefused(401, "bad_signature", str(exc)) from None
    elif settings.fal_webhook_verify != "off" and not in_networks(
        client, settings.webhook_unsigned_from
    ):
        raise RequestRefused(401, "unsigned", "the request carries no X-Fal-Webhook-* signature")
    raw = await read_body(request, MAX_BODY_BYTES)
    signed_request_id: str | None = None
    if signed is not None:
        try:
            await runtime.keyset.verify(signed, raw)
        except SignatureError as exc:
            raise RequestRefused(401, "bad_signature", str(exc)) from None
        except KeySetUnavailable as exc:
            raise RequestRefused(503, "keys_unavailable", str(exc)) from None
        signed_request_id = signed.request_id
        # Only verified signatures: a stranger's timestamps must not move it.
        metrics.FAL_CLOCK_SKEW.set(runtime.clock() - signed.timestamp)
    try:
        event = parse_event(parse_body(raw), request.query_params, signed_request_id)
    except RequestIdMismatch as exc:
        metrics.REQUEST_ID_MISMATCHES.inc()
        raise RequestRefused(400, "request_id_mismatch", str(exc)) from None
    except PayloadError as exc:
        raise RequestRefused(400, "bad_request", str(exc)) from None
    fields.update(request_id=event.request_id, event_status=event.status.value)
    delivery = Delivery(
        raw_body=raw,
        event=event,
        headers={name: headers[name] for name in _KEPT_HEADERS if name in headers},
        query=request.scope["query_string"].decode(),
        client_ip=client,
        signed=signed_request_id is not None,
    )
    try:
        result = await within(settings.webhook_database_timeout_seconds, _ingest(runtime, delivery))
    except DatabaseUnavailable as exc:
        fields["db_error"] = str(exc)
        raise RequestRefused(503, "database_unavailable", "the database is unavailable") from exc
    except IntegrityError as exc:
        # The event would break a rule of the stored data (one bot training per person, for
        # an old-style progress event about a draft): nothing was written; retrying won't help.
        fields["db_error"] = str(exc.orig).splitlines()[0]
        raise RequestRefused(
            409, "conflict", "the event contradicts the stored state and was not recorded"
        ) from exc
    if result.notification_enqueued:
        runtime.wake_dispatcher()
    fields.update(
        outcome=result.outcome.value,
        avatar_id=result.avatar_id,
        generation_id=result.generation_id,
        transition=result.transition,
        notification_enqueued=result.notification_enqueued,
    )
    return JSONResponse({"status": result.outcome.value, "request_id": result.request_id})


def _first_of_each(request: Request) -> dict[str, str]:
    """The request's headers by lower-case name, the first of a repeated one (as Starlette's
    `headers[name]`): a dozen look-ups follow, and each of Starlette's scans the whole list."""
    found: dict[str, str] = {}
    for name, value in request.headers.items():
        found.setdefault(name, value)
    return found


async def _ingest(runtime: Runtime, delivery: Delivery) -> Result:
    """A registered job's event on the driver's connection (a read and one guarded write)
    where the database allows it; everything else, and every event on SQLite, in a session's
    transaction."""
    if runtime.direct is not None:
        matched = await runtime.direct.run(lambda tx: ingest_matched(tx, delivery))
        if matched is not None:
            return matched
    return await run_transaction(runtime.sessions, lambda s: ingest(s, delivery))
