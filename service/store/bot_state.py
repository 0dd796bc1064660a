"""What the bot keeps in the shared database: people's data, conversations' steps, its secret."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.dialect import dialect_of
from service.store.tables import bot_state as state


class Scope(enum.StrEnum):
    # A person's conversation data (python-telegram-bot's user_data), by Telegram user id.
    USER = "user"
    # The step a conversation is at, by its name and its chat and user.
    CONVERSATION = "conversation"
    # What the bot itself keeps, by name (the webhook's secret token).
    BOT = "bot"


async def load(session: AsyncSession, scope: Scope) -> dict[str, tuple[Any, dt.datetime]]:
    """Every row of `scope`: key -> (data, when it was last written)."""
    rows = await session.execute(
        select(state.c.key, state.c.data, state.c.updated_at).where(state.c.scope == scope.value)
    )
    return {key: (data, updated_at) for key, data, updated_at in rows.all()}


async def save(
    session: AsyncSession, scope: Scope, key: str, data: Any | None, now: dt.datetime
) -> None:
    """Write `data` under `key` (None removes the row). A delete and an insert rather than an
    upsert: one statement shape for both databases, inside the caller's transaction."""
    await session.execute(delete(state).where(state.c.scope == scope.value, state.c.key == key))
    if data is not None:
        await session.execute(
            insert(state).values(scope=scope.value, key=key, data=data, updated_at=now)
        )


async def idle(session: AsyncSession, scope: Scope, before: dt.datetime) -> dict[str, Any]:
    """The rows of `scope` last written before `before`: key -> data."""
    rows = await session.execute(
        select(state.c.key, state.c.data).where(
            state.c.scope == scope.value, state.c.updated_at < before
        )
    )
    return {key: data for key, data in rows}


async def kept(session: AsyncSession, key: str, make: Callable[[], Any], now: dt.datetime) -> Any:
    """The bot's value `key`, made by `make` and stored the first time it is asked for.

    Two processes asking at once store one value: the second insert does nothing, and both
    read what is stored.
    """
    query = select(state.c.data).where(state.c.scope == Scope.BOT.value, state.c.key == key)
    found = (await session.execute(query)).first()
    if found is None:
        made = {"scope": Scope.BOT.value, "key": key, "data": make(), "updated_at": now}
        insert_once = dialect_of(session).insert(state).values(made).on_conflict_do_nothing()
        await session.execute(insert_once)
        found = (await session.execute(query)).first()
    assert found is not None
    return found[0]
