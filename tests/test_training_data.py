"""Training zips served by the webhook service: unguessable, expiring, gone when training ends."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.operator import attach
from service.store import training_data
from service.store.models import Avatar, FalJob, TrainingData
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support import postgres
from tests.support.db import run
from tests.support.http import call, post
from tests.support.images import png
from tests.support.servers import GunicornServer
from tests.support.webhooks import fal_error, fal_ok, legacy, new_request_id, signed

WEBHOOK = "/api/v1/avatar/status_update"
ZIP = b"PK\x03\x04" + png(600, 600, 3)


@pytest.fixture(scope="module")
def module_signer() -> FalSigner:
    return FalSigner()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, module_signer: FalSigner) -> Iterator[GunicornServer]:
    database = None
    with JwksServer([module_signer]) as keys:
        # Only 127.0.0.1 may call the webhook; FAL fetches photos from anywhere.
        env = {"FAL_JWKS_URL": keys.jwks_url, "ALLOWED_IPS": "127.0.0.1/32"}
        if request.param == "postgres":
            postgres.require()
            database = postgres.create_database()
            env["DATABASE_URL"] = database
        try:
            with GunicornServer(env, workers=1) as running:
                yield running
        finally:
            if database:
                postgres.drop_database(database)


def training(server: GunicornServer, ttl: float = 3600.0, content: bytes = ZIP) -> tuple[str, str]:
    """A training of a new avatar with a stored zip; returns (request id, token)."""
    rid = new_request_id()

    async def work(session: AsyncSession) -> str:
        avatar = await attach(session, 9100, "Zip", "portrait", rid)
        row = await training_data.store(session, str(avatar["id"]), content, 1, ttl)
        return row.token

    return rid, run(server.database_url, work)


def fetch(server: GunicornServer, token: str, source: str = "127.0.0.1") -> Any:
    return call("GET", f"{server.url}/api/v1/training-data/{token}.zip", source=source)


def rows_for(server: GunicornServer, token: str) -> int:
    async def work(session: AsyncSession) -> int:
        query = select(func.count()).where(TrainingData.token == token)
        return int((await session.execute(query)).scalar_one())

    return run(server.database_url, work)


def assert_not_found(answer: Any) -> None:
    assert answer.status == 404, answer.body[:200]
    assert set(answer.json()) == {"error", "detail"}
    assert answer.json()["error"] == "not_found"


def test_tokens_are_256_random_bits_in_url_safe_characters() -> None:
    tokens = {training_data.new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", token) for token in tokens)
    # Every position takes many values: nothing is a counter or a timestamp.
    assert all(len({token[i] for token in tokens}) > 40 for i in range(42))


def test_the_zip_is_served_with_the_token_from_any_address(server: GunicornServer) -> None:
    _, token = training(server)
    answer = fetch(server, token, source="127.0.0.2")
    assert answer.status == 200
    assert answer.body == ZIP
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["cache-control"] == "no-store"
    head = call("HEAD", f"{server.url}/api/v1/training-data/{token}.zip")
    assert head.status == 200 and head.body == b""
    # The webhook itself stays closed to that address.
    assert post(f"{server.url}{WEBHOOK}", b"{}", source="127.0.0.2").status == 403


def test_unknown_and_malformed_tokens_and_any_listing_are_404(server: GunicornServer) -> None:
    _, token = training(server)
    assert_not_found(fetch(server, training_data.new_token()))
    assert_not_found(fetch(server, token[:-1]))
    assert_not_found(fetch(server, token.upper() if token != token.upper() else token.lower()))
    for path in (
        "/api/v1/training-data",
        "/api/v1/training-data/",
        f"/api/v1/training-data/{token}",
        f"/api/v1/training-data/{token}.zip/",
        "/api/v1/training-data/..%2F..%2Fhealth.zip",
    ):
        answer = call("GET", f"{server.url}{path}")
        assert not 300 <= answer.status < 400, path
        assert_not_found(answer)
    changed = call("POST", f"{server.url}/api/v1/training-data/{token}.zip", b"x")
    assert changed.status == 405 and changed.json()["error"] == "method_not_allowed"
    assert fetch(server, token).status == 200


def test_an_expired_token_is_refused(server: GunicornServer) -> None:
    _, token = training(server, ttl=-1)
    assert_not_found(fetch(server, token))


@pytest.mark.parametrize("ending", ["completed", "failed", "cancelled"])
def test_the_zip_is_deleted_when_the_training_ends(
    server: GunicornServer, module_signer: FalSigner, ending: str
) -> None:
    rid, token = training(server)
    progress = legacy(rid, "in_progress", progress=40)
    assert post(f"{server.url}{WEBHOOK}", progress).json()["status"] == "received"
    assert fetch(server, token).status == 200  # still training: FAL may still need it
    body = {
        "completed": fal_ok(rid),
        "failed": fal_error(rid),
        "cancelled": legacy(rid, "cancelled"),
    }[ending]
    answer = post(f"{server.url}{WEBHOOK}", body, signed(module_signer, body))
    assert answer.json()["status"] == "received"
    assert_not_found(fetch(server, token))
    assert rows_for(server, token) == 0


def test_a_zip_of_an_ended_training_is_refused_even_if_its_row_remains(
    server: GunicornServer,
) -> None:
    rid, token = training(server)

    async def end_behind_the_back(session: AsyncSession) -> None:
        await session.execute(
            update(Avatar)
            .where(
                Avatar.id
                == select(FalJob.avatar_id).where(FalJob.request_id == rid).scalar_subquery()
            )
            .values(status="completed")
        )

    run(server.database_url, end_behind_the_back)
    assert rows_for(server, token) == 1
    assert_not_found(fetch(server, token))


def test_renewing_gives_a_new_token_and_retires_the_old_one(server: GunicornServer) -> None:
    rid, old = training(server)

    async def renew(session: AsyncSession) -> str:
        avatar_id = (
            await session.execute(select(FalJob.avatar_id).where(FalJob.request_id == rid))
        ).scalar_one()
        assert avatar_id is not None
        renewed = await training_data.renew(session, avatar_id, 3600)
        assert renewed is not None
        return renewed.token

    new = run(server.database_url, renew)
    assert new != old
    assert_not_found(fetch(server, old))
    assert fetch(server, new).body == ZIP
