"""End to end: from sending a signed webhook through nginx to the local Bot API server receiving
its sendMessage, at a steady rate; then a burst, to see the dispatcher's pacing hold.

(This folds in what bench/notify_latency.py measured before: latency, and the send rate under
the configured TELEGRAM_RATE_PER_SECOND.)
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.fal_keys import FalSigner
from tests.support.sender import Delivery, Sender, Webhook, sources
from tests.support.stack import Stack
from tests.support.trainings import Training
from tests.support.webhooks import fal_ok

# Ten FAL-like addresses: 50 webhooks/s make 5/s each, under the site's 10 r/s per client.
ADDRESSES = 10


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def recorded(record: Path) -> list[dict[str, Any]]:
    """What the local Bot API server has recorded so far, one dict a call."""
    if not record.exists():
        return []
    # The server may be half-way through writing its last line: only whole lines count.
    lines = record.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n") and line.strip()]


def received(record: Path, method: str | None = None) -> dict[int, list[float]]:
    """chat_id -> wall-clock times its messages (of `method`, or any) reached the server."""
    found: dict[int, list[float]] = {}
    for message in recorded(record):
        if method is None or message.get("method") == method:
            found.setdefault(int(message["chat_id"]), []).append(float(message["at"]))
    return found


def wait_for(record: Path, chats: set[int], timeout: float) -> dict[int, list[float]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = received(record)
        if chats <= set(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


@dataclass
class Steady:
    rate: float
    seconds: float
    sent: int
    acknowledged: int
    received: int
    missing: int
    duplicates: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def steady(
    stack: Stack,
    signer: FalSigner,
    trainings: list[Training],
    record: Path,
    rate: float,
) -> Steady:
    addresses = sources(ADDRESSES, network=5)
    webhooks = [
        Webhook(t.request_id, fal_ok(t.request_id), addresses[i % ADDRESSES])
        for i, t in enumerate(trainings)
    ]
    sender = Sender(stack.port, stack.context, signer, attempts=1)
    started = time.monotonic()
    deliveries = sender.deliver_all(webhooks, concurrency=16, rate=rate)
    seconds = time.monotonic() - started
    chat = {t.request_id: t.chat_id for t in trainings}
    acked = [d for d in deliveries if d.acknowledged]
    seen = wait_for(record, {chat[d.webhook.request_id] for d in acked}, timeout=60)
    latencies = latencies_ms(acked, chat, seen)
    ours = {c: times for c, times in seen.items() if c in set(chat.values())}
    return Steady(
        rate=rate,
        seconds=round(seconds, 1),
        sent=len(deliveries),
        acknowledged=len(acked),
        received=sum(len(times) for times in ours.values()),
        missing=sum(1 for d in acked if chat[d.webhook.request_id] not in seen),
        duplicates=sum(len(times) - 1 for times in ours.values()),
        p50_ms=round(statistics.median(latencies), 1),
        p99_ms=round(nearest_rank(latencies, 0.99), 1),
        max_ms=round(max(latencies), 1),
    )


def latencies_ms(
    acked: list[Delivery], chat: dict[str, int], seen: dict[int, list[float]]
) -> list[float]:
    """For each acknowledged webhook whose chat got a message: send to first arrival, in ms."""
    return [
        (min(seen[chat[d.webhook.request_id]]) - _sent(d)) * 1000
        for d in acked
        if chat[d.webhook.request_id] in seen
    ]


def _sent(delivery: Delivery) -> float:
    assert delivery.sent_at is not None
    return delivery.sent_at


def burst(
    stack: Stack, signer: FalSigner, trainings: list[Training], record: Path, limit: float
) -> dict[str, Any]:
    """All at once: how fast the dispatcher delivers them, against its configured limit."""
    addresses = sources(len(trainings) // 25 + 1, network=6)
    webhooks = [
        Webhook(t.request_id, fal_ok(t.request_id), addresses[i // 25])
        for i, t in enumerate(trainings)
    ]
    deliveries = Sender(stack.port, stack.context, signer, attempts=1).deliver_all(webhooks)
    chats = {t.chat_id for t in trainings}
    seen = wait_for(record, chats, timeout=60 + len(trainings) / limit)
    times = sorted(at for c, ats in seen.items() if c in chats for at in ats)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times) if times else 0
    return {
        "webhooks": len(trainings),
        "acknowledged": sum(d.acknowledged for d in deliveries),
        "messages": len(times),
        "seconds": round(span, 2),
        "per_second": round((len(times) - 1) / span, 1) if span else None,
        "busiest_one_second_window": busiest,
        "configured_limit_per_second": limit,
    }
