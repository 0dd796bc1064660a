"""End to end for generations: from FAL's signed callback of a 4-photo generation, through
nginx and the webhook service, to the local Bot API server receiving the album (it fetches
every photo's URL from a local image host, as Telegram fetches FAL's).

The generations are written as the bot leaves them on FAL's acceptance (`queued`, the job
registered), in a few multi-row INSERTs, like bench/e2e.py's trainings.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from bench.e2e import ADDRESSES, latencies_ms, nearest_rank, received
from service.fal.flux_lora import Frame
from service.jobs.registry import JobKind
from service.jobs.states import AvatarStatus, GenerationStatus
from service.store.models import Avatar, FalJob, Generation, new_id, utcnow
from tests.fakes.fal_keys import FalSigner
from tests.fakes.fal_queue import callback_body
from tests.support.db import run
from tests.support.imagehost import ImageHost
from tests.support.images import jpeg
from tests.support.sender import Sender, Webhook, sources
from tests.support.stack import Stack
from tests.support.trainings import insert_people

PHOTOS = 4
WIDTH, HEIGHT = 896, 1152  # flux-lora's portrait_4_3
TRIGGER = "ohwx_bench"


@dataclass(frozen=True)
class Seeded:
    chat_id: int
    request_id: str
    generation_id: str


def seed_generations(database_url: str, count: int, first_chat: int) -> list[Seeded]:
    """`count` people, each with a completed avatar and one generation of 4 photos queued."""
    avatars = cast(Table, Avatar.__table__)
    generations, jobs = cast(Table, Generation.__table__), cast(Table, FalJob.__table__)
    planned = [Seeded(first_chat + i, str(uuid.uuid4()), new_id()) for i in range(count)]

    async def work(session: AsyncSession) -> None:
        now = utcnow()
        user_of = await insert_people(session, [s.chat_id for s in planned], now)
        avatar_of = {s.chat_id: new_id() for s in planned}
        await session.execute(
            insert(avatars),
            [
                {
                    "id": avatar_of[s.chat_id],
                    "user_id": user_of[s.chat_id],
                    "name": "Bench",
                    "training_type": "portrait",
                    "status": AvatarStatus.COMPLETED.value,
                    "progress": 100,
                    "trigger_word": TRIGGER,
                    "lora_url": "https://v3.fal.media/files/bench/lora.safetensors",
                    "created_at": now,
                    "updated_at": now,
                }
                for s in planned
            ],
        )
        await session.execute(
            insert(generations),
            [
                {
                    "id": s.generation_id,
                    "user_id": user_of[s.chat_id],
                    "avatar_id": avatar_of[s.chat_id],
                    "status": GenerationStatus.QUEUED.value,
                    "style": "studio",
                    "label": "Studio portrait",
                    "prompt": f"studio portrait of {TRIGGER}",
                    "frame": Frame.PORTRAIT.value,
                    "num_images": PHOTOS,
                    "created_at": now,
                    "updated_at": now,
                }
                for s in planned
            ],
        )
        await session.execute(
            insert(jobs),
            [
                {
                    "request_id": s.request_id,
                    "kind": JobKind.GENERATION.value,
                    "user_id": user_of[s.chat_id],
                    "avatar_id": avatar_of[s.chat_id],
                    "generation_id": s.generation_id,
                    "app": "fal-ai/flux-lora",
                    "submitted_at": now,
                }
                for s in planned
            ],
        )

    run(database_url, work)
    return planned


def completed(request_id: str, host: ImageHost, photo: bytes) -> bytes:
    """FAL's OK callback of the request: four photos on the image host, none flagged."""
    images = [
        {
            "url": host.add(f"/files/{request_id}/{index}.jpeg", photo),
            "width": WIDTH,
            "height": HEIGHT,
            "content_type": "image/jpeg",
        }
        for index in range(PHOTOS)
    ]
    output = {
        "images": images,
        "seed": 4_242_424_242_424_242_424,
        "has_nsfw_concepts": [False] * PHOTOS,
        "prompt": f"studio portrait of {TRIGGER}",
    }
    return callback_body(request_id, "OK", payload=output)


def albums(record: Path) -> dict[int, list[float]]:
    """chat_id -> the times its albums (sendMediaGroup) reached the Bot API server."""
    return received(record, "sendMediaGroup")


def steady(
    stack: Stack, signer: FalSigner, seeded: list[Seeded], record: Path, rate: float
) -> dict[str, Any]:
    """The callbacks at `rate` a second; each timed until its album was received."""
    photo = jpeg(WIDTH, HEIGHT, seed=7)
    addresses = sources(ADDRESSES, network=7)
    with ImageHost() as host:
        webhooks = [
            Webhook(s.request_id, completed(s.request_id, host, photo), addresses[i % ADDRESSES])
            for i, s in enumerate(seeded)
        ]
        sender = Sender(stack.port, stack.context, signer, attempts=1)
        started = time.monotonic()
        deliveries = sender.deliver_all(webhooks, concurrency=8, rate=rate)
        seconds = time.monotonic() - started
        chat = {s.request_id: s.chat_id for s in seeded}
        acked = [d for d in deliveries if d.acknowledged]
        wanted = {chat[d.webhook.request_id] for d in acked}
        deadline = time.monotonic() + 60
        seen = albums(record)
        while not wanted <= set(seen) and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = albums(record)
    latencies = latencies_ms(acked, chat, seen)
    ours = {c: times for c, times in seen.items() if c in set(chat.values())}
    return {
        "rate": rate,
        "seconds": round(seconds, 1),
        "photos_per_album": PHOTOS,
        "sent": len(deliveries),
        "acknowledged": len(acked),
        "albums_received": sum(len(times) for times in ours.values()),
        "missing": len(wanted - set(seen)),
        "duplicates": sum(len(times) - 1 for times in ours.values()),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(nearest_rank(latencies, 0.99), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
    }
