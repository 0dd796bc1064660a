"""Operator commands on generations: `generations list [--status S]` and `generations show ID`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.jobs.registry import JobKind
from service.jobs.states import GenerationStatus
from service.operator import one, with_owner_and_job
from service.store.models import FalJob, Generation, Notification, WebhookEvent

TABLE_COLUMNS = (
    "id", "telegram_id", "status", "num_images", "created_at", "fal_request_id", "label",
)  # fmt: skip
# A label is the prompt for a prompt of one's own: the table shows its start.
_LABEL_CHARS = 40


def add_commands(commands: Any) -> None:
    """`generations list | show`, as subcommands of `python -m service`."""
    generations = commands.add_parser("generations", help="inspect generations (photos)")
    actions = generations.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="generations, newest first")
    listing.add_argument("--status", choices=[s.value for s in GenerationStatus])
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100; 0: all)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = actions.add_parser("show", help="one generation: its job, events and message")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON (the only format)")


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def generation_json(g: Generation, telegram_id: int, job: FalJob | None) -> dict[str, Any]:
    return {
        "id": g.id,
        "telegram_id": telegram_id,
        "avatar_id": g.avatar_id,
        "status": g.status,
        "style": g.style,
        "label": g.label,
        "prompt": g.prompt,
        "frame": g.frame,
        "num_images": g.num_images,
        "images": g.images,
        "seed": g.seed,
        "error_message": g.error_message,
        "created_at": _iso(g.created_at),
        "updated_at": _iso(g.updated_at),
        "finished_at": _iso(g.finished_at),
        # FAL's id, named as `avatars show` names a training's.
        "fal_request_id": job.request_id if job else None,
    }


def _with_owner_and_job() -> Select[Any, int, FalJob]:
    return with_owner_and_job(Generation, FalJob.generation_id, JobKind.GENERATION)


async def list_generations(
    session: AsyncSession, status: str | None, limit: int = 100
) -> list[dict[str, Any]]:
    query = _with_owner_and_job()
    if status:
        query = query.where(Generation.status == status)
    query = query.order_by(Generation.created_at.desc(), Generation.id)
    rows = await session.execute(query.limit(limit) if limit else query)
    listed = []
    for generation, telegram_id, job in rows:
        shown = generation_json(generation, telegram_id, job)
        label = shown["label"]
        if len(label) > _LABEL_CHARS:
            shown["label"] = label[: _LABEL_CHARS - 1] + "…"
        listed.append(shown)
    return listed


async def _of(session: AsyncSession, model: Any, generation_id: str) -> list[Any]:
    """The generation's rows of `model` (its events, its notifications), oldest first."""
    query = select(model).where(model.generation_id == generation_id).order_by(model.id)
    return list((await session.execute(query)).scalars())


async def show_generation(session: AsyncSession, generation_id: str) -> dict[str, Any]:
    """The generation with its FAL job, its events and its outcome's message."""
    query = _with_owner_and_job().where(Generation.id == generation_id)
    generation, telegram_id, job = await one(session, query, f"no generation {generation_id}")
    shown = generation_json(generation, telegram_id, job)
    shown["job"] = (
        {
            "request_id": job.request_id,
            "app": job.app,
            "status_url": job.status_url,
            "response_url": job.response_url,
            "submitted_at": _iso(job.submitted_at),
        }
        if job
        else None
    )
    shown["events"] = [
        {
            "id": e.id,
            "status": e.status,
            "outcome": e.outcome,
            "source": e.source,
            "transition": e.transition,
            "received_at": _iso(e.received_at),
        }
        for e in await _of(session, WebhookEvent, generation_id)
    ]
    shown["notifications"] = [
        {
            "id": n.id,
            "kind": n.kind,
            "message_type": n.message_type,
            "state": n.state,
            "photos": len(n.media or []),
            "sent_at": _iso(n.sent_at),
        }
        for n in await _of(session, Notification, generation_id)
    ]
    return shown
