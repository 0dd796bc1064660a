"""The webhook app in-process: `create_app(settings)` with its lifespan run, called over ASGI.

The app runs in an event loop of its own (an anyio blocking portal, on a thread), where the
ASGI lifespan protocol is spoken to it as a server would; every request then goes through
httpx's ASGITransport in that same loop, so the engine opened by the lifespan serves every
request, and each request may come from the peer address it chooses (the edge decides on it:
ALLOWED_IPS, WEBHOOK_UNSIGNED_FROM, X-Forwarded-For). Starlette's TestClient would do the
same, but it now wants `httpx2`, and this suite's warnings are errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import anyio.from_thread
import httpx
from starlette.types import ASGIApp, Message

from service.settings import Settings
from service.web.app import create_app
from service.web.runtime import Runtime
from tests.support import schema
from tests.support.http import Answer

T = TypeVar("T")

WEBHOOK = "/api/v1/avatar/status_update"
# The Host the app sees unless a test says otherwise; it is in the default ALLOWED_HOSTS.
BASE_URL = "http://127.0.0.1"


class InProcessApp:
    """One app, its lifespan running; `call`/`post` answer like `tests.support.http`."""

    def __init__(self, settings: Settings, *, migrated: bool = True) -> None:
        if migrated:
            schema.upgrade(settings.database_url)
        self.settings = settings
        # The dispatcher needs a Bot API server and is tested on its own; the app without it
        # is everything the webhook answers.
        self.app = create_app(settings, start_dispatcher=False)
        self._resources = contextlib.ExitStack()
        self._portal: anyio.from_thread.BlockingPortal | None = None

    def __enter__(self) -> InProcessApp:
        with contextlib.ExitStack() as resources:
            portal = resources.enter_context(anyio.from_thread.start_blocking_portal())
            resources.enter_context(portal.wrap_async_context_manager(lifespan(self.app)))
            self._portal = portal
            self._resources = resources.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._portal = None
        self._resources.close()

    @property
    def runtime(self) -> Runtime:
        """What the lifespan opened (engine, HTTP client, key set)."""
        runtime: Runtime = self.app.state.runtime
        return runtime

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Await `work()` in the app's event loop (where its engine and clients live)."""
        assert self._portal is not None, "use InProcessApp as a context manager"
        return self._portal.call(work)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        source: str = "127.0.0.1",
    ) -> Answer:
        """One request from `source`; an iterable body is sent in chunks, without a length."""
        return self.run(lambda: self._call(method, path, body, headers or {}, source))

    def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        source: str = "127.0.0.1",
    ) -> Answer:
        return self.call(
            "POST", path, body, {"Content-Type": "application/json", **(headers or {})}, source
        )

    async def _call(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None,
        headers: dict[str, str],
        source: str,
    ) -> Answer:
        content: Any = body
        if body is not None and not isinstance(body, bytes):
            content = _streamed(body)
        # A 500 must come back as the answer the app sent, not as an exception in the test.
        transport = httpx.ASGITransport(
            app=self.app, raise_app_exceptions=False, client=(source, 40000)
        )
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            response = await client.request(method, path, content=content, headers=headers)
        return Answer(response.status_code, dict(response.headers), response.content)


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Start the app as an ASGI server does (lifespan.startup), and shut it down afterwards."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    running: asyncio.Future[None] = asyncio.ensure_future(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        await running  # Starlette raises the lifespan's own error here.
        raise RuntimeError(f"the app did not start: {started.get('message')}")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await from_app.get()
        await running
        if stopped["type"] != "lifespan.shutdown.complete":
            raise RuntimeError(f"the app did not stop cleanly: {stopped.get('message')}")


async def _streamed(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@contextlib.contextmanager
def running_app(database_url: str, **environment: str) -> Iterator[InProcessApp]:
    """The app on `database_url` with these settings (environment names, as in production)."""
    settings = Settings.from_mapping({"DATABASE_URL": database_url, **environment})
    with InProcessApp(settings) as app:
        yield app
