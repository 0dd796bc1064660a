"""The OpenAPI document of the HTTP interface; tests hold it to what the app really does."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
_ACK = {
    "type": "object",
    "required": ["status", "request_id"],
    "properties": {
        "status": {"type": "string", "enum": ["received", "duplicate", "unmatched", "ignored"]},
        "request_id": {"type": "string"},
    },
}
_WEBHOOK_BODY = {
    "type": "object",
    "description": "FAL's webhook body (status OK/ERROR, payload, error, payload_error) or an "
    "older form (finetune_id, word statuses, progress, message, comment).",
    "properties": {
        "request_id": {"type": "string"},
        "finetune_id": {"type": "string"},
        "gateway_request_id": {"type": "string"},
        "status": {"type": "string"},
        "payload": {"type": ["object", "null"]},
        "error": {"type": "string"},
        "payload_error": {"type": "string"},
        "progress": {"type": ["number", "string"]},
        "message": {"type": "string"},
        "comment": {"type": "string"},
        "training_type": {"type": "string"},
    },
    "additionalProperties": True,
}


def _webhook_operation(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [
            {"name": "avatar_id", "in": "query", "required": False, "schema": {"type": "string"}},
            {
                "name": "generation_id",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
            },
            {
                "name": "training_type",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
            },
        ]
        + [
            {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
            for name in (
                "X-Fal-Webhook-Request-Id",
                "X-Fal-Webhook-User-Id",
                "X-Fal-Webhook-Timestamp",
                "X-Fal-Webhook-Signature",
            )
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _WEBHOOK_BODY}},
        },
        "responses": {
            "200": _json(_ACK, "Recorded (or recognised as a repeat) and committed"),
            "400": {
                "description": "Malformed body or no request id; will never succeed. A request "
                "the HTTP server cannot parse at all (for example a control character in a "
                "header value) is refused before it reaches the app, in plain text.",
                "content": {"application/json": {"schema": _ERROR}, "text/plain": {}},
            },
            "401": _json(_ERROR, "Signature missing, invalid or stale"),
            "403": _json(_ERROR, "Client address not allowed"),
            "409": _json(_ERROR, "The event contradicts the stored state; nothing recorded"),
            "413": _json(_ERROR, "Body over 10 MiB"),
            "503": _json(_ERROR, "Database or FAL's key set unavailable; retry later"),
        },
    }


def _database_read(summary: str, ok: str, description: str = "") -> dict[str, Any]:
    """A GET answered from the database: a JSON object, or 503 while the database is down."""
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": _json({"type": "object"}, ok),
            "503": _json({"type": "object"}, "Database unavailable"),
        },
    }
    if description:
        operation["description"] = description
    return {"get": operation}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "aibots.kz webhook service", "version": "0.1.0"},
    "paths": {
        "/api/v1/avatar/status_update": {
            "post": _webhook_operation("FAL training or generation callback")
        },
        "/api/avatar/status_update": {
            "post": _webhook_operation(
                "FAL training or generation callback (old path, same handler)"
            )
        },
        "/health": _database_read("Liveness and database check", "Healthy"),
        "/api/v1/webhook/status": _database_read(
            "Event and notification counts, verification mode",
            "Status",
            "Every count is exact as of the request (no cache): events by "
            "outcome and notifications by state come from tallies kept up to a mark plus "
            "the rows of the last minutes, so a read costs the same on any table size. "
            "last_event_at is the newest received_at; the oldest pending age is read "
            "from the unsent notifications only. generations: by status (every status), "
            "with the age of the oldest unfinished one.",
        ),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "description": "Process metrics of every worker, and gauges read from the "
                "database at each scrape, exact as of the scrape (webhook_events by outcome, "
                "notifications by state: the same counts as /api/v1/webhook/status).",
                "responses": {
                    "200": {"description": "Text format", "content": {"text/plain": {}}},
                    "403": _json(_ERROR, "Through nginx, from anywhere but the host itself"),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI document")},
            }
        },
        "/api/v1/training-data/{token}.zip": {
            "get": {
                "summary": "A training's photos as a zip, for FAL (unguessable, expiring URL)",
                "parameters": [
                    {
                        "name": "token",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The zip of the photos",
                        "content": {"application/zip": {}},
                    },
                    "404": _json(_ERROR, "Unknown, expired, or the training has ended"),
                    "503": _json(_ERROR, "Database unavailable; retry later"),
                },
            }
        },
    },
}


async def document(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
