"""CPU per webhook and per sent message, measured inside one process: no nginx, no gunicorn.

    python -m bench.inprocess [--webhooks 3000] [--sends 1000] [--database both|postgresql|sqlite]

The whole-stack benchmark (`python -m bench`) compares the product with the floor in the same
run, which is fair on a busy machine but blurs what one change to our own code gives. Here:

- **webhooks**: `create_app(settings)` (no dispatcher) called directly over ASGI in one event
  loop (uvloop, as gunicorn's workers run), eight at a time, each a signed FAL completion of
  its own registered training; the CPU time of this process (user + system: the app, the
  drivers, SQLite itself) divided by the count. The local key-set server runs on a thread
  here, idle after the first fetch. The floor's endpoint (bench/floor.py) runs the same way.
- **sends**: the elected drain loop (`run_elected`) sending that many pending messages to the
  local Bot API server at up to 200 a second; the CPU time of the loop's thread only (the Bot
  API server is a thread of this process) divided by the count.

PostgreSQL is the server of `make test` (TEST_POSTGRES_URL); each run gets a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import uvloop
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message

from bench.accounting import Window
from bench.floor import (
    SQLITE_TABLE,
    TABLE,
    conninfo,
    create_floor_app,
    create_sqlite_floor_app,
)
from service import logs
from service.outbox import queue
from service.outbox.leadership import run_elected
from service.outbox.messages import Message as Outgoing
from service.outbox.telegram import sender_for
from service.settings import Settings
from service.store import migrate
from service.store.engine import create_engine, run_transaction, sessionmaker
from service.store.models import Notification
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.telegram_api import FakeBotApi
from tests.support import postgres
from tests.support.app import WEBHOOK, lifespan
from tests.support.trainings import seed_trainings
from tests.support.webhooks import fal_ok, signed

WARM_UP = 200
LANES = 8
TOKEN = "123456:BENCH-token-for-the-drain-loop"


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "postgresql":
        with postgres.fresh_database() as url:
            yield url
        return
    with tempfile.TemporaryDirectory(prefix="bench-inprocess-") as where:
        yield f"sqlite:///{where}/bench.db"


async def _call(app: ASGIApp, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": WEBHOOK,
        "raw_path": WEBHOOK.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    messages: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    statuses: list[int] = []

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


# Awaited inside the app's lifespan after the warm-up, outside the measured window, with the
# bodies about to be measured (bench/parts.py reads their jobs there).
Prepare = Callable[[ASGIApp, list[bytes]], Awaitable[None]]


def webhooks(
    kind: str, count: int, floor: bool, prepare: Prepare | None = None
) -> tuple[float, float | None]:
    """CPU ms per signed completion (the floor's endpoint when `floor`): this process's, and
    on PostgreSQL its backends' (those connected to the benchmark's database)."""
    signer = FalSigner()
    with database(kind) as url, JwksServer([signer]) as jwks:
        migrate.upgrade(url)
        requests = []
        for training in seed_trainings(url, count + WARM_UP, 9_000_000):
            body = fal_ok(training.request_id)
            headers = {"content-type": "application/json", **signed(signer, body)}
            requests.append((body, [(k.lower().encode(), v.encode()) for k, v in headers.items()]))
        settings = Settings.from_mapping({"DATABASE_URL": url, "FAL_JWKS_URL": jwks.jwks_url})
        app: ASGIApp
        if not floor:
            from service.web.app import create_app

            app = create_app(settings, start_dispatcher=False)
        elif kind == "sqlite":
            path = Path(url.removeprefix("sqlite:///"))
            with sqlite3.connect(path) as connection:
                connection.execute(SQLITE_TABLE)
            app = create_sqlite_floor_app(path)
        else:
            with psycopg.connect(conninfo(url), autocommit=True) as connection:
                connection.execute(TABLE)
            app = create_floor_app(url)
        backends = _backends(url) if kind == "postgresql" else None
        return uvloop.run(_measure(app, requests, backends, prepare))


def _backends(url: str) -> Callable[[], list[int]]:
    def pids() -> list[int]:
        with psycopg.connect(conninfo(url), autocommit=True) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        return [int(pid) for (pid,) in rows]

    return pids


async def _measure(
    app: ASGIApp,
    requests: list[tuple[bytes, list[tuple[bytes, bytes]]]],
    backends: Callable[[], list[int]] | None,
    prepare: Prepare | None = None,
) -> tuple[float, float | None]:
    async with lifespan(app):
        for body, headers in requests[:WARM_UP]:
            assert await _call(app, body, headers) == 200
        measured = requests[WARM_UP:]
        if prepare is not None:
            await prepare(app, [body for body, _ in measured])

        async def lane(share: list[tuple[bytes, list[tuple[bytes, bytes]]]]) -> None:
            for body, headers in share:
                status = await _call(app, body, headers)
                assert status == 200, status

        window = Window({"postgres": backends} if backends else {})
        before = os.times()
        with window:
            await asyncio.gather(*(lane(measured[i::LANES]) for i in range(LANES)))
        after = os.times()
    cpu = (after.user - before.user) + (after.system - before.system)
    server = window.seconds.get("postgres")
    per = 1000 / len(measured)
    return cpu * per, server * per if server is not None else None


def sends(kind: str, count: int) -> float:
    """CPU ms of the drain loop's thread per message sent."""
    with database(kind) as url, FakeBotApi(TOKEN) as api:
        migrate.upgrade(url)
        base = Settings(database_url=url, telegram_token=TOKEN, telegram_api_url=api.url)
        settings = dataclasses.replace(
            base, telegram_rate_per_second=200, telegram_chat_interval=0.0
        )
        return uvloop.run(_drain(settings, count))


async def _drain(settings: Settings, count: int) -> float:
    engine = create_engine(settings.database_url)
    sessions = sessionmaker(engine)

    async def put(session: AsyncSession) -> None:
        for i in range(count):
            message = Outgoing(chat_id=1000 + i, text=f"done {i}")
            await queue.enqueue(session, f"bench:{i}", "completed", message, avatar_id=None)

    async def sent(session: AsyncSession) -> int:
        query = select(func.count()).where(Notification.state == "sent")
        return int((await session.execute(query)).scalar_one())

    await run_transaction(sessions, put)
    started = time.thread_time()
    loop = asyncio.create_task(
        run_elected(settings, sessions, asyncio.Event(), lambda: sender_for(settings))
    )
    try:
        await _until(lambda: run_transaction(sessions, sent), count)
        cpu = time.thread_time() - started
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await engine.dispose()
    return 1000 * cpu / count


async def _until(count_now: Callable[[], Awaitable[int]], count: int) -> None:
    deadline = time.monotonic() + 60 + count / 20
    while await count_now() < count:
        assert time.monotonic() < deadline, "the drain loop did not send everything in time"
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--sends", type=int, default=1000)
    parser.add_argument("--database", choices=["both", "postgresql", "sqlite"], default="both")
    args = parser.parse_args(argv)
    # As `serve` logs (JSON lines), to /dev/null: a terminal's speed is not ours to measure.
    sink = open(os.devnull, "w")  # noqa: SIM115 (the loggers keep it for the process's life)
    with contextlib.redirect_stderr(sink):
        logs.configure("INFO", "json")
        kinds = ["postgresql", "sqlite"] if args.database == "both" else [args.database]
        rows = []
        for kind in kinds:
            floor = webhooks(kind, args.webhooks, floor=True)
            product = webhooks(kind, args.webhooks, floor=False)
            drained = sends(kind, args.sends) if args.sends else None
            rows.append((kind, floor, product, drained))
    print(
        "| database | floor CPU ms/webhook (its backends) | product CPU ms/webhook "
        "(its backends) | drain loop CPU ms/send |"
    )
    print("|---|---:|---:|---:|")
    for kind, floor, product, drained in rows:
        print(f"| {kind} | {_pair(floor)} | {_pair(product)} | {_number(drained, 2)} |")


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(values: tuple[float, float | None]) -> str:
    own, server = values
    return _number(own, 3) + ("" if server is None else f" ({server:.3f})")


if __name__ == "__main__":
    main()
