"""The registry of FAL jobs: one row per request submitted to FAL, keyed by its request id."""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import FalJob


class JobKind(enum.StrEnum):
    """What a FAL request does; each kind has its handler and its subject's transition table."""

    TRAINING = "training"


class Source(enum.StrEnum):
    """Who told us about an event, as recorded with it."""

    WEBHOOK = "webhook"
    # The bot asked FAL (the reconciler, the refresh and cancel buttons).
    RECONCILER = "reconciler"
    OPERATOR = "operator"


async def by_request(session: AsyncSession, request_id: str) -> FalJob | None:
    return await session.get(FalJob, request_id)


async def training_of(session: AsyncSession, avatar_id: str) -> FalJob | None:
    """The avatar's training job, if FAL has accepted one."""
    return (
        await session.execute(
            select(FalJob).where(
                FalJob.avatar_id == avatar_id, FalJob.kind == JobKind.TRAINING.value
            )
        )
    ).scalar_one_or_none()
