"""The account each torture scenario ends with, taken from the sender, the database and the
local Bot API server, and the promises it is checked against:

- nothing acknowledged is missing: every webhook answered 2xx is a row in webhook_events (by its
  dedupe key), every acknowledged outcome moved its avatar, was enqueued, and reached Telegram;
- no avatar outcome produced two messages, except where a dispatcher was killed between
  Telegram's acceptance and our record of it (counted apart: `crash_window_duplicates`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, pool, text

from service.store.engine import sync_url
from tests.support.sender import Delivery, statuses
from tests.support.trainings import Training

# A kill up to this long after a message's delivery may have hit before its record. The record
# follows Telegram's answer within milliseconds on a quiet machine, but with two suites running
# side by side on 2 cores (make test's workers) a starved dispatcher took over 0.5 s to commit
# it; a resend by a live dispatcher would come a lease later, far outside this window.
CRASH_WINDOW_SECONDS = 2.0
# How long before the first delivery's record the dispatcher may have died with it in flight.
IN_FLIGHT_SECONDS = 1.0
TERMINAL = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Kill:
    at: float  # time.monotonic()
    pid: int
    leader: bool  # held the dispatcher's lock when it was killed


@dataclass
class Ledger:
    scenario: str
    sent: int
    attempts: int
    acknowledged: int
    answers: dict[int, int]
    rows_recorded: int
    notifications_enqueued: int
    messages_received: int
    duplicates: int
    crash_window_duplicates: int
    lost: list[str] = field(default_factory=list)
    undelivered: list[int] = field(default_factory=list)
    unexplained_duplicates: list[int] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        answers = ", ".join(f"{k or 'none'}: {v}" for k, v in sorted(self.answers.items()))
        return {
            "scenario": self.scenario,
            "sent": self.sent,
            "attempts": self.attempts,
            "acknowledged (2xx)": self.acknowledged,
            "answers": answers,
            "rows recorded": self.rows_recorded,
            "notifications enqueued": self.notifications_enqueued,
            "messages received": self.messages_received,
            "duplicates": self.duplicates,
            "of them crash window": self.crash_window_duplicates,
            "lost": len(self.lost),
        }

    def check(self) -> None:
        """The two promises; AssertionError with the ledger when one is broken."""
        assert not self.lost, f"acknowledged but missing: {self.lost[:20]}\n{self}"
        assert not self.undelivered, f"acknowledged outcomes never delivered: {self}"
        assert not self.unexplained_duplicates, f"avatar outcomes sent twice: {self}"
        assert self.duplicates == self.crash_window_duplicates, self


def dedupe_key(request_id: str, body: bytes) -> str:
    # The service's definition (service.jobs.ingest.Delivery.dedupe_key), restated: a test that
    # imported it would agree with any change to it.
    return hashlib.sha256(request_id.encode() + b"\n" + body).hexdigest()


def rows(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """What `sql` reads, on PostgreSQL or SQLite alike (the disk-full scenario's is SQLite)."""
    engine = create_engine(sync_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def tally(
    scenario: str,
    deliveries: Sequence[Delivery],
    trainings: Iterable[Training],
    database_url: str,
    messages: Sequence[tuple[int, float]],
    kills: Sequence[Kill] = (),
) -> Ledger:
    """The ledger of one run; `messages` are (chat_id, monotonic time) of delivered sends."""
    by_request = {t.request_id: t for t in trainings}
    acknowledged = [d for d in deliveries if d.acknowledged]
    request_ids = sorted({d.webhook.request_id for d in deliveries})
    wanted = set(request_ids)
    recorded = {
        key
        for rid, key in rows(database_url, "SELECT request_id, dedupe_key FROM webhook_events")
        if rid in wanted
    }
    status: dict[str, str] = {
        rid: state
        for rid, state in rows(
            database_url,
            "SELECT j.request_id, a.status FROM fal_jobs j JOIN avatars a ON a.id = j.avatar_id",
        )
        if rid in wanted
    }
    enqueued = Counter(
        chat
        for rid, chat in rows(
            database_url,
            "SELECT j.request_id, n.chat_id FROM notifications n "
            "JOIN fal_jobs j ON j.avatar_id = n.avatar_id",
        )
        if rid in wanted
    )
    lost = [
        d.webhook.request_id
        for d in acknowledged
        if dedupe_key(d.webhook.request_id, d.webhook.body) not in recorded
    ]
    # Outcomes that must have produced a message: an acknowledged delivery moved the avatar on.
    finished = {
        by_request[d.webhook.request_id].chat_id
        for d in acknowledged
        if d.webhook.request_id in by_request and status.get(d.webhook.request_id) in TERMINAL
    }
    times: dict[int, list[float]] = {}
    for chat, at in messages:
        times.setdefault(chat, []).append(at)
    ours = {t.chat_id for t in by_request.values()}
    duplicates = crash_window = 0
    unexplained: list[int] = []
    crash_gaps: list[float] = []
    for chat, seen in times.items():
        if chat not in ours or len(seen) < 2:
            continue
        first = min(seen)
        duplicates += len(seen) - 1
        # A kill may also come just before the first delivery is recorded: the send was on the
        # socket when the dispatcher died, and Telegram's side took it a moment later.
        gaps = [k.at - first for k in kills if k.leader and k.at - first >= -IN_FLIGHT_SECONDS]
        if gaps and min(gaps) <= CRASH_WINDOW_SECONDS:
            crash_window += len(seen) - 1
            crash_gaps.append(round(min(gaps), 3))
        else:
            unexplained.append(chat)
    return Ledger(
        scenario=scenario,
        sent=len(deliveries),
        attempts=sum(len(d.attempts) for d in deliveries),
        acknowledged=len(acknowledged),
        answers=dict(statuses(deliveries)),
        rows_recorded=len(recorded),
        notifications_enqueued=sum(enqueued.values()),
        messages_received=sum(len(v) for c, v in times.items() if c in ours),
        duplicates=duplicates,
        crash_window_duplicates=crash_window,
        lost=lost,
        undelivered=sorted(chat for chat in finished if chat not in times),
        unexplained_duplicates=sorted(unexplained),
        notes={"seconds from first delivery to the kill": sorted(crash_gaps)} if crash_gaps else {},
    )
