"""Training zips in the shared database, served to FAL at an unguessable, expiring URL.

The bot writes the zip; the webhook service serves it (service/web/downloads.py) at
`GET /api/v1/training-data/{token}.zip`. Both only share the database, so this works when they
run on different hosts. The token (256 random bits) is the whole secret: there is no listing,
and an unknown, malformed, expired or finished one is the same 404. The row is deleted in the
transaction that records the training's end (service/jobs/ingest.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import TrainingData, utcnow

PATH = "/api/v1/training-data/{token}.zip"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def url_for(public_base_url: str, token: str) -> str:
    return f"{public_base_url.rstrip('/')}{PATH.format(token=token)}"


async def store(
    session: AsyncSession, avatar_id: str, content: bytes, photo_count: int, ttl_seconds: float
) -> TrainingData:
    """Keep this zip as the avatar's training data under a fresh token (replacing any other)."""
    await session.execute(delete(TrainingData).where(TrainingData.avatar_id == avatar_id))
    now = utcnow()
    row = TrainingData(
        token=new_token(),
        avatar_id=avatar_id,
        content=content,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        photo_count=photo_count,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=ttl_seconds),
    )
    session.add(row)
    await session.flush()
    return row


async def renew(session: AsyncSession, avatar_id: str, ttl_seconds: float) -> TrainingData | None:
    """Give the stored zip a fresh token and expiry (for a retry); None if there is none."""
    row = (
        await session.execute(select(TrainingData).where(TrainingData.avatar_id == avatar_id))
    ).scalar_one_or_none()
    if row is None:
        return None
    # The primary key changes, so the row is replaced rather than updated.
    content, count = row.content, row.photo_count
    return await store(session, avatar_id, content, count, ttl_seconds)


async def purge_expired(session: AsyncSession, before: dt.datetime) -> int:
    result = await session.execute(delete(TrainingData).where(TrainingData.expires_at < before))
    return int(result.rowcount)  # type: ignore[attr-defined]
