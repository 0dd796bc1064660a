"""Many trainings at once, for load: one person (one chat) per avatar, all in `training`.

`avatars attach` registers one training per call and looks for stored events each time; the
benchmark and the torture suite need thousands, so this writes the same rows through the
service's own tables in a few multi-row INSERTs instead.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.queue import Submission
from service.jobs.registry import JobKind
from service.jobs.states import AvatarStatus
from service.store.models import Avatar, FalJob, User, new_id, utcnow
from tests.support.db import run

_BATCH = 2000


@dataclass(frozen=True)
class Training:
    chat_id: int
    request_id: str
    avatar_id: str
    name: str


def training_job(
    request_id: str, user_id: int, avatar_id: str, *, urls_from: Submission | None = None
) -> FalJob:
    """The registry's row for an avatar's training; `urls_from` a FAL Submission, if any."""
    return FalJob(
        request_id=request_id,
        kind=JobKind.TRAINING.value,
        user_id=user_id,
        avatar_id=avatar_id,
        status_url=urls_from.status_url if urls_from else None,
        response_url=urls_from.response_url if urls_from else None,
        cancel_url=urls_from.cancel_url if urls_from else None,
        submitted_at=utcnow(),
    )


async def insert_people(
    session: AsyncSession, chat_ids: list[int], now: dt.datetime
) -> dict[int, int]:
    """New users for these Telegram ids, in one INSERT: telegram id -> user id."""
    users = cast(Table, User.__table__)
    await session.execute(
        insert(users),
        [{"telegram_id": chat, "created_at": now, "updated_at": now} for chat in chat_ids],
    )
    found = await session.execute(
        select(users.c.telegram_id, users.c.id).where(users.c.telegram_id.in_(chat_ids))
    )
    return {telegram_id: user_id for telegram_id, user_id in found}


def seed_trainings(
    database_url: str, count: int, first_chat: int, name: str = "Load"
) -> list[Training]:
    """Register `count` trainings for the chats first_chat, first_chat + 1, ..."""
    avatars = cast(Table, Avatar.__table__)
    jobs = cast(Table, FalJob.__table__)
    planned = [
        Training(first_chat + i, str(uuid.uuid4()), new_id(), f"{name} {i}") for i in range(count)
    ]

    async def work(session: AsyncSession) -> None:
        now = utcnow()
        for start in range(0, count, _BATCH):
            batch = planned[start : start + _BATCH]
            ids = await insert_people(session, [t.chat_id for t in batch], now)
            rows: list[dict[str, Any]] = [
                {
                    "id": t.avatar_id,
                    "user_id": ids[t.chat_id],
                    "name": t.name,
                    "training_type": "portrait",
                    "status": AvatarStatus.TRAINING.value,
                    "progress": 0,
                    "created_at": now,
                    "updated_at": now,
                    "training_started_at": now,
                }
                for t in batch
            ]
            await session.execute(insert(avatars), rows)
            registered: list[dict[str, Any]] = [
                {
                    "request_id": t.request_id,
                    "kind": JobKind.TRAINING.value,
                    "user_id": ids[t.chat_id],
                    "avatar_id": t.avatar_id,
                    "submitted_at": now,
                }
                for t in batch
            ]
            await session.execute(insert(jobs), registered)

    run(database_url, work)
    return planned
