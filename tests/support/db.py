"""Direct database work for test set-up, through the service's own engine and operations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.operator import attach, list_notifications
from service.store.engine import create_engine, run_transaction, sessionmaker
from service.store.models import Avatar, Generation, User

T = TypeVar("T")
Owned = TypeVar("Owned", Avatar, Generation)


def run(database_url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction against `database_url`."""

    async def go() -> T:
        engine = create_engine(database_url)
        try:
            return await run_transaction(sessionmaker(engine), work)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def attach_many(
    database_url: str, trainings: list[tuple[int, str, str]], language: str | None = None
) -> list[dict[str, Any]]:
    """Register (telegram_id, name, request_id) trainings in one transaction."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            await attach(session, telegram_id, name, "portrait", rid)
            for telegram_id, name, rid in trainings
        ]

    return run(database_url, work)


def notifications(database_url: str, state: str | None = None) -> list[dict[str, Any]]:
    return run(database_url, lambda s: list_notifications(s, state))


def owned_by(database_url: str, telegram_id: int, model: type[Owned]) -> list[Owned]:
    """The person's rows of `model` (their avatars, their generations), oldest first."""

    async def work(session: AsyncSession) -> list[Owned]:
        rows = await session.execute(
            select(model)
            .join(User, User.id == model.user_id)
            .where(User.telegram_id == telegram_id)
            .order_by(model.created_at)
        )
        return list(rows.scalars())

    return run(database_url, work)
