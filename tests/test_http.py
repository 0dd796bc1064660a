"""The webhook service through real HTTP: gunicorn with 2 workers, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import Avatar
from service.store.users import ensure_user
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support import postgres
from tests.support.db import run
from tests.support.http import call, post
from tests.support.servers import GunicornServer, run_cli
from tests.support.webhooks import fal_ok, legacy, new_request_id, signed

WEBHOOK = "/api/v1/avatar/status_update"


class Stack:
    def __init__(self, server: GunicornServer, signer: FalSigner) -> None:
        self.server = server
        self.signer = signer
        self.url = server.url

    def cli(self, *args: str) -> dict[str, object]:
        result = run_cli(*args, env=self.server.env)
        parsed: dict[str, object] = json.loads(result.stdout)
        return parsed

    def attach(self, request_id: str, name: str = "Ann") -> dict[str, object]:
        return self.cli(
            "avatars", "attach", "--telegram-id", "5001", "--name", name,
            "--training-type", "portrait", "--request-id", request_id,
        )  # fmt: skip


@pytest.fixture(scope="module")
def module_signer() -> FalSigner:
    return FalSigner()


@pytest.fixture(scope="module")
def module_jwks(module_signer: FalSigner) -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.add(module_signer)
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, module_jwks: JwksServer, module_signer: FalSigner
) -> Iterator[Stack]:
    env = {
        "FAL_JWKS_URL": module_jwks.jwks_url,
        # 127.0.0.1-7 may call; only 127.0.0.1 may call unsigned; 127.0.0.9 is a stranger.
        "ALLOWED_IPS": "127.0.0.0/29,::1",
        "WEBHOOK_UNSIGNED_FROM": "127.0.0.1/32",
    }
    with contextlib.ExitStack() as resources:
        if request.param == "postgres":
            env["DATABASE_URL"] = resources.enter_context(postgres.fresh_database())
        server = resources.enter_context(GunicornServer(env, workers=2))
        yield Stack(server, module_signer)


def test_seed_checks_answer_on_loopback(stack: Stack) -> None:
    health = call("GET", f"{stack.url}/health")
    assert health.status == 200
    assert health.json()["database"] == "ok"
    status = call("GET", f"{stack.url}/api/v1/webhook/status")
    assert status.status == 200
    assert status.json()["verification"] == "required"
    assert status.json()["telegram_configured"] is False
    seed = post(
        f"{stack.url}{WEBHOOK}",
        b'{"request_id": "test_123", "status": "completed", "training_type": "portrait"}',
    )
    assert seed.status == 200
    assert seed.json() == {"status": "unmatched", "request_id": "test_123"}


def test_signed_completion_marks_the_avatar_completed(stack: Stack) -> None:
    rid = new_request_id()
    stack.attach(rid)
    body = fal_ok(rid, lora="https://fal.media/files/ann.safetensors")
    answer = post(f"{stack.url}{WEBHOOK}", body, signed(stack.signer, body), source="127.0.0.3")
    assert answer.status == 200, answer.body
    assert answer.json() == {"status": "received", "request_id": rid}
    shown = stack.cli("avatars", "show", "--request-id", rid, "--json")
    assert shown["status"] == "completed"
    assert shown["lora_url"] == "https://fal.media/files/ann.safetensors"


def test_old_path_uses_the_same_handler(stack: Stack) -> None:
    rid = new_request_id()
    stack.attach(rid)
    body = legacy(rid, "failed", message="out of memory")
    answer = post(f"{stack.url}/api/avatar/status_update", body, signed(stack.signer, body))
    assert answer.json()["status"] == "received"
    shown = stack.cli("avatars", "show", "--request-id", rid, "--json")
    assert shown["status"] == "failed"
    assert shown["error_message"] == "out of memory"


def test_concurrent_duplicates_give_one_change_and_no_errors(stack: Stack) -> None:
    rid = new_request_id()
    stack.attach(rid)
    body = fal_ok(rid)

    def send(_: int) -> tuple[int, str]:
        # FAL re-signs every retry: each copy carries its own headers, the same bytes.
        answer = post(f"{stack.url}{WEBHOOK}", body, signed(stack.signer, body))
        return answer.status, answer.json().get("status", answer.json().get("error"))

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, range(32)))
    assert all(status == 200 for status, _ in answers), answers
    outcomes = sorted(outcome for _, outcome in answers)
    assert outcomes == ["duplicate"] * 31 + ["received"]
    listing = run_cli("notifications", "list", "--json", env=stack.server.env)
    mine = [n for n in json.loads(listing.stdout) if n["kind"] == "completed"]
    assert len([n for n in mine if n["avatar_id"] == stack.cli(
        "avatars", "show", "--request-id", rid, "--json")["id"]]) == 1  # fmt: skip


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "bad_request"),
        (b"[1, 2, 3]", "bad_request"),
        (b'"just a string"', "bad_request"),
        (b'{"request_id": 12.5e400, "status": "OK"}', "bad_request"),
        (b'{"request_id": ["a"], "status": "OK"}', "bad_request"),
        (b'{"request_id": "r", "status": 7}', "bad_request"),
        (b'{"request_id": "r", "status": "completed", "progress": "lots"}', "bad_request"),
        (b'{"status": "completed"}', "bad_request"),
        (b'{"request_id": "r", "status": "exploded"}', "bad_request"),
        (b"\xff\xfe\x00garbage", "bad_request"),
        (b"[" * 100_000 + b"]" * 100_000, "bad_request"),
    ],
)
def test_bad_bodies_get_a_clear_400(stack: Stack, body: bytes, error: str) -> None:
    answer = post(f"{stack.url}{WEBHOOK}", body)
    assert answer.status == 400, answer.body[:200]
    assert answer.json()["error"] == error
    assert answer.json()["detail"]


def test_bodies_over_ten_mib_get_413_declared_or_chunked(stack: Stack) -> None:
    big = b'{"request_id": "big", "status": "OK", "pad": "' + b"x" * (20 * 1024 * 1024) + b'"}'
    declared = post(f"{stack.url}{WEBHOOK}", big)
    assert declared.status == 413
    assert declared.json()["error"] == "too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    chunked = call("POST", f"{stack.url}{WEBHOOK}", chunks(), {"Content-Type": "application/json"})
    assert chunked.status == 413
    assert call("GET", f"{stack.url}/health").status == 200


def test_unknown_host_is_refused(stack: Stack) -> None:
    answer = call("GET", f"{stack.url}/health", headers={"Host": "evil.example"})
    assert answer.status == 400
    assert answer.json()["error"] == "bad_host"
    assert call("GET", f"{stack.url}/health", headers={"Host": "aibots.kz:8443"}).status == 200


def test_client_outside_allowed_ips_gets_403(stack: Stack) -> None:
    answer = post(f"{stack.url}{WEBHOOK}", legacy("x", "completed"), source="127.0.0.9")
    assert answer.status == 403
    assert answer.json()["error"] == "forbidden"


def test_unsigned_request_from_another_host_gets_401(stack: Stack) -> None:
    answer = post(f"{stack.url}{WEBHOOK}", legacy("x", "completed"), source="127.0.0.2")
    assert answer.status == 401
    assert answer.json()["error"] == "unsigned"


def test_forwarded_for_is_believed_only_from_trusted_proxies(stack: Stack) -> None:
    # From a trusted proxy (127.0.0.1), the forwarded client decides: 10.1.1.1 is not allowed.
    proxied = post(
        f"{stack.url}{WEBHOOK}", legacy("x", "completed"), {"X-Forwarded-For": "10.1.1.1"}
    )
    assert proxied.status == 403
    # From an untrusted peer, a forged header claiming loopback changes nothing.
    forged = post(
        f"{stack.url}{WEBHOOK}",
        legacy("x", "completed"),
        {"X-Forwarded-For": "127.0.0.1"},
        source="127.0.0.2",
    )
    assert forged.status == 401


def test_bad_signatures_get_401(stack: Stack) -> None:
    rid = new_request_id()
    body = fal_ok(rid)
    headers = signed(stack.signer, body)
    tampered = post(f"{stack.url}{WEBHOOK}", body.replace(b"OK", b"ERROR"), headers)
    assert tampered.status == 401
    stale = {**headers, **stack.signer.headers(body, rid, timestamp=1_000_000)}
    assert post(f"{stack.url}{WEBHOOK}", body, stale).status == 401
    partial = {"X-Fal-Webhook-Signature": headers["X-Fal-Webhook-Signature"]}
    # Any X-Fal-Webhook-* header means "verify me", even from the unsigned-allowed loopback.
    answer = post(f"{stack.url}{WEBHOOK}", body, partial)
    assert answer.status == 401
    assert "missing" in answer.json()["detail"]


def test_webhook_path_never_redirects(stack: Stack) -> None:
    for method, path in [
        ("POST", f"{WEBHOOK}/"),
        ("GET", WEBHOOK),
        ("POST", "/api/v1/avatar/status_update//"),
        ("POST", "/api/v1/avatar/"),
    ]:
        answer = call(method, f"{stack.url}{path}", b"{}")
        assert not 300 <= answer.status < 400, (method, path, answer.status)
        assert answer.status in (404, 405)
        assert "error" in answer.json()


def test_metrics_count_requests_of_both_workers(stack: Stack) -> None:
    def total() -> float:
        text = call("GET", f"{stack.url}/metrics").body.decode()
        return sum(
            float(v) for v in re.findall(r"^webhook_requests_total\{[^}]*\} (\S+)$", text, re.M)
        )

    before = total()
    for _ in range(20):
        post(f"{stack.url}{WEBHOOK}", b"{}")
    assert total() - before == 20
    text = call("GET", f"{stack.url}/metrics").body.decode()
    assert 'notifications{state="pending"}' in text
    assert "database_up 1.0" in text


def test_openapi_document_lists_every_route(stack: Stack) -> None:
    document = call("GET", f"{stack.url}/api/v1/openapi.json").json()
    assert set(document["paths"]) == {
        WEBHOOK,
        "/api/avatar/status_update",
        "/health",
        "/api/v1/webhook/status",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/training-data/{token}.zip",
    }


def test_service_refuses_to_start_on_an_unmigrated_database(tmp_path: Path) -> None:
    server = GunicornServer({"DATABASE_URL": f"sqlite:///{tmp_path}/empty.db"}, migrate=False)
    try:
        server.start()
        assert server.proc is not None
        assert server.proc.wait(timeout=30) != 0
        assert "python -m service migrate" in server.log_text()
    finally:
        server.close()


def test_event_breaking_a_stored_rule_gets_409_not_500(stack: Stack) -> None:
    # One bot training per person: an old-style progress event for the same person's draft
    # would start a second one.
    async def person_with_training_and_draft(session: AsyncSession) -> str:
        user = await ensure_user(session, 5999)
        running = Avatar(
            user_id=user.id,
            name="Running",
            training_type="portrait",
            status="training",
            started_by="bot",
        )
        draft = Avatar(user_id=user.id, name="Draft", training_type="portrait",
                       status="draft", started_by="bot")  # fmt: skip
        session.add_all([running, draft])
        await session.flush()
        return draft.id

    draft_id = run(stack.server.database_url, person_with_training_and_draft)
    body = legacy(new_request_id(), "in_progress", progress=10)
    answer = post(f"{stack.url}{WEBHOOK}?avatar_id={draft_id}", body)
    assert answer.status == 409
    assert answer.json()["error"] == "conflict"
    assert call("GET", f"{stack.url}/health").status == 200
