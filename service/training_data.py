"""Training zips in the shared database, served to FAL at an unguessable, expiring URL.

The bot writes the zip; the webhook service serves it at
`GET /api/v1/training-data/{token}.zip`. Both only share the database, so this works when they
run on different hosts. The token (256 random bits) is the whole secret: there is no listing,
and an unknown, malformed, expired or finished one is the same 404. The row is deleted in the
transaction that records the training's end (service/ingest.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

import structlog
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from service.db import DatabaseUnavailable, run_transaction
from service.edges import error_response
from service.models import Avatar, TrainingData, utcnow
from service.runtime import Runtime
from service.states import AvatarStatus

log = structlog.get_logger("service.training_data")

PATH = "/api/v1/training-data/{token}.zip"
# secrets.token_urlsafe(32) is always 43 characters of the URL-safe base64 alphabet.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


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


async def _find(session: AsyncSession, token: str) -> bytes | None:
    row = (
        await session.execute(
            select(TrainingData.content, TrainingData.expires_at, Avatar.status)
            .join(Avatar, Avatar.id == TrainingData.avatar_id)
            .where(TrainingData.token == token)
        )
    ).one_or_none()
    if row is None:
        return None
    content, expires_at, status = row
    # Ended trainings lose their row in the same transaction; the status check is a second
    # lock on the same door, for rows written by anything else.
    if expires_at <= utcnow() or AvatarStatus(status).is_terminal:
        return None
    return bytes(content)


async def serve(request: Request) -> Response:
    """GET /api/v1/training-data/{token}.zip: the photos of one training, for FAL."""
    runtime: Runtime = request.app.state.runtime
    token = str(request.path_params["token"])
    if not _TOKEN.fullmatch(token):
        return _not_found()
    try:
        content = await run_transaction(runtime.sessions, lambda s: _find(s, token))
    except DatabaseUnavailable:
        return error_response(503, "database_unavailable", "the database is unavailable")
    # Never the whole token in a log: the log would then hold the key to the photos.
    log.info("training_data", token=token[:6], found=content is not None)
    if content is None:
        return _not_found()
    return Response(
        content,
        media_type="application/zip",
        headers={
            "Cache-Control": "no-store",
            "Content-Disposition": 'attachment; filename="training-data.zip"',
            "X-Content-Type-Options": "nosniff",
            "X-Robots-Tag": "noindex",
        },
    )


def _not_found() -> Response:
    return error_response(
        404, "not_found", "no such training data (unknown, expired, or the training has ended)"
    )
