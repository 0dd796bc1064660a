"""Monitoring, the OpenAPI document and the training-data download, in-process on both databases."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import Route

from service.store import training_data
from service.store.engine import sqlite_path
from service.store.models import Avatar
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support import postgres
from tests.support.app import WEBHOOK, InProcessApp, running_app
from tests.support.db import attach_many, run
from tests.support.webhooks import fal_ok, legacy, new_request_id, signed


@pytest.fixture(scope="module")
def web(module_database_url: str, module_jwks: JwksServer) -> Iterator[InProcessApp]:
    with running_app(module_database_url, FAL_JWKS_URL=module_jwks.jwks_url) as app:
        yield app


def test_health_says_the_database_answers(web: InProcessApp) -> None:
    health = web.call("GET", "/health")
    assert health.status == 200
    body = health.json()
    # Beside an embedded database, the room left on its disk (the disk-full scenario in
    # tests/torture fills it); a server's disk is not the service's to see.
    disk = {"disk": "ok", "disk_free_bytes": body.get("disk_free_bytes")}
    assert body == {
        "status": "ok",
        "database": "ok",
        **(disk if web.settings.database_url.startswith("sqlite") else {}),
        "telegram": "not_configured",
        "version": body["version"],
    }
    assert body.get("disk_free_bytes", 1) > 0


def test_webhook_status_counts_events_by_outcome(web: InProcessApp) -> None:
    before = web.call("GET", "/api/v1/webhook/status").json()
    rid = new_request_id()
    assert web.post(WEBHOOK, legacy(rid, "completed")).json()["status"] == "unmatched"
    # The same bytes again are answered as a duplicate and not stored a second time.
    assert web.post(WEBHOOK, legacy(rid, "completed")).json()["status"] == "duplicate"
    status = web.call("GET", "/api/v1/webhook/status")
    assert status.status == 200
    after = status.json()
    assert after["endpoint"] == WEBHOOK
    assert after["verification"] == "required"
    assert after["telegram_configured"] is False
    assert after["database"] == "ok"
    assert after["events"]["total"] == before["events"]["total"] + 1
    assert after["events"]["unmatched"] == before["events"].get("unmatched", 0) + 1
    assert after["last_event_at"] is not None


def test_metrics_count_requests_and_read_the_outbox(
    web: InProcessApp, module_signer: FalSigner
) -> None:
    def total() -> float:
        text = web.call("GET", "/metrics").body.decode()
        found = re.findall(r"^webhook_requests_total\{[^}]*\} (\S+)$", text, re.M)
        return sum(float(value) for value in found)

    before = total()
    for _ in range(5):
        assert web.post(WEBHOOK, b"{}").status == 400
    assert total() - before == 5
    rid = new_request_id()
    attach_many(web.settings.database_url, [(7001, "Metered", rid)])
    body = fal_ok(rid)
    assert web.post(WEBHOOK, body, signed(module_signer, body)).json()["status"] == "received"
    text = web.call("GET", "/metrics").body.decode()
    # No dispatcher runs in-process: the notification just enqueued is still pending.
    pending = re.search(r'^notifications\{state="pending"\} (\S+)$', text, re.M)
    assert pending is not None and float(pending.group(1)) >= 1, text
    assert re.search(r"^database_up 1\.0$", text, re.M), text


def test_openapi_document_lists_exactly_the_routes_and_their_methods(web: InProcessApp) -> None:
    document = web.call("GET", "/api/v1/openapi.json").json()
    served = {
        route.path: {m.lower() for m in route.methods or ()} - {"head"}
        for route in web.app.routes
        if isinstance(route, Route)
    }
    assert served, "the app has no routes?"
    # Both ways: a route missing from the document and a documented path nobody serves fail.
    assert set(document["paths"]) == set(served)
    for path, operations in document["paths"].items():
        documented = {k for k in operations if k in {"get", "post", "put", "patch", "delete"}}
        assert documented == served[path], path


def avatar_with_training_data(database_url: str, status: str = "training") -> str:
    rid = new_request_id()
    (avatar,) = attach_many(database_url, [(7100, "Photos", rid)])

    async def store(session: AsyncSession) -> str:
        await session.get(Avatar, avatar["id"])
        row = await training_data.store(session, str(avatar["id"]), b"PK\x05\x06zip", 1, 3600)
        return row.token

    return run(database_url, store)


def test_training_data_is_served_by_its_token_and_nothing_else(web: InProcessApp) -> None:
    token = avatar_with_training_data(web.settings.database_url)
    answer = web.call("GET", f"/api/v1/training-data/{token}.zip", source="198.51.100.7")
    assert answer.status == 200
    assert answer.body == b"PK\x05\x06zip"
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["cache-control"] == "no-store"
    # Another token of the same shape (the last character of a 32-byte token is one of 16, "A"
    # among them: replacing it by "A" alone named the same token now and then).
    other = token[:-1] + ("E" if token.endswith("A") else "A")
    for path in (
        f"/api/v1/training-data/{other}.zip",
        f"/api/v1/training-data/{token}.tar",
        "/api/v1/training-data/short.zip",
        "/api/v1/training-data/",
    ):
        missing = web.call("GET", path)
        assert missing.status == 404, path
        assert missing.json()["error"] == "not_found"


def _drop_database(app: InProcessApp) -> None:
    """The database disappears under the running app."""
    url = app.settings.database_url
    path = sqlite_path(url)
    if path is None:
        postgres.drop_database(url)  # WITH (FORCE): the app's connections are cut too
        return
    # The file goes, with its folder so that it cannot be created again; the pool's open
    # connections would keep the deleted file alive, so they are closed as a restart would.
    shutil.rmtree(Path(path).parent)
    app.run(app.runtime.engine.dispose)


def test_a_database_gone_gives_503_everywhere_never_500(
    database_url: str, jwks: JwksServer, signer: FalSigner
) -> None:
    with running_app(database_url, FAL_JWKS_URL=jwks.jwks_url) as app:
        token = avatar_with_training_data(database_url)
        assert app.call("GET", "/health").status == 200
        _drop_database(app)
        body = fal_ok(new_request_id())
        webhook = app.post(WEBHOOK, body, signed(signer, body))
        assert webhook.status == 503, webhook.body
        assert webhook.json()["error"] == "database_unavailable"
        health = app.call("GET", "/health")
        assert (health.status, health.json()["database"]) == (503, "error")
        status = app.call("GET", "/api/v1/webhook/status")
        assert (status.status, status.json()["database"]) == (503, "error")
        download = app.call("GET", f"/api/v1/training-data/{token}.zip")
        assert download.status == 503
        metrics = app.call("GET", "/metrics")
        assert metrics.status == 200
        assert re.search(r"^database_up 0\.0$", metrics.body.decode(), re.M)
