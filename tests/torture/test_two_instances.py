"""Two instances: two gunicorn services behind one nginx upstream, sharing PostgreSQL, each with
its dispatcher; the one holding the dispatcher's lock is killed mid-run. The sender sees no
failure (nginx passes the POST to the other instance: intake is idempotent), nothing is lost
and no message is sent twice."""

from __future__ import annotations

import time

import pytest

from tests.support.sender import Background, Sender, Webhook, sources
from tests.support.servers import wait_until
from tests.support.stack import Deployment
from tests.support.trainings import seed_trainings
from tests.support.webhooks import fal_ok
from tests.torture.ledger import Kill, tally
from tests.torture.runs import delivered, drain, record, size, start

pytestmark = [pytest.mark.torture, pytest.mark.postgres, pytest.mark.nginx]


def test_killing_one_of_two_instances_is_invisible_to_the_sender(
    deployment: Deployment,
    database: str,
) -> None:
    count, rate = size(quick=600, full=3000), 100
    api, signer, client_context = deployment.api, deployment.signer, deployment.context
    with start(deployment, database, instances=2) as stack:
        trainings = seed_trainings(database, count, first_chat=5_000_000, name="Twin")
        addresses = sources(count // 25 + 1)
        webhooks = [
            Webhook(t.request_id, fal_ok(t.request_id), addresses[i // 25])
            for i, t in enumerate(trainings)
        ]
        # One attempt each: any failure would be seen, none is retried by the sender.
        sender = Sender(stack.port, client_context, signer, attempts=1)
        run = Background(sender, webhooks, concurrency=16, rate=rate)
        time.sleep(count / rate / 2)

        leader = stack.leader()
        assert leader is not None, "no dispatcher leads"
        victim = next(app for app in stack.apps if leader in app.worker_pids())
        survivor = next(app for app in stack.apps if app is not victim)
        doomed = victim.worker_pids()
        victim.kill()  # SIGKILL to its master and workers at once
        killed_at = time.monotonic()
        kills = [Kill(killed_at, pid, pid == leader) for pid in doomed]

        deliveries = run.result(timeout=120)
        drain(database, timeout=60)
        wait_until(lambda: stack.leader() in survivor.worker_pids(), 10, what="a new leader")
        ledger = record(
            tally(
                "two instances, one killed", deliveries, trainings, database, delivered(api), kills
            )
        )
        retried = stack.retried_by_nginx()
        ledger.notes.update(
            {
                "requests nginx passed to the other instance": retried,
                "nginx answers": dict(stack.access_statuses()),
                "killed at s": round(count / rate / 2, 1),
            }
        )

    assert ledger.answers == {200: count}, ledger
    ledger.check()
    assert ledger.notifications_enqueued == count, ledger
    assert ledger.messages_received == count + ledger.crash_window_duplicates, ledger
    assert ledger.crash_window_duplicates <= 16, ledger
    # The sender saw nothing because nginx retried on the survivor, not because of luck.
    assert retried >= 1, ledger.notes
