"""THE FLOOR of the benchmark, not the product: the least a webhook endpoint can do on this stack.

A bare Starlette endpoint under the product's own gunicorn settings (service.server's
gunicorn_options: same worker class, workers, keep-alive, backlog) that parses the JSON body,
inserts it into a PostgreSQL table through a raw psycopg pool as large as the product's, commits
and answers 200. No verification, no matching, no state change, no outbox, no per-request log.

On SQLite (a `sqlite:///` DATABASE_URL) the same endpoint inserts into the file through one
aiosqlite connection a worker, with the product's pragmas (WAL, synchronous=FULL, ...) and its
BEGIN IMMEDIATE: the least the embedded default can do.

    python -m bench.floor      (BIND, WEB_CONCURRENCY and DATABASE_URL from the environment)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
from gunicorn.app.base import BaseApplication
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.settings import Settings
from service.store.dialect import SQLITE_PRAGMAS
from service.store.engine import sqlite_path, sync_url
from service.web.server import gunicorn_options

PATH = "/api/v1/avatar/status_update"
POOL_SIZE = 10  # service.store.engine.create_engine's pool_size, without overflow as there
TABLE = "CREATE TABLE IF NOT EXISTS floor_events (id bigserial PRIMARY KEY, body bytea NOT NULL)"
SQLITE_TABLE = (
    "CREATE TABLE IF NOT EXISTS floor_events (id INTEGER PRIMARY KEY, body BLOB NOT NULL)"
)


def conninfo(database_url: str) -> str:
    return sync_url(database_url).set(drivername="postgresql").render_as_string(False)


def _is_json(raw: bytes) -> bool:
    """What every floor does with a body before writing it: parse it, as the product does."""
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def create_sqlite_floor_app(path: Path) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=5.0)
        for pragma in SQLITE_PRAGMAS:
            await conn.execute(f"PRAGMA {pragma}")
        app.state.conn, app.state.lock = conn, asyncio.Lock()
        try:
            yield
        finally:
            await conn.close()

    async def receive(request: Request) -> Response:
        raw = await request.body()
        if not _is_json(raw):
            return JSONResponse({"error": "bad_request"}, status_code=400)
        # One transaction at a time on the worker's connection, as SQLite writes anyway.
        async with request.app.state.lock:
            conn = request.app.state.conn
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute("INSERT INTO floor_events (body) VALUES (?)", (raw,))
            await conn.execute("COMMIT")
        return JSONResponse({"status": "received"})

    return Starlette(routes=[Route(PATH, receive, methods=["POST"])], lifespan=lifespan)


def create_floor_app(database_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            conninfo(database_url), min_size=POOL_SIZE, max_size=POOL_SIZE, open=False
        )
        await pool.open(wait=True)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    async def receive(request: Request) -> Response:
        raw = await request.body()
        if not _is_json(raw):
            return JSONResponse({"error": "bad_request"}, status_code=400)
        async with request.app.state.pool.connection() as conn:
            # The pool's connection block commits on a clean exit.
            await conn.execute("INSERT INTO floor_events (body) VALUES (%s)", (raw,))
        return JSONResponse({"status": "received"})

    return Starlette(routes=[Route(PATH, receive, methods=["POST"])], lifespan=lifespan)


class _FloorApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self._settings).items():
            self.cfg.set(key, value)
        self.cfg.set("proc_name", "aibots-floor")

    def load(self) -> Any:
        path = sqlite_path(self._settings.database_url)
        if path is not None:
            return create_sqlite_floor_app(path)
        return create_floor_app(self._settings.database_url)


def main() -> None:
    settings = Settings.from_env(env_file=None)
    path = sqlite_path(settings.database_url)
    if path is not None:
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute(SQLITE_TABLE)
    else:
        with psycopg.connect(conninfo(settings.database_url), autocommit=True) as conn:
            conn.execute(TABLE)
    _FloorApplication(settings).run()


if __name__ == "__main__":
    main()
