"""Telegram stalls: a proxy in front of the local Bot API server accepts connections, reads the
requests and never answers. First one chat's call alone (the others must not wait behind it),
then every call for 60 s (8 s quick). What was written into the stall is `uncertain`, counted
(`notifications list --state uncertain`, the `notifications` gauge, telegram_sends_total);
what never was is delivered afterwards on its own; the operator's `notifications retry
--uncertain` delivers the rest, once each."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from tests.support.proxy import StallingProxy
from tests.support.sender import Background, Sender, Webhook, sources
from tests.support.servers import run_cli, wait_until
from tests.support.stack import Deployment, Stack
from tests.support.trainings import seed_trainings
from tests.support.webhooks import fal_ok
from tests.torture.ledger import tally
from tests.torture.runs import delivered, drain, record, size, start

pytestmark = [pytest.mark.torture, pytest.mark.postgres, pytest.mark.nginx]

FIRST_CHAT = 7_100_000


def states(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM notifications GROUP BY 1"))


def scraped(stack: Stack, line_start: str) -> float:
    """One sample of GET /metrics, summed over the lines that start with `line_start`."""
    text = stack.call("GET", "/metrics").body.decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


@pytest.mark.timeout(600)
def test_a_stalled_telegram_leaves_uncertain_counted_and_the_rest_delivered(
    deployment: Deployment,
    database: str,
) -> None:
    alone, stalled = 10, size(quick=60, full=300)
    stall, read_timeout = float(size(quick=8, full=60)), size(quick=4, full=10)
    api = deployment.api
    with (
        StallingProxy(int(api.url.rsplit(":", 1)[1])) as proxy,
        start(
            deployment,
            database,
            TELEGRAM_API_URL=proxy.url,
            TELEGRAM_READ_TIMEOUT_SECONDS=str(read_timeout),
            # A lease shorter than the read timeout would hand a stalled row out again.
            OUTBOX_LEASE_SECONDS=str(3 * read_timeout),
        ) as stack,
    ):
        trainings = seed_trainings(database, alone + stalled, first_chat=FIRST_CHAT, name="Stalled")
        addresses = sources(len(trainings) // 10 + 1)
        webhooks = [
            Webhook(t.request_id, fal_ok(t.request_id), addresses[i // 10])
            for i, t in enumerate(trainings)
        ]
        sender = Sender(stack.port, deployment.context, deployment.signer, attempts=5)

        # One call stuck: the first chat's; the others are sent while it hangs.
        proxy.hold(f"chat_id={FIRST_CHAT}&".encode())
        first = sender.deliver_all(webhooks[:1])
        wait_until(lambda: proxy.held_requests(b"sendMessage") == 1, 20, what="the stuck call")
        stuck_at = proxy.held_at[0][0]
        first += sender.deliver_all(webhooks[1:alone])
        wait_until(lambda: len(delivered(api)) == alone - 1, 30, what="the other chats")
        others_done = max(at for _, at in delivered(api)) - stuck_at
        wait_until(lambda: states(database).get("uncertain") == 1, 30, what="one uncertain")
        proxy.release()

        # Everything stuck: calls written into the stall hang until the read timeout; the
        # completions keep coming meanwhile.
        proxy.stall()
        stalled_at = time.monotonic()
        run = Background(sender, webhooks[alone:], concurrency=8, rate=stalled / (0.75 * stall))
        time.sleep(max(0.0, stalled_at + stall - time.monotonic()))
        proxy.release()
        released_at = time.monotonic()
        second = run.result(timeout=120)
        drain(database, timeout=120)
        written = proxy.held_requests(b"sendMessage")
        before_operator = states(database)
        listed = json.loads(
            run_cli(
                "notifications", "list", "--state", "uncertain", "--json", env=stack.apps[0].env
            ).stdout
        )
        gauge = scraped(stack, 'notifications{state="uncertain"}')
        counted = scraped(stack, 'telegram_sends_total{result="uncertain"}')
        delivered_alone = len(delivered(api))

        # The operator's decision for uncertain notifications (README, Reliability): resend.
        resent = run_cli("notifications", "retry", "--uncertain", env=stack.apps[0].env)
        drain(database, timeout=60)
        ledger = record(
            tally("Telegram stall", first + second, trainings, database, delivered(api))
        )
        ledger.notes = {
            "stall s": stall,
            "read timeout s": read_timeout,
            "other chats delivered while one call hung, within s": round(others_done, 2),
            "calls written into the stalls": written,
            "uncertain (list, gauge, counter)": (len(listed), gauge, counted),
            "delivered without the operator": delivered_alone,
            "resent by the operator": resent.stderr.strip(),
        }
        after_operator = states(database)
        assert "unhandled_error" not in stack.logs()

    ledger.check()
    total = alone + stalled
    assert ledger.acknowledged == ledger.sent == total, ledger
    # The others went while the stuck call was still waiting for its answer.
    assert others_done < read_timeout, ledger.notes
    # Exactly what was written into a stall is uncertain, and it shows in all three places.
    assert 1 < written < total, ledger.notes
    assert before_operator == {"uncertain": written, "sent": total - written}, before_operator
    assert len(listed) == gauge == counted == written, ledger.notes
    assert delivered_alone == total - written, ledger.notes
    assert not [c for c in api.calls_to("sendMessage") if stalled_at < c.at < released_at]
    assert f"re-queued {written}" in resent.stderr, resent.stderr
    assert after_operator == {"sent": total}, after_operator
    assert ledger.messages_received == total and ledger.duplicates == 0, ledger
