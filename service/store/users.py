"""The people of the bot and the service: one row per Telegram user, created on first sight."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import User


async def ensure_user(
    session: AsyncSession,
    telegram_id: int,
    *,
    username: str | None = None,
    first_name: str | None = None,
    language_code: str | None = None,
) -> User:
    user = (
        await session.execute(select(User).where(User.telegram_id == telegram_id))
    ).scalar_one_or_none()
    if user is None:
        user = User(telegram_id=telegram_id)
        session.add(user)
    for name, value in (
        ("username", username),
        ("first_name", first_name),
        ("language_code", language_code),
    ):
        if value is not None:
            setattr(user, name, value)
    await session.flush()
    return user
