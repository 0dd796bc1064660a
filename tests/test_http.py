"""What gunicorn adds, through real HTTP: two workers on one database (SQLite and PostgreSQL),
their shared metrics, uvicorn's reading of a chunked body, the dispatcher `serve` starts, and
the refusal to start on an unmigrated database. The app's own answers are in test_app_*.py."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.telegram_api import FakeBotApi
from tests.support import postgres
from tests.support.db import attach_many, notifications
from tests.support.http import call, post
from tests.support.servers import GunicornServer
from tests.support.webhooks import fal_ok, new_request_id, signed

WEBHOOK = "/api/v1/avatar/status_update"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, module_jwks: JwksServer, module_api: FakeBotApi
) -> Iterator[GunicornServer]:
    env = {
        "FAL_JWKS_URL": module_jwks.jwks_url,
        "TELEGRAM_TOKEN": module_api.token,
        "TELEGRAM_API_URL": module_api.url,
    }
    with contextlib.ExitStack() as resources:
        if request.param == "postgres":
            env["DATABASE_URL"] = resources.enter_context(postgres.fresh_database())
        yield resources.enter_context(GunicornServer(env, workers=2))


def test_seed_checks_answer_on_loopback(server: GunicornServer) -> None:
    health = call("GET", f"{server.url}/health")
    assert (health.status, health.json()["database"]) == (200, "ok")
    seed = post(
        f"{server.url}{WEBHOOK}",
        b'{"request_id": "test_123", "status": "completed", "training_type": "portrait"}',
    )
    assert seed.status == 200
    assert seed.json() == {"status": "unmatched", "request_id": "test_123"}


def test_duplicates_racing_over_two_workers_give_one_change_and_one_message(
    server: GunicornServer, module_signer: FalSigner, module_api: FakeBotApi
) -> None:
    rid = new_request_id()
    (avatar,) = attach_many(server.database_url, [(5001, "Ann", rid)])
    body = fal_ok(rid)
    already = len(module_api.sent_messages())

    def send(_: int) -> tuple[int, str]:
        # FAL re-signs every retry: each copy carries its own headers, the same bytes.
        answer = post(f"{server.url}{WEBHOOK}", body, signed(module_signer, body))
        return answer.status, str(answer.json().get("status", answer.json().get("error")))

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, range(32)))
    assert sorted(answers) == [(200, "duplicate")] * 31 + [(200, "received")], answers
    mine = [n for n in notifications(server.database_url) if n["avatar_id"] == avatar["id"]]
    assert [n["kind"] for n in mine] == ["completed"], mine
    # The dispatcher that `serve` starts (one leader among the workers) sends it, once.
    (message,) = module_api.wait_for_exactly(already + 1, timeout=10)[already:]
    assert message["chat_id"] == 5001


def test_a_chunked_body_over_ten_mib_gets_413(server: GunicornServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    headers = {"Content-Type": "application/json"}
    chunked = call("POST", f"{server.url}{WEBHOOK}", chunks(), headers)
    assert chunked.status == 413
    assert chunked.json()["error"] == "too_large"
    assert call("GET", f"{server.url}/health").status == 200


def test_metrics_count_requests_of_both_workers(server: GunicornServer) -> None:
    def total() -> float:
        text = call("GET", f"{server.url}/metrics").body.decode()
        found = re.findall(r"^webhook_requests_total\{[^}]*\} (\S+)$", text, re.M)
        return sum(float(value) for value in found)

    assert len(server.worker_pids()) == 2
    before = total()
    for _ in range(20):
        assert post(f"{server.url}{WEBHOOK}", b"{}").status == 400
    # Each request, on a fresh connection, lands on either worker and counts in that worker's
    # own file; /metrics, answered by either worker, adds up the files of both.
    assert total() - before == 20


def test_service_refuses_to_start_on_an_unmigrated_database(tmp_path: Path) -> None:
    server = GunicornServer({"DATABASE_URL": f"sqlite:///{tmp_path}/empty.db"}, migrate=False)
    try:
        server.start()
        assert server.proc is not None
        assert server.proc.wait(timeout=30) != 0
        assert "python -m service migrate" in server.log_text()
    finally:
        server.close()
