"""A FAL-like sender: signed webhooks over HTTPS through nginx, from many source addresses.

FAL signs every delivery anew (a fresh timestamp), retries what was not answered with a 2xx, and
calls from several addresses. Spreading the calls over loopback addresses keeps each one under
the site's per-client rate limit, so load reaches the service with the limit left in place.
"""

from __future__ import annotations

import http.client
import json
import queue
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tests.fakes.fal_keys import FalSigner
from tests.support.nginx import TLSConnection

WEBHOOK = "/api/v1/avatar/status_update"
# A connection error or a timeout, where an HTTP status would be.
NO_ANSWER = 0


def sources(count: int, network: int = 1) -> list[str]:
    """`count` loopback addresses 127.<network>.x.y, none of them 127.0.0.1 (the host)."""
    return [f"127.{network}.{i // 200}.{i % 200 + 10}" for i in range(count)]


@dataclass(frozen=True)
class Webhook:
    request_id: str
    body: bytes
    source: str
    path: str = WEBHOOK


@dataclass
class Delivery:
    """Every attempt at one webhook: (monotonic time sent, HTTP status or NO_ANSWER)."""

    webhook: Webhook
    attempts: list[tuple[float, int]] = field(default_factory=list)
    result: str | None = None
    acknowledged_at: float | None = None
    # Wall-clock time of the first attempt, to compare with other processes' clocks.
    sent_at: float | None = None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None


class Sender:
    def __init__(
        self,
        port: int,
        context: ssl.SSLContext,
        signer: FalSigner,
        *,
        attempts: int = 1,
        retry_delay: float = 0.5,
        timeout: float = 30.0,
    ) -> None:
        self.port = port
        self.context = context
        self.signer = signer
        self.max_attempts = attempts
        self.retry_delay = retry_delay
        self.timeout = timeout
        # Each thread keeps one keep-alive connection per source address it uses; all of them
        # are also listed here, so that close() can reach the ones of finished threads.
        self._local = threading.local()
        self._opened: list[TLSConnection] = []
        self._lock = threading.Lock()
        # For each attempt that got no answer: how long its connection had been idle since its
        # last answer (None: it was new). nginx closes a keep-alive connection idle for its
        # keepalive_timeout, and http.client finds that out only by sending on it.
        self.unanswered_idle: list[float | None] = []

    def _pool(self) -> dict[str, TLSConnection]:
        pool: dict[str, TLSConnection] = self._local.__dict__.setdefault("pool", {})
        return pool

    def _answered_at(self) -> dict[TLSConnection, float]:
        """When each of this thread's connections last brought an answer."""
        answered: dict[TLSConnection, float] = self._local.__dict__.setdefault("answered", {})
        return answered

    def _connection(self, source: str) -> TLSConnection:
        pool = self._pool()
        if source in pool and pool[source].sock is None and pool[source] not in self._opened:
            # Closed by close(): a fresh one is opened (and listed) below.
            del pool[source]
        if source not in pool:
            if len(pool) >= 8:
                # The one opened last goes: the first seven stay, some of them idle for long.
                _, last = pool.popitem()
                self._answered_at().pop(last, None)
                last.close()
            connection = TLSConnection(self.port, self.context, source, timeout=self.timeout)
            with self._lock:
                self._opened.append(connection)
            pool[source] = connection
        return pool[source]

    def _drop(self, source: str) -> None:
        connection = self._pool().pop(source, None)
        if connection is not None:
            connection.close()

    def attempt(self, webhook: Webhook) -> tuple[int, bytes]:
        """One delivery, signed now; (status, body), or (NO_ANSWER, b"") when none came."""
        headers = {
            "Content-Type": "application/json",
            **self.signer.headers(webhook.body, webhook.request_id),
        }
        connection = self._connection(webhook.source)
        answered = self._answered_at()
        sent = time.monotonic()
        try:
            reply = connection.call("POST", webhook.path, webhook.body, headers)
        except (OSError, http.client.HTTPException):
            # Idle until this attempt was sent: a timeout's own wait must not count.
            last = answered.pop(connection, None)
            with self._lock:
                self.unanswered_idle.append(None if last is None else sent - last)
            self._drop(webhook.source)
            return NO_ANSWER, b""
        answered[connection] = time.monotonic()
        if reply.headers.get("connection", "").lower() == "close":
            answered.pop(connection, None)
            self._drop(webhook.source)
        return reply.status, reply.body

    def deliver(self, webhook: Webhook) -> Delivery:
        """Send until a 2xx or a 4xx (which no retry would change) or the attempts run out."""
        delivery = Delivery(webhook)
        for number in range(self.max_attempts):
            if number:
                time.sleep(self.retry_delay * min(number, 4))
            started = time.monotonic()
            if delivery.sent_at is None:
                delivery.sent_at = time.time()
            status, body = self.attempt(webhook)
            delivery.attempts.append((started, status))
            if 200 <= status < 300:
                delivery.acknowledged_at = time.monotonic()
                delivery.result = json.loads(body)["status"]
                break
            if 400 <= status < 500 and status != 429:
                break
        return delivery

    def deliver_all(
        self, webhooks: Sequence[Webhook], concurrency: int = 16, rate: float | None = None
    ) -> list[Delivery]:
        """All of them, `concurrency` at a time, as fast as possible or `rate` per second."""
        futures = []
        try:
            with ThreadPoolExecutor(concurrency) as pool:
                start = time.monotonic()
                for number, webhook in enumerate(webhooks):
                    delay = start + number / rate - time.monotonic() if rate else 0
                    if delay > 0:
                        time.sleep(delay)
                    futures.append(pool.submit(self.deliver, webhook))
            return [future.result() for future in futures]
        finally:
            self.close()

    def close(self) -> None:
        """Close every connection any thread opened (the threads' pools are left stale)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()


def statuses(deliveries: Iterable[Delivery]) -> Counter[int]:
    """How often each answer came, over every attempt (NO_ANSWER for none)."""
    return Counter(status for d in deliveries for _, status in d.attempts)


class Background:
    """Deliveries sent from a thread while the caller does something else (kills, outages)."""

    def __init__(
        self, sender: Sender, webhooks: Sequence[Webhook], concurrency: int, rate: float | None
    ) -> None:
        self._results: queue.Queue[list[Delivery] | BaseException] = queue.Queue()
        self._thread = threading.Thread(
            target=self._run, args=(sender, webhooks, concurrency, rate), daemon=True
        )
        self._thread.start()

    def _run(
        self, sender: Sender, webhooks: Sequence[Webhook], concurrency: int, rate: float | None
    ) -> None:
        try:
            self._results.put(sender.deliver_all(webhooks, concurrency, rate))
        except BaseException as exc:
            self._results.put(exc)

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float) -> list[Delivery]:
        outcome = self._results.get(timeout=timeout)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
