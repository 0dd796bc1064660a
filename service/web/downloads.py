"""GET /api/v1/training-data/{token}.zip: a training's photos, served to FAL while it runs."""

from __future__ import annotations

import re

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from service.jobs.states import AvatarStatus
from service.store.engine import DatabaseUnavailable, run_transaction
from service.store.models import Avatar, TrainingData, utcnow
from service.web.edges import error_response
from service.web.runtime import Runtime

log = structlog.get_logger("service.training_data")

# secrets.token_urlsafe(32) is always 43 characters of the URL-safe base64 alphabet.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


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
