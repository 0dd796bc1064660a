"""Webhook delivery for the local Bot API server, as Telegram does it.

setWebhook registers an HTTPS URL (ports 443, 80, 88, 8443 unless a test adds its own), a
secret_token, allowed_updates and max_connections; from then on getUpdates answers 409 and
every queued update is POSTed to the URL as JSON with X-Telegram-Bot-Api-Secret-Token, one at
a time, in order, again and again until the answer is a 2xx. deleteWebhook stops that (and with
drop_pending_updates forgets the queue). The connection goes to `address` (127.0.0.1) with the
URL's host name for SNI and Host, so a test's nginx with the aibots.kz certificate answers it;
`context` is the TLS client context that trusts the test's CA.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .telegram_api import FakeBotApi

JsonDict = dict[str, Any]
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
SECRET_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Between two attempts at an update that was not accepted; Telegram waits longer.
RETRY_SECONDS = 0.2


@dataclass(frozen=True)
class Registration:
    url: str
    secret_token: str | None
    allowed_updates: tuple[str, ...]
    max_connections: int


@dataclass(frozen=True)
class Delivery:
    """One POST of an update: its id and the answer's status (None: no answer)."""

    update_id: int
    status: int | None
    body: bytes
    at: float


class _Connection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with the URL's host name for SNI and the Host header."""

    def __init__(
        self, host: str, port: int, address: str, source: str, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, context=context, timeout=15)
        self._address, self._source, self._tls = address, source, context

    def connect(self) -> None:
        raw = socket.create_connection(
            (self._address, self.port), timeout=self.timeout, source_address=(self._source, 0)
        )
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def update_type(update: JsonDict) -> str | None:
    return next((key for key in update if key != "update_id"), None)


class WebhookSender:
    """The webhook half of a FakeBotApi (which holds the queue and the lock it shares)."""

    def __init__(self, api: FakeBotApi) -> None:
        self.api = api
        self.registration: Registration | None = None
        self.context: ssl.SSLContext = ssl.create_default_context()
        self.address = "127.0.0.1"
        self.source = "127.0.0.1"
        self.ports = {443, 80, 88, 8443}
        self.deliveries: list[Delivery] = []
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None

    # -- the Bot API methods ---------------------------------------------------------------

    def set_webhook(self, params: JsonDict) -> bool:
        from .telegram_api import ApiError

        url = str(params.get("url") or "")
        if not url:
            return self.delete_webhook(params)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ApiError(400, "Bad Request: bad webhook: HTTPS url must be provided for webhook")
        if (parts.port or 443) not in self.ports:
            raise ApiError(
                400, "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 "
                "or 8443",
            )  # fmt: skip
        secret = params.get("secret_token")
        if secret is not None and not (
            0 < len(str(secret)) <= 256 and set(str(secret)) <= SECRET_CHARS
        ):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        allowed = params.get("allowed_updates")
        connections = int(params.get("max_connections") or 40)
        if not 1 <= connections <= 100:
            raise ApiError(400, "Bad Request: bad webhook: max_connections must be 1-100")
        with self.api._lock:
            self.registration = Registration(
                url,
                None if secret is None else str(secret),
                tuple(allowed) if isinstance(allowed, list) else (),
                connections,
            )
            self.last_error = None
            self.api._updates_changed.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
                self._thread.start()
        return True

    def delete_webhook(self, params: JsonDict) -> bool:
        with self.api._lock:
            self.registration = None
            if params.get("drop_pending_updates") in (True, "true", "True", "1"):
                self.api._updates.clear()
        return True

    def info(self, pending: int) -> JsonDict:
        found = self.registration
        info: JsonDict = {
            "url": found.url if found else "",
            "has_custom_certificate": False,
            "pending_update_count": pending,
        }
        if found is not None:
            info["max_connections"] = found.max_connections
            if found.allowed_updates:
                info["allowed_updates"] = list(found.allowed_updates)
        if self.last_error is not None:
            info["last_error_message"] = self.last_error
        return info

    # -- for tests -------------------------------------------------------------------------

    def post(
        self, update: JsonDict, secret: str | None = "", source: str | None = None, path: str = ""
    ) -> tuple[int, JsonDict]:
        """POST one update to the registered URL now, outside the queue: `secret` "" sends
        the registered one, None none at all; `path` replaces the URL's path."""
        found = self.registration
        assert found is not None, "no webhook is set"
        token = found.secret_token if secret == "" else secret
        status, body = self._post(found.url, update, token, source or self.source, path)
        assert status is not None, "the webhook did not answer"
        return status, json.loads(body) if body else {}

    def delivered(self, update_id: int) -> list[Delivery]:
        with self.api._lock:
            return [d for d in self.deliveries if d.update_id == update_id]

    # -- delivery --------------------------------------------------------------------------

    def _post(
        self, url: str, update: JsonDict, secret: str | None, source: str, path: str = ""
    ) -> tuple[int | None, bytes]:
        parts = urlsplit(url)
        assert parts.hostname is not None
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers[SECRET_HEADER] = secret
        connection = _Connection(
            parts.hostname, parts.port or 443, self.address, source, self.context
        )
        try:
            connection.request("POST", path or parts.path, json.dumps(update).encode(), headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            return None, str(exc).encode()
        finally:
            connection.close()

    def _next(self) -> tuple[Registration, JsonDict] | None:
        """The registration and the first queued update, waiting for both; None to stop."""
        api = self.api
        with api._updates_changed:
            while not api.stopping.is_set():
                found = self.registration
                if found is not None and api._updates:
                    update = api._updates[0]
                    if found.allowed_updates and update_type(update) not in found.allowed_updates:
                        # Telegram never sends what the bot did not ask for.
                        api._updates.pop(0)
                        continue
                    return found, update
                api._updates_changed.wait(0.5)
        return None

    def _run(self) -> None:
        api = self.api
        while (next_one := self._next()) is not None:
            found, update = next_one
            status, body = self._post(found.url, update, found.secret_token, self.source)
            accepted = status is not None and 200 <= status < 300
            with api._lock:
                self.deliveries.append(Delivery(update["update_id"], status, body, time.time()))
                if accepted and api._updates and api._updates[0] is update:
                    api._updates.pop(0)
                if not accepted:
                    self.last_error = f"Wrong response from the webhook: {status}"
                api._calls_changed.notify_all()
            if not accepted:
                api.stopping.wait(RETRY_SECONDS)
