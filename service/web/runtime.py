"""What a running webhook service holds: opened in the lifespan, closed at shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.fal.keyset import KeySet
from service.settings import Settings
from service.store.direct import DirectPool, open_direct
from service.store.engine import create_engine, sessionmaker


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    keyset: KeySet
    # The webhook's hot path on the driver's own connections, where the dialect has them.
    direct: DirectPool | None = None
    clock: Callable[[], float] = time.time
    # Set when this process enqueued a notification; a dispatcher in this process waits on it.
    outbox_wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        engine = create_engine(settings.database_url)
        http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessionmaker(engine),
            http=http,
            keyset=KeySet(settings.fal_jwks_url, http),
            direct=open_direct(settings.database_url),
        )

    def wake_dispatcher(self) -> None:
        self.outbox_wakeup.set()

    async def close(self) -> None:
        await self.http.aclose()
        if self.direct is not None:
            await self.direct.close()
        await self.engine.dispose()
