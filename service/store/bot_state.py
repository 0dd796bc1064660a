"""The bot's conversations kept in the shared database: one row per person's data or step."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import BotState

state = cast(Table, BotState.__table__)


class Scope(enum.StrEnum):
    # A person's conversation data (python-telegram-bot's user_data), by Telegram user id.
    USER = "user"
    # The step a conversation is at, by its name and its chat and user.
    CONVERSATION = "conversation"


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
    return dict(rows.tuples().all())
