"""The registry of FAL jobs: one row per request submitted to FAL, keyed by its request id."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import Event
from service.store.chains import Chain, Step
from service.store.direct import DirectConnection
from service.store.models import FalJob


class JobKind(enum.StrEnum):
    """What a FAL request does; each kind has its handler and its subject's transition table."""

    TRAINING = "training"
    # Photos from a trained avatar; its subject is its row in `generations`.
    GENERATION = "generation"


class Source(enum.StrEnum):
    """Who told us about an event, as recorded with it."""

    WEBHOOK = "webhook"
    # The bot asked FAL (the reconciler, the refresh and cancel buttons).
    RECONCILER = "reconciler"
    OPERATOR = "operator"


# The name a kind gives the step of its plan that writes the outbox row, so that the caller
# can tell whether a notification was enqueued.
ENQUEUED = "enqueued"


@dataclass(frozen=True)
class Plan:
    """What an event does to its job's subject: the transition, and the writes that make it.

    `params` holds each step's values under the step's name.
    """

    transition: str | None = None
    steps: Chain = ()
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


class Subject(Protocol):
    """What a job is about (an avatar for a training), as its kind's handler found it."""

    @property
    def id(self) -> str: ...

    @property
    def recorded_as(self) -> dict[str, str | None]:
        """The `avatar_id` and `generation_id` its events are recorded under."""


S = TypeVar("S", bound=Subject)


class Handler(Protocol[S]):
    """One kind of job: how an event finds its subject, and what it does to it."""

    async def by_request(
        self, session: AsyncSession | DirectConnection, request_id: str
    ) -> S | None:
        """The subject of the registered job `request_id`, locked until commit; on a direct
        connection (the webhook's hot path, autocommit) read without a lock."""

    def unmoved(self, subject: S) -> tuple[Step, dict[str, Any]]:
        """A step that finds `subject` still as it was read, and locks it: the direct path's
        write is made only if its plan still holds."""

    async def by_hint(self, session: AsyncSession, event: Event) -> S | None:
        """The subject the event names itself (an `?avatar_id=`), for a job not registered."""

    def plan(self, subject: S, event: Event, now: dt.datetime) -> Plan:
        """The event's effect on the subject, through the kind's transition table."""


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
