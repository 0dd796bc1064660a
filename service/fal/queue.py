"""FAL's queue API over httpx: submit a training, ask its status, fetch its result, cancel it.

Errors, sorted by what the person (or the caller) can do:

    FalError
     +-- FalAuthError      401/403, or no FAL_KEY: our configuration; retrying will not help
     +-- FalRejected       400/422: FAL refused the input itself (the detail says why)
     +-- FalNotFound       404: FAL does not know this request (any more)
     +-- FalUnavailable    5xx, 429, a timeout, a refused connection, an unreadable answer:
          |                worth another try later
          +-- FalNoAnswer  sent, unanswered (read timeout, connection reset): FAL may have it
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

DEFAULT_TIMEOUT_SECONDS = 30.0


class FalError(Exception):
    """Any failure talking to FAL; `status` is the HTTP status when FAL answered."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        # FAL's own words for it, when it gave any (shown to the person for a refusal).
        self.detail = detail or message


class FalAuthError(FalError):
    """FAL refused our key (or there is none)."""


class FalRejected(FalError):
    """FAL refused the request's content (validation, 400/422)."""


class FalNotFound(FalError):
    """FAL does not know the request."""


class FalUnavailable(FalError):
    """FAL could not be reached or failed on its side; try again later."""


class FalNoAnswer(FalUnavailable):
    """Sent, but the answer was lost: FAL may have accepted a submission all the same."""


class QueueState(enum.StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class CancelAnswer(enum.StrEnum):
    """What FAL's cancel endpoint says, in its body's `status` (fal.ai docs, "Cancel a request").

    Only OK means the request will never run; a request in progress merely gets a signal and
    may still complete, so CANCELLATION_REQUESTED is not an outcome.
    """

    OK = "OK"  # it was still queued and is removed
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"  # running: the app decides whether to stop
    ALREADY_COMPLETED = "ALREADY_COMPLETED"  # it ended: fetch the result and apply it
    NOT_FOUND = "NOT_FOUND"  # FAL does not know it (any more): resolve through its status


@dataclass(frozen=True)
class Submission:
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None = None


@dataclass(frozen=True)
class QueueStatus:
    state: QueueState
    queue_position: int | None = None
    # A COMPLETED status may say that the run failed, and why.
    error: str | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How a finished request ended: its output, or FAL's error answer for it."""

    succeeded: bool
    output: dict[str, Any]
    http_status: int
    # For a failure: FAL's error type (`X-Fal-Error-Type` or the body's `error_type`) and its
    # explanation in words.
    error_type: str | None = None
    error: str | None = None


class FalQueue:
    """A client for one FAL account; the key goes only to URLs under `queue_url`."""

    def __init__(
        self,
        key: str,
        queue_url: str,
        client: httpx.AsyncClient,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._key = key
        self._queue_url = queue_url.rstrip("/")
        self._client = client
        self._timeout = timeout

    async def submit(self, app_id: str, arguments: dict[str, Any], webhook_url: str) -> Submission:
        """Queue a request for `app_id`; FAL calls `webhook_url` when it ends."""
        url = f"{self._queue_url}/{app_id}?fal_webhook={quote(webhook_url, safe='')}"
        response = await self._call("POST", url, json=arguments)
        body = _object(response)
        try:
            return Submission(
                request_id=_text(body, "request_id"),
                status_url=_text(body, "status_url"),
                response_url=_text(body, "response_url"),
                cancel_url=_text(body, "cancel_url"),
                queue_position=_int_or_none(body.get("queue_position")),
            )
        except KeyError as exc:
            raise FalUnavailable(f"FAL's answer to the submission lacks {exc}") from None

    async def status(self, status_url: str) -> QueueStatus:
        body = _object(await self._call("GET", status_url))
        try:
            state = QueueState(str(body.get("status")))
        except ValueError:
            raise FalUnavailable(f"unknown queue status {body.get('status')!r}") from None
        return QueueStatus(
            state,
            _int_or_none(body.get("queue_position")),
            error=_short_text(body.get("error")),
            error_type=_short_text(body.get("error_type")),
        )

    async def result(self, response_url: str) -> Outcome:
        """The output of a COMPLETED request, or FAL's error answer if the request failed.

        FAL answers a failed request's result with its error: 422 with a `detail` list for the
        model's validation, or 500 (internal) / 504 (timeout) with a `detail`, the error type
        in the `X-Fal-Error-Type` header (older answers put `error_type` in the body). A 5xx
        with none of these is FAL being unwell, so it raises FalUnavailable.
        """
        response = await self._send("GET", response_url)
        if response.status_code == 200:
            return Outcome(True, _object(response), 200)
        body = _maybe_object(response)
        if body is not None and _is_failed_run(response, body):
            error_type = _short_text(response.headers.get("x-fal-error-type")) or _short_text(
                body.get("error_type")
            )
            return Outcome(
                False, body, response.status_code, error_type=error_type, error=_detail(response)
            )
        raise _error_for(response)

    async def cancel(self, cancel_url: str) -> CancelAnswer:
        """Ask FAL to cancel, and say what it answered (see CancelAnswer)."""
        response = await self._send("PUT", cancel_url)
        body = _maybe_object(response) or {}
        try:
            return CancelAnswer(str(body.get("status", "")).upper())
        except ValueError:
            pass
        # No status in the body: the HTTP status is all there is. Never read a bare 2xx as
        # "cancelled": what FAL did is unknown, so the caller tries again later.
        if response.status_code == 400:
            return CancelAnswer.ALREADY_COMPLETED
        if response.status_code == 404:
            return CancelAnswer.NOT_FOUND
        if response.status_code < 300:
            raise FalUnavailable(
                f"FAL answered the cancel with {response.status_code} but no status",
                response.status_code,
            )
        raise _error_for(response)

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self._send(method, url, **kwargs)
        if response.status_code >= 300:
            raise _error_for(response)
        return response

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if not self._key:
            raise FalAuthError("FAL_KEY is not set")
        if not _under(url, self._queue_url):
            # The key must never follow a URL somewhere else, whoever wrote it into the row.
            raise FalUnavailable(f"refusing to send the FAL key to {_origin(url)}")
        try:
            return await self._client.request(
                method,
                url,
                headers={"Authorization": f"Key {self._key}", "Accept": "application/json"},
                timeout=self._timeout,
                **kwargs,
            )
        except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            raise FalNoAnswer(f"FAL did not answer within {self._timeout:g} s") from exc
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise FalNoAnswer(f"FAL's answer was lost: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise FalUnavailable(f"FAL unreachable: {type(exc).__name__}: {exc}") from exc


def _error_for(response: httpx.Response) -> FalError:
    status, detail = response.status_code, _detail(response)
    message = f"FAL answered {status}: {detail}"
    if status in (401, 403):
        return FalAuthError(message, status, detail)
    if status == 404:
        return FalNotFound(message, status, detail)
    if status in (400, 422):
        return FalRejected(message, status, detail)
    return FalUnavailable(message, status, detail)


def _detail(response: httpx.Response) -> str:
    """FAL's explanation in words: its `detail` string, or the messages of a `detail` list."""
    body = _maybe_object(response)
    detail: Any = body.get("detail", body) if body is not None else response.text
    if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
        parts = []
        for item in detail:
            where = item.get("loc")
            field = ".".join(str(p) for p in where[1:] or where) if isinstance(where, list) else ""
            message = str(item.get("msg", ""))
            parts.append(f"{field}: {message}" if field else message)
        detail = "; ".join(parts)
    text = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
    return text.strip()[:500] or response.reason_phrase


def _is_failed_run(response: httpx.Response, body: dict[str, Any]) -> bool:
    """A result answer that is the request's own failure, not FAL's trouble answering."""
    status = response.status_code
    if status in (400, 422):
        return True
    if status < 500:
        return False
    if "x-fal-error-type" in response.headers or "error_type" in body:
        return True
    return status in (500, 504) and isinstance(body.get("detail"), list | str)


def _short_text(value: object, limit: int = 500) -> str | None:
    return value.strip()[:limit] or None if isinstance(value, str) else None


def _maybe_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _object(response: httpx.Response) -> dict[str, Any]:
    body = _maybe_object(response)
    if body is None:
        raise FalUnavailable(f"FAL answered {response.status_code} with no JSON object")
    return body


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise KeyError(key)
    return value


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _under(url: str, base: str) -> bool:
    target, root = urlsplit(url), urlsplit(base)
    return (target.scheme, target.netloc) == (root.scheme, root.netloc) and (
        target.path + "/"
    ).startswith(root.path.rstrip("/") + "/")
