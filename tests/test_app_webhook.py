"""The webhook endpoint and its edges, in-process (create_app over ASGI) on SQLite and PostgreSQL.

Everything here is the app's own answer; what gunicorn adds (workers, their shared metrics, the
dispatcher started by `serve`) is in test_http.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from service import operator
from service.store.models import Avatar
from service.store.users import ensure_user
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support.app import WEBHOOK, InProcessApp, running_app
from tests.support.db import attach_many, notifications, run
from tests.support.webhooks import fal_ok, legacy, new_request_id, signed

OLD_WEBHOOK = "/api/avatar/status_update"


@pytest.fixture(scope="module")
def web(module_database_url: str, module_jwks: JwksServer) -> Iterator[InProcessApp]:
    # 127.0.0.1-7 may call; only 127.0.0.1 may call unsigned; 127.0.0.9 is a stranger.
    with running_app(
        module_database_url,
        FAL_JWKS_URL=module_jwks.jwks_url,
        ALLOWED_IPS="127.0.0.0/29,::1",
        WEBHOOK_UNSIGNED_FROM="127.0.0.1/32",
    ) as app:
        yield app


@pytest.fixture
def signer(module_signer: FalSigner) -> FalSigner:
    """The key the module's key set serves."""
    return module_signer


def attach(web: InProcessApp, request_id: str, telegram_id: int = 5001) -> dict[str, Any]:
    (avatar,) = attach_many(web.settings.database_url, [(telegram_id, "Ann", request_id)])
    return avatar


def shown(web: InProcessApp, request_id: str) -> dict[str, Any]:
    return run(web.settings.database_url, lambda s: operator.show(s, request_id))


def test_seed_check_of_an_unknown_training_is_unmatched(web: InProcessApp) -> None:
    body = b'{"request_id": "test_123", "status": "completed", "training_type": "portrait"}'
    answer = web.post(WEBHOOK, body)
    assert answer.status == 200, answer.body
    assert answer.json() == {"status": "unmatched", "request_id": "test_123"}


def test_signed_completion_is_received_and_completes_the_avatar(
    web: InProcessApp, signer: FalSigner
) -> None:
    rid = new_request_id()
    attach(web, rid)
    body = fal_ok(rid, lora="https://fal.media/files/ann.safetensors")
    answer = web.post(WEBHOOK, body, signed(signer, body), source="127.0.0.3")
    assert answer.status == 200, answer.body
    assert answer.json() == {"status": "received", "request_id": rid}
    avatar = shown(web, rid)
    assert avatar["status"] == "completed"
    assert avatar["lora_url"] == "https://fal.media/files/ann.safetensors"


def test_the_same_bytes_again_are_a_duplicate_and_a_late_progress_is_ignored(
    web: InProcessApp, signer: FalSigner
) -> None:
    rid = new_request_id()
    attach(web, rid)
    body = fal_ok(rid)
    assert web.post(WEBHOOK, body, signed(signer, body)).json()["status"] == "received"
    # FAL re-signs a retry: new headers, the same bytes.
    again = web.post(WEBHOOK, body, signed(signer, body))
    assert again.status == 200
    assert again.json() == {"status": "duplicate", "request_id": rid}
    late = legacy(rid, "in_progress", progress=40)
    answer = web.post(WEBHOOK, late, signed(signer, late))
    assert answer.status == 200
    assert answer.json() == {"status": "ignored", "request_id": rid}
    assert shown(web, rid)["status"] == "completed"


def test_old_path_uses_the_same_handler(web: InProcessApp, signer: FalSigner) -> None:
    rid = new_request_id()
    attach(web, rid)
    body = legacy(rid, "failed", message="out of memory")
    answer = web.post(OLD_WEBHOOK, body, signed(signer, body))
    assert answer.status == 200, answer.body
    assert answer.json()["status"] == "received"
    avatar = shown(web, rid)
    assert (avatar["status"], avatar["error_message"]) == ("failed", "out of memory")


def test_concurrent_duplicates_give_one_change_and_one_notification(
    web: InProcessApp, signer: FalSigner
) -> None:
    rid = new_request_id()
    avatar_id = attach(web, rid)["id"]
    body = fal_ok(rid)

    def send(_: int) -> tuple[int, str]:
        answer = web.post(WEBHOOK, body, signed(signer, body))
        return answer.status, str(answer.json().get("status", answer.json().get("error")))

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, range(32)))
    assert sorted(answers) == [(200, "duplicate")] * 31 + [(200, "received")], answers
    mine = [n for n in notifications(web.settings.database_url) if n["avatar_id"] == avatar_id]
    assert [n["kind"] for n in mine] == ["completed"], mine


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"request_id": 12.5e400, "status": "OK"}',
        b'{"request_id": ["a"], "status": "OK"}',
        b'{"request_id": "r", "status": 7}',
        b'{"request_id": "r", "status": "completed", "progress": "lots"}',
        b'{"status": "completed"}',
        b'{"request_id": "r", "status": "exploded"}',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_bad_bodies_get_a_clear_400(web: InProcessApp, body: bytes) -> None:
    answer = web.post(WEBHOOK, body)
    assert answer.status == 400, answer.body[:200]
    assert answer.json()["error"] == "bad_request"
    assert answer.json()["detail"]


def test_a_content_length_that_is_not_a_number_gets_400(web: InProcessApp) -> None:
    answer = web.post(WEBHOOK, b"{}", {"Content-Length": "ten"})
    assert answer.status == 400
    assert answer.json()["error"] == "bad_request"


def test_bodies_over_ten_mib_get_413_declared_or_chunked(web: InProcessApp) -> None:
    limit = 10 * 1024 * 1024
    pad = b"x" * (limit - 40)
    # Just under the limit is read and judged on its content (here: no request id, 400).
    under = web.post(WEBHOOK, b'{"status": "OK", "pad": "' + pad + b'"}')
    assert len(b'{"status": "OK", "pad": "' + pad + b'"}') <= limit
    assert under.status == 400, under.body[:200]
    declared = web.post(WEBHOOK, b'{"pad": "' + b"x" * limit + b'"}')
    assert declared.status == 413
    assert declared.json()["error"] == "too_large"
    # No Content-Length: the limit is counted while the chunks arrive.
    chunks = (b"x" * (1024 * 1024) for _ in range(11))
    chunked = web.call("POST", WEBHOOK, chunks, {"Content-Type": "application/json"})
    assert chunked.status == 413
    assert chunked.json()["error"] == "too_large"
    assert web.call("GET", "/health").status == 200


def test_a_host_outside_allowed_hosts_is_refused_and_the_port_is_ignored(
    web: InProcessApp,
) -> None:
    answer = web.call("GET", "/health", headers={"Host": "evil.example"})
    assert answer.status == 400
    assert answer.json()["error"] == "bad_host"
    assert web.call("GET", "/health", headers={"Host": "aibots.kz:8443"}).status == 200
    webhook = web.post(WEBHOOK, legacy("x", "completed"), {"Host": "evil.example"})
    assert (webhook.status, webhook.json()["error"]) == (400, "bad_host")


def test_client_outside_allowed_ips_gets_403(web: InProcessApp) -> None:
    answer = web.post(WEBHOOK, legacy("x", "completed"), source="127.0.0.9")
    assert answer.status == 403
    assert answer.json()["error"] == "forbidden"


def test_unsigned_request_from_another_host_gets_401(web: InProcessApp) -> None:
    answer = web.post(WEBHOOK, legacy("x", "completed"), source="127.0.0.2")
    assert answer.status == 401
    assert answer.json()["error"] == "unsigned"


def test_what_the_headers_refuse_is_refused_before_the_body_is_read(
    web: InProcessApp, signer: FalSigner
) -> None:
    # Bodies over the limit, so a read would answer 413: the header checks come first.
    body = b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    unsigned = web.post(WEBHOOK, body, source="127.0.0.2")
    assert (unsigned.status, unsigned.json()["error"]) == (401, "unsigned")
    stale = web.post(WEBHOOK, body, signer.headers(b"{}", "rid", timestamp=1_000_000))
    assert (stale.status, stale.json()["error"]) == (401, "bad_signature")
    assert "Timestamp" in stale.json()["detail"]
    # From where unsigned requests are allowed, and with fresh signature headers, the body is
    # read: over the limit is 413 there.
    assert web.post(WEBHOOK, body).status == 413
    assert web.post(WEBHOOK, body, signer.headers(b"{}", "rid")).status == 413


@pytest.mark.parametrize(
    ("peer", "forwarded", "status"),
    [
        # From a trusted proxy (127.0.0.1) the forwarded client decides: 10.1.1.1 is a stranger.
        ("127.0.0.1", "10.1.1.1", 403),
        # Right-most untrusted hop: the left part was written by the client and may be forged.
        ("127.0.0.1", "127.0.0.1, 10.1.1.1", 403),
        ("127.0.0.1", "10.1.1.1, 127.0.0.2", 401),
        # The trusted proxy forwarding itself: the client is the proxy, unsigned allowed.
        ("127.0.0.1", "127.0.0.1", 200),
        # Garbage in the chain stops the belief there: the peer stays the client.
        ("127.0.0.1", "not-an-address", 200),
        # From an untrusted peer, a forged header claiming loopback changes nothing.
        ("127.0.0.2", "127.0.0.1", 401),
    ],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(
    web: InProcessApp, peer: str, forwarded: str, status: int
) -> None:
    answer = web.post(
        WEBHOOK, legacy("x", "completed"), {"X-Forwarded-For": forwarded}, source=peer
    )
    assert answer.status == status, answer.body


def test_bad_signatures_get_401(web: InProcessApp, signer: FalSigner) -> None:
    rid = new_request_id()
    body = fal_ok(rid)
    headers = signed(signer, body)
    tampered = web.post(WEBHOOK, body.replace(b"OK", b"ERROR"), headers)
    assert (tampered.status, tampered.json()["error"]) == (401, "bad_signature")
    stale = {**headers, **signer.headers(body, rid, timestamp=1_000_000)}
    assert web.post(WEBHOOK, body, stale).status == 401
    stranger = {**headers, **FalSigner().headers(body, rid)}
    assert web.post(WEBHOOK, body, stranger).status == 401
    # Any X-Fal-Webhook-* header means "verify me", even from the unsigned-allowed loopback.
    partial = {"X-Fal-Webhook-Signature": headers["X-Fal-Webhook-Signature"]}
    answer = web.post(WEBHOOK, body, partial)
    assert answer.status == 401
    assert "missing" in answer.json()["detail"]


def test_webhook_path_never_redirects(web: InProcessApp) -> None:
    for method, path, status in [
        ("POST", f"{WEBHOOK}/", 404),
        ("GET", WEBHOOK, 405),
        ("POST", f"{WEBHOOK}//", 404),
        ("POST", "/api/v1/avatar/", 404),
    ]:
        answer = web.call(method, path, b"{}")
        assert answer.status == status, (method, path, answer.status)
        assert answer.json()["error"] in ("not_found", "method_not_allowed")


def test_event_breaking_a_stored_rule_gets_409_not_500(web: InProcessApp) -> None:
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
        draft = Avatar(
            user_id=user.id, name="Draft", training_type="portrait", status="draft",
            started_by="bot",
        )  # fmt: skip
        session.add_all([running, draft])
        await session.flush()
        return draft.id

    draft_id = run(web.settings.database_url, person_with_training_and_draft)
    body = legacy(new_request_id(), "in_progress", progress=10)
    answer = web.post(f"{WEBHOOK}?avatar_id={draft_id}", body)
    assert answer.status == 409
    assert answer.json()["error"] == "conflict"
    assert web.call("GET", "/health").status == 200


def test_verification_off_accepts_unsigned_from_anywhere(
    database_url: str, jwks: JwksServer
) -> None:
    with running_app(
        database_url, FAL_JWKS_URL=jwks.jwks_url, FAL_WEBHOOK_VERIFY="off", WEBHOOK_UNSIGNED_FROM=""
    ) as app:
        answer = app.post(WEBHOOK, legacy("r-off", "completed"), source="127.0.0.5")
        assert answer.status == 200, answer.body
        assert answer.json()["status"] == "unmatched"
    with running_app(database_url, FAL_JWKS_URL=jwks.jwks_url, WEBHOOK_UNSIGNED_FROM="") as app:
        # An empty WEBHOOK_UNSIGNED_FROM trusts nobody, loopback included.
        assert app.post(WEBHOOK, legacy("r-on", "completed")).status == 401
