"""Telegram trouble: 30 % of sendMessage calls answered 5xx, bursts of 429 with retry_after,
then a total outage (60 s with TORTURE=full): every message is delivered once afterwards."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Iterable

import psycopg
import pytest

from tests.fakes.telegram_api import Call, FakeBotApi, Fault
from tests.support.sender import Sender, Webhook, sources
from tests.support.servers import wait_until
from tests.support.stack import Deployment
from tests.support.trainings import seed_trainings
from tests.support.webhooks import fal_error, fal_ok
from tests.torture.ledger import tally
from tests.torture.runs import delivered, drain, record, size, start

pytestmark = [pytest.mark.torture, pytest.mark.postgres, pytest.mark.nginx]

RATE = 10  # webhooks per second
BURST = 5  # calls answered 429 in a row
RETRY_AFTER = 1


def retries_after_429(calls: list[Call]) -> list[tuple[float, float]]:
    """For each 429: (seconds until the same chat's next try, seconds that try came after
    sending was allowed again, i.e. after the latest retry_after so far ran out)."""
    by_chat: dict[int, list[Call]] = defaultdict(list)
    for call in calls:
        by_chat[int(call.params["chat_id"])].append(call)
    limited = [c for c in calls if c.status == 429]
    gaps = []
    for chat_calls in by_chat.values():
        for first, then in itertools.pairwise(chat_calls):
            if first.status == 429:
                allowed = max(c.at + RETRY_AFTER for c in limited if c.at < then.at)
                gaps.append((then.at - first.at, then.at - allowed))
    return gaps


def troubled(calls: int) -> list[Fault]:
    """30 % of `calls` answered 5xx (500, 502, 503 in turn), the rest delivered."""
    codes = {1: 500, 4: 502, 7: 503}
    return [
        Fault.server_error(codes[i % 10]) if i % 10 in codes else Fault.ok() for i in range(calls)
    ]


def count_429(api: FakeBotApi) -> int:
    return sum(c.status == 429 for c in api.calls_to("sendMessage"))


@pytest.mark.timeout(600)
def test_5xx_429_and_an_outage_end_with_every_message_delivered_once(
    deployment: Deployment,
    database: str,
) -> None:
    half = size(quick=30, full=150)
    # Quick, 4 s: long enough for three failed tries of the first rows (at 0, 1 and 2-3 s, the
    # next due only after Telegram is back), so the backlog waits out back-offs the recovery
    # must bring forward, and the outage's 502s outnumber the planned 500s several times over.
    outage = size(quick=4, full=60)
    # Telegram's own pace here: 429 handling is what is under test.
    api, signer, client_context = deployment.api, deployment.signer, deployment.context
    with start(deployment, database, TELEGRAM_RATE_PER_SECOND="30") as stack:
        trainings = seed_trainings(database, 2 * half, first_chat=4_000_000, name="Trouble")
        addresses = sources(2 * half // 10 + 1)
        webhooks = [
            # Every fourth training fails: both outcome messages go through the same trouble.
            Webhook(t.request_id, (fal_error if i % 4 == 3 else fal_ok)(t.request_id), source)
            for i, (t, source) in enumerate(
                zip(trainings, [a for a in addresses for _ in range(10)], strict=False)
            )
        ]
        sender = Sender(stack.port, client_context, signer, attempts=5)

        # Trouble: a burst of 429 in each quarter of the webhooks, and 3 calls in 10 answered
        # 5xx around them (planned, so exactly 30 %).
        first = []
        for burst, part in enumerate((webhooks[: half // 2], webhooks[half // 2 : half]), 1):
            api.plan("sendMessage", [Fault.retry_after(RETRY_AFTER)] * BURST + troubled(10 * half))
            first += sender.deliver_all(part, rate=RATE)
            wait_until(lambda n=burst: count_429(api) >= n * BURST, 30, what="429 burst")
            drain(database, timeout=60, quiet=0)

        # Then Telegram is gone (nginx in front of it answers 502) while the rest arrive.
        api.down = True
        down_at = time.monotonic()
        second = sender.deliver_all(webhooks[half:], rate=2 * half / outage)
        time.sleep(max(0.0, down_at + outage - time.monotonic()))
        api.plan("sendMessage", [])
        api.down = False
        up_at = time.monotonic()
        drain(database, timeout=size(quick=60, full=180))
        delivered_at = max(at for _, at in delivered(api))

        calls = api.calls_to("sendMessage")
        ledger = record(
            tally("Telegram trouble", first + second, trainings, database, delivered(api))
        )
        answers: dict[int | None, int] = defaultdict(int)
        for call in calls:
            answers[call.status] += 1
        gaps = retries_after_429(calls)
        ledger.notes = {
            "sendMessage answers": dict(sorted(answers.items(), key=str)),
            "outage s": outage,
            "last message s after the outage": round(delivered_at - up_at, 1),
            "429 -> same message again s": _span(g for g, _ in gaps),
            "... after sending was allowed again s": _span(late for _, late in gaps),
            # Sends already reserved when a 429 came still go out (the pause holds back new
            # ones only): how many calls fell inside some 429's retry_after.
            "calls inside a 429 pause": sum(
                any(p.at < c.at < p.at + RETRY_AFTER for p in calls if p.status == 429)
                for c in calls
                if c.status != 429
            ),
        }
        with psycopg.connect(database, autocommit=True) as conn:
            query = "SELECT state, count(*) FROM notifications GROUP BY 1"
            states: dict[str, int] = dict(conn.execute(query))

    ledger.check()
    assert ledger.acknowledged == ledger.sent == 2 * half, ledger
    assert ledger.messages_received == 2 * half and ledger.duplicates == 0, ledger
    assert states == {"sent": 2 * half}, states
    # The trouble really happened: 5xx answers, both bursts of 429, the outage's 502s.
    assert answers[429] == 2 * BURST, answers
    before = [c for c in calls if c.at < down_at and c.status != 429]
    assert sum(c.status in (500, 502, 503) for c in before) >= 0.25 * len(before), answers
    assert answers[502] > answers[500], "the outage's 502s"
    assert not [c for c in calls if c.ok and down_at < c.at < up_at], "delivered while down"
    # After a 429 the same message is tried again retry_after seconds later (later still when
    # another 429 paused all sending meanwhile), and not much later than sending may resume.
    assert len(gaps) == 2 * BURST, gaps
    assert all(gap >= RETRY_AFTER - 0.05 and late <= 2.0 for gap, late in gaps), gaps


def _span(values: Iterable[float]) -> str:
    ordered = sorted(values)
    return f"{ordered[0]:.2f}..{ordered[-1]:.2f}" if ordered else "-"
