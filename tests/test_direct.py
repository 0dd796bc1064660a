"""The webhook's hot path on the drivers' own connections (store/direct.py: asyncpg on a real
PostgreSQL; store/direct_sqlite.py: one thread's connection to a SQLite file): the same answers
as the session's path, copies deduplicated, an outage a DatabaseUnavailable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
import pytest

from service.fal.payload import parse_body, parse_event
from service.jobs import training
from service.jobs.ingest import Delivery, Outcome, Result, _prepare, ingest_matched
from service.store.chains import write_guarded
from service.store.direct import AsyncpgPool, DirectConnection, DirectPool, open_direct
from service.store.direct_sqlite import SqlitePool
from service.store.engine import DatabaseUnavailable
from service.store.models import Notification, WebhookEvent
from tests.support.servers import free_port
from tests.support.webhooks import fal_ok
from tests.test_ingest import avatar, count, make_avatar, migrated

pytestmark = pytest.mark.postgres

T = TypeVar("T")


def delivery(body: bytes) -> Delivery:
    return Delivery(body, parse_event(parse_body(body), {}), {}, "", "127.0.0.1", signed=True)


def on_pool(url: str, use: Callable[[DirectPool], Awaitable[T]], size: int = 10) -> T:
    async def go() -> T:
        pool = open_direct(url, size)
        assert pool is not None, "PostgreSQL has a direct driver"
        try:
            return await use(pool)
        finally:
            await pool.close()

    return asyncio.run(go())


def matched(pool: DirectPool, body: bytes) -> Awaitable[Result | None]:
    arrived = delivery(body)

    async def work(db: DirectConnection) -> Result | None:
        return await ingest_matched(db, arrived)

    return pool.run(work)


def test_each_database_file_or_server_has_its_pool_and_memory_has_none(
    sqlite_url: str, postgres_url: str
) -> None:
    assert isinstance(open_direct(postgres_url), AsyncpgPool)
    assert isinstance(open_direct(sqlite_url), SqlitePool)
    assert open_direct("sqlite://") is None


def test_a_registered_completion_is_received_then_a_duplicate(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-d1")

    async def twice(pool: DirectPool) -> list[Result | None]:
        return [await matched(pool, fal_ok("rid-d1")), await matched(pool, fal_ok("rid-d1"))]

    first, again = on_pool(url, twice)
    assert first is not None and again is not None
    assert first.outcome is Outcome.RECEIVED
    assert first.transition == "training->completed:100"
    assert first.notification_enqueued
    assert again.outcome is Outcome.DUPLICATE and not again.notification_enqueued
    assert avatar(url, "rid-d1")["status"] == "completed"
    assert count(url, Notification) == 1
    assert count(url, WebhookEvent) == 1


def test_simultaneous_copies_give_one_received(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-d2")

    async def copies(pool: DirectPool) -> list[Result | None]:
        return await asyncio.gather(*(matched(pool, fal_ok("rid-d2")) for _ in range(10)))

    outcomes = sorted(r.outcome.value for r in on_pool(url, copies) if r is not None)
    assert outcomes == ["duplicate"] * 9 + ["received"]
    assert count(url, Notification) == 1


def test_an_unregistered_request_id_is_left_to_the_session_and_writes_nothing(
    database_url: str,
) -> None:
    url = migrated(database_url)
    assert on_pool(url, lambda pool: matched(pool, fal_ok("rid-nobody"))) is None
    assert count(url, WebhookEvent) == 0


def test_a_database_that_is_not_there_is_unavailable_at_once() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        on_pool(url, lambda pool: matched(pool, fal_ok("rid-d3")))
    assert time.monotonic() - started < 5


def test_a_server_that_refuses_the_connection_is_unavailable(postgres_url: str) -> None:
    """The server answers, but not for this database (dropped, say): a 503, not a 500."""
    missing = postgres_url.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        on_pool(missing, lambda pool: matched(pool, fal_ok("rid-d6")))


def test_connections_killed_under_the_pool_give_one_503_then_reconnect(postgres_url: str) -> None:
    url = migrated(postgres_url)
    make_avatar(url, "rid-d4")

    async def around_a_restart(pool: DirectPool) -> tuple[str, Result | None]:
        await matched(pool, fal_ok("rid-unknown"))  # leaves one idle connection
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        try:
            await matched(pool, fal_ok("rid-d4"))
            failed = "no error"
        except DatabaseUnavailable as exc:
            failed = str(exc)
        return failed, await matched(pool, fal_ok("rid-d4"))

    failed, after = on_pool(url, around_a_restart)
    assert failed != "no error"
    assert after is not None and after.outcome is Outcome.RECEIVED


def test_a_write_planned_on_a_state_that_has_moved_writes_nothing(postgres_url: str) -> None:
    """The guard: between the unlocked read and the write another event moved the avatar."""
    url = migrated(postgres_url)
    avatar_id = make_avatar(url, "rid-d5")
    arrived = delivery(fal_ok("rid-d5"))

    async def stale_write(pool: DirectPool) -> dict[str, int]:
        assert isinstance(pool, AsyncpgPool)
        async with pool.connection() as db:
            read = await training.HANDLER.by_request(db, "rid-d5")
            assert read is not None and read.status.value == "training"
            with psycopg.connect(url, autocommit=True) as other:
                other.execute("UPDATE avatars SET progress = 40 WHERE id = %s", (avatar_id,))
            chain, params, _ = _prepare(arrived, (training.HANDLER, read))
            guard, seen = training.HANDLER.unmoved(read)
            return await write_guarded(db, guard, chain, {**params, guard.name: seen})

    written = on_pool(url, stale_write)
    assert written == {"unmoved": 0, "recorded": 0, "changed": 0, "unzipped": 0, "enqueued": 0}
    assert count(url, WebhookEvent) == 0 and count(url, Notification) == 0
    # Read again, the same completion goes through.
    again = on_pool(url, lambda pool: matched(pool, fal_ok("rid-d5")))
    assert again is not None and again.outcome is Outcome.RECEIVED
    assert avatar(url, "rid-d5")["status"] == "completed"
