"""Webhook bodies, FAL's current form and the older ones, normalised into one event."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.fal import flux_lora
from service.fal.comment import parse_comment


class EventStatus(enum.StrEnum):
    """What a webhook (or a status poll) says about a training, normalised from every dialect."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    # FAL said OK but could not serialise the output: the result must be fetched separately.
    RESULT_PENDING = "result_pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # FAL accepted a cancel of a running request (its cancel answer, never a webhook): the
    # request may still finish.
    CANCEL_REQUESTED = "cancel_requested"


TRAINING_TYPES = ("portrait", "style")
MAX_ID_LENGTH = 128
MAX_ERROR_LENGTH = 2000

# Every status word seen from FAL's webhooks, its status API and the old BFL fine-tune API.
_STATUS_WORDS: dict[str, EventStatus] = {
    "ok": EventStatus.COMPLETED,
    "completed": EventStatus.COMPLETED,
    "complete": EventStatus.COMPLETED,
    "ready": EventStatus.COMPLETED,
    "success": EventStatus.COMPLETED,
    "succeeded": EventStatus.COMPLETED,
    "error": EventStatus.FAILED,
    "failed": EventStatus.FAILED,
    "failure": EventStatus.FAILED,
    "in_progress": EventStatus.IN_PROGRESS,
    "training": EventStatus.IN_PROGRESS,
    "processing": EventStatus.IN_PROGRESS,
    "running": EventStatus.IN_PROGRESS,
    "in_queue": EventStatus.QUEUED,
    "queued": EventStatus.QUEUED,
    "pending": EventStatus.QUEUED,
    "cancelled": EventStatus.CANCELLED,
    "canceled": EventStatus.CANCELLED,
}


class PayloadError(ValueError):
    """The body cannot be understood; the message says why (answer 400)."""


class RequestIdMismatch(PayloadError):
    """The signed header names neither of the body's ids: not this body's signature."""


@dataclass(frozen=True)
class Event:
    """One webhook, whatever dialect it came in."""

    request_id: str
    status: EventStatus
    progress: int | None = None
    lora_url: str | None = None
    config_url: str | None = None
    error_message: str | None = None
    avatar_id: str | None = None
    training_type: str | None = None
    comment_user_id: str | None = None
    # The `?generation_id=` of a generation's webhook URL, as `avatar_id` is a training's.
    generation_id: str | None = None
    # A generation's output (flux-lora's images, their safety flags and the seed); None for a
    # training's, or when the output had no readable images (then `error_message` says why).
    generated: flux_lora.Result | None = None


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("the body is nested too deeply") from None
    except ValueError as exc:
        # For example an integer of more digits than Python agrees to convert.
        raise PayloadError(f"the body is not acceptable JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PayloadError(f"the body must be a JSON object, not {type(body).__name__}")
    return body


def parse_event(
    body: Mapping[str, Any],
    query: Mapping[str, str],
    signed_request_id: str | None = None,
) -> Event:
    """Normalise a decoded body plus query parameters into an Event, or raise PayloadError."""
    request_id = _request_id(body, signed_request_id)
    status = _status(body)
    meta = parse_comment(body.get("comment") or body.get("finetune_comment"))
    avatar_id = _optional_id(query.get("avatar_id"), "avatar_id") or _optional_id(
        meta.get("avatar_id"), "comment avatar_id"
    )
    training_type = query.get("training_type") or meta.get("training_type")
    if training_type is None and isinstance(body.get("training_type"), str):
        training_type = body["training_type"]
    if training_type is not None and training_type not in TRAINING_TYPES:
        training_type = None
    payload = body.get("payload")
    lora_url = config_url = error_message = None
    generated = None
    if status is EventStatus.COMPLETED:
        if payload is None and body.get("payload_error"):
            status = EventStatus.RESULT_PENDING
        lora_url = _file_url(payload, "diffusers_lora_file") or _str(body.get("lora_url"))
        config_url = _file_url(payload, "config_file") or _str(body.get("config_url"))
        generated, error_message = _generated(payload)
    elif status is EventStatus.FAILED:
        error_message = _error_message(body)
    return Event(
        request_id=request_id,
        status=status,
        progress=_progress(body.get("progress")),
        lora_url=lora_url,
        config_url=config_url,
        error_message=error_message,
        avatar_id=avatar_id,
        training_type=training_type,
        comment_user_id=meta.get("user_id"),
        generation_id=_optional_id(query.get("generation_id"), "generation_id"),
        generated=generated,
    )


def from_result(
    request_id: str, output: Mapping[str, Any] | None, error: str | None = None
) -> Event:
    """The event a finished request's result means: completed with its files, or failed.

    For what the bot learns by asking FAL (its result URL) rather than from a webhook; the
    same rules as a webhook body carrying that output as `payload`.
    """
    if error is None:
        generated, problem = _generated(output)
        return Event(
            request_id=request_id,
            status=EventStatus.COMPLETED,
            lora_url=_file_url(output, "diffusers_lora_file"),
            config_url=_file_url(output, "config_file"),
            error_message=problem,
            generated=generated,
        )
    return Event(
        request_id=request_id,
        status=EventStatus.FAILED,
        error_message=_error_message({"error": error, "payload": output}),
    )


def _generated(payload: object) -> tuple[flux_lora.Result | None, str | None]:
    """A generation's images from a finished request's output (one that has `images`), or
    why they cannot be read. A training's output has none: (None, None)."""
    if not isinstance(payload, Mapping) or "images" not in payload:
        return None, None
    try:
        return flux_lora.read_output(payload), None
    except flux_lora.OutputError as exc:
        # Recorded, not refused: a 400 would only make FAL send the same body again.
        return None, f"FAL's output could not be read: {exc}"[:MAX_ERROR_LENGTH]


def _request_id(body: Mapping[str, Any], signed_request_id: str | None) -> str:
    in_body = body.get("request_id", body.get("finetune_id"))
    if in_body is not None and (not isinstance(in_body, str | int) or isinstance(in_body, bool)):
        raise PayloadError("request_id must be a string")
    body_id = str(in_body).strip() if in_body is not None else ""
    gateway = body.get("gateway_request_id")
    # FAL signs with either id: they differ when it retried the run. The queue's request_id is
    # what the job is registered under, so that is the one matched.
    if signed_request_id and body_id and signed_request_id not in (body_id, gateway):
        raise RequestIdMismatch(
            "the signed X-Fal-Webhook-Request-Id is neither the body's request_id nor its "
            "gateway_request_id"
        )
    request_id = body_id or signed_request_id
    if not request_id:
        raise PayloadError("no request id: expected request_id (or finetune_id)")
    if len(request_id) > MAX_ID_LENGTH or not request_id.isprintable():
        raise PayloadError("request_id is too long or has control characters")
    return request_id


def _status(body: Mapping[str, Any]) -> EventStatus:
    raw = body.get("status")
    if not isinstance(raw, str) or not raw.strip():
        raise PayloadError("status must be a non-empty string such as OK, ERROR or completed")
    status = _STATUS_WORDS.get(raw.strip().lower())
    if status is None:
        raise PayloadError(f"unknown status {raw[:40]!r}")
    return status


def _optional_id(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 32 or not value.isprintable():
        raise PayloadError(f"{name} must be a short string")
    return value.strip() or None


def _progress(value: object) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            raise PayloadError("progress must be a number from 0 to 100") from None
    if not isinstance(value, int | float) or value != value:
        raise PayloadError("progress must be a number from 0 to 100")
    # Older senders gave a fraction (0.42), newer ones a percentage (42).
    percent = value * 100 if 0 < value < 1 else value
    return int(max(0, min(100, percent)))


def _file_url(payload: object, key: str) -> str | None:
    if not isinstance(payload, Mapping):
        return None
    item = payload.get(key)
    if isinstance(item, Mapping):
        return _str(item.get("url"))
    return _str(item)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_message(body: Mapping[str, Any]) -> str:
    """A sentence a person can read, from `error`, `message` and FAL's 422 `detail` list."""
    parts: list[str] = []
    for key in ("error", "message"):
        if isinstance(body.get(key), str) and body[key].strip():
            parts.append(body[key].strip())
    payload = body.get("payload")
    details = payload.get("detail") if isinstance(payload, Mapping) else None
    if isinstance(details, list):
        for item in details[:5]:
            if isinstance(item, Mapping) and isinstance(item.get("msg"), str):
                where = item.get("loc")
                field = ".".join(str(p) for p in where) if isinstance(where, list) else ""
                parts.append(f"{field}: {item['msg']}" if field else item["msg"])
            elif isinstance(item, str):
                parts.append(item)
    elif isinstance(details, str):
        parts.append(details)
    message = "; ".join(parts) or "training failed without a reason from FAL"
    return message[:MAX_ERROR_LENGTH]
