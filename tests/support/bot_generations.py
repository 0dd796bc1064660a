"""Set-up and reading for the bot's generation tests: completed avatars, earlier generations."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import Avatar, FalJob, Generation, User, WebhookEvent, new_id, utcnow
from tests.support.db import owned_by, run


def completed_avatar(
    database_url: str, telegram_id: int, name: str, language_code: str = "ru"
) -> Avatar:
    """A trained avatar of this person (created with the person if new), as FAL left it."""

    async def work(session: AsyncSession) -> Avatar:
        user = (
            await session.execute(select(User).where(User.telegram_id == telegram_id))
        ).scalar_one_or_none()
        if user is None:
            user = User(telegram_id=telegram_id, language_code=language_code)
            session.add(user)
            await session.flush()
        avatar_id = new_id()
        avatar = Avatar(
            id=avatar_id,
            user_id=user.id,
            name=name,
            training_type="portrait",
            status="completed",
            progress=100,
            trigger_word=f"aibots{avatar_id[:6]}",
            lora_url=f"https://v3.fal.media/files/{avatar_id}/pytorch_lora_weights.safetensors",
            started_by="bot",
        )
        session.add(avatar)
        await session.flush()
        return avatar

    return run(database_url, work)


def earlier_generation(
    database_url: str, avatar: Avatar, count: int, status: str, hours_ago: float
) -> str:
    """A generation of `count` photos made `hours_ago`, straight into the table."""
    created = utcnow() - dt.timedelta(hours=hours_ago)

    async def work(session: AsyncSession) -> str:
        row = Generation(
            user_id=avatar.user_id,
            avatar_id=avatar.id,
            status=status,
            style="studio",
            label="Студийный портрет",
            prompt=f"studio portrait of {avatar.trigger_word}",
            frame="portrait_4_3",
            num_images=count,
            created_at=created,
            updated_at=created,
        )
        session.add(row)
        await session.flush()
        return row.id

    return run(database_url, work)


def generations_of(database_url: str, telegram_id: int) -> list[Generation]:
    return owned_by(database_url, telegram_id, Generation)


def job_of(database_url: str, generation_id: str) -> FalJob | None:
    async def work(session: AsyncSession) -> FalJob | None:
        rows = await session.execute(select(FalJob).where(FalJob.generation_id == generation_id))
        return rows.scalar_one_or_none()

    return run(database_url, work)


def event_outcomes(database_url: str, request_id: str) -> list[tuple[str, str]]:
    """(source, outcome) of every event recorded for the request, in arrival order."""

    async def work(session: AsyncSession) -> list[tuple[str, str]]:
        rows = await session.execute(
            select(WebhookEvent.source, WebhookEvent.outcome)
            .where(WebhookEvent.request_id == request_id)
            .order_by(WebhookEvent.id)
        )
        return [(row[0], row[1]) for row in rows]

    return run(database_url, work)
