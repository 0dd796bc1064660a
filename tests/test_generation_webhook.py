"""A generation's signed callbacks through the real app, on SQLite and PostgreSQL (where a
registered job's callback takes the direct hot path): its transitions and its ONE outbox row."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from service.jobs.generation_texts import CALLBACK_AGAIN, CALLBACK_MINE, CALLBACK_NEW
from service.jobs.ingest import Result, register
from service.jobs.states import GenerationStatus
from service.outbox.messages import MessageType
from service.store.models import User
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support.app import WEBHOOK, InProcessApp, running_app
from tests.support.db import run
from tests.support.generations import (
    Submitted,
    events_of,
    generated,
    generation_error,
    generation_row,
    job_of,
    outbox_of,
    result_pending,
    status_only,
    submitted,
)
from tests.support.webhooks import signed
from tests.test_direct import delivery, matched, on_pool
from tests.test_ingest import migrated


@pytest.fixture(scope="module")
def web(module_database_url: str, module_jwks: JwksServer) -> Iterator[InProcessApp]:
    with running_app(module_database_url, FAL_JWKS_URL=module_jwks.jwks_url) as app:
        yield app


@pytest.fixture
def signer(module_signer: FalSigner) -> FalSigner:
    return module_signer


def post(web: InProcessApp, signer: FalSigner, body: bytes, query: str = "") -> str:
    path = f"{WEBHOOK}?{query}" if query else WEBHOOK
    answer = web.post(path, body, signed(signer, body))
    assert answer.status == 200, answer.body
    status: str = answer.json()["status"]
    return status


_chats = iter(range(8_100_000, 8_200_000))


def new(
    web: InProcessApp,
    num_images: int,
    *,
    language: str = "ru",
    label: str = "Студийный портрет",
    registered: bool = True,
) -> Submitted:
    """A queued generation of a person of its own (the quota is per person)."""
    return submitted(
        web.settings.database_url,
        num_images,
        telegram_id=next(_chats),
        language=language,
        label=label,
        registered=registered,
    )


def buttons(markup: object) -> list[str]:
    assert isinstance(markup, dict)
    return [b["callback_data"] for row in markup["inline_keyboard"] for b in row]


def test_four_photos_complete_the_generation_with_one_album(
    web: InProcessApp, signer: FalSigner
) -> None:
    url = web.settings.database_url
    gen = new(web, 4, language="en", label="Tom & <Jerry>")
    body = generated(gen.request_id, 4)
    assert post(web, signer, body) == "received"
    row = generation_row(url, gen.generation_id)
    assert row.status == "completed" and row.finished_at is not None
    assert row.images is not None and [i["nsfw"] for i in row.images] == [False] * 4
    assert row.seed == str(2**53 + 1)  # beyond a float's exactness, kept as text
    (note,) = outbox_of(url, gen.generation_id)
    assert note.message_type == MessageType.ALBUM.value and note.avatar_id == gen.avatar_id
    assert note.dedupe_key == f"generation:{gen.generation_id}:completed"
    assert note.media is not None and len(note.media) == 4
    assert [i["url"] for i in note.media] == [i["url"] for i in row.images]
    assert note.media[0]["caption"] == "Tom &amp; &lt;Jerry&gt;"
    assert all("caption" not in item for item in note.media[1:])
    assert "Photos left today: 16." in note.text
    assert buttons(note.reply_markup) == [
        CALLBACK_AGAIN.format(generation_id=gen.generation_id),
        CALLBACK_NEW.format(avatar_id=gen.avatar_id),
        CALLBACK_MINE,
    ]
    assert all(len(data.encode()) <= 64 for data in buttons(note.reply_markup))
    (event,) = events_of(url, gen.request_id)
    assert (event.generation_id, event.avatar_id) == (gen.generation_id, None)
    assert event.transition == "queued->completed"


def test_one_photo_is_a_photo_row_with_the_caption(web: InProcessApp, signer: FalSigner) -> None:
    url = web.settings.database_url
    gen = new(web, 1)
    assert post(web, signer, generated(gen.request_id, 1)) == "received"
    (note,) = outbox_of(url, gen.generation_id)
    assert note.message_type == MessageType.PHOTO.value
    assert note.media is not None and list(note.media[0]) == ["url"]
    assert note.text == "Студийный портрет"


@pytest.mark.parametrize(
    ("flags", "kind", "shown", "note_words"),
    [
        ([False, True, False, True], MessageType.ALBUM, 2, "Скрыто фильтром безопасности: 2."),
        ([True, False, True], MessageType.PHOTO, 1, "Скрыто фильтром безопасности: 2."),
        ([True, True], MessageType.TEXT, 0, "скрыл все фото (2)"),
    ],
    ids=["album", "photo", "none"],
)
def test_flagged_photos_are_held_back_and_counted(
    web: InProcessApp,
    signer: FalSigner,
    flags: list[bool],
    kind: MessageType,
    shown: int,
    note_words: str,
) -> None:
    url = web.settings.database_url
    gen = new(web, len(flags))
    assert post(web, signer, generated(gen.request_id, len(flags), flags)) == "received"
    (note,) = outbox_of(url, gen.generation_id)
    assert note.message_type == kind.value
    assert len(note.media or []) == shown
    flagged = {i["url"] for i in generation_row(url, gen.generation_id).images or [] if i["nsfw"]}
    assert not flagged & {item["url"] for item in note.media or []}
    assert note_words in note.text


def test_an_error_fails_it_with_one_text_and_no_photos_counted(
    web: InProcessApp, signer: FalSigner
) -> None:
    url = web.settings.database_url
    gen = new(web, 4, language="en")
    assert post(web, signer, generation_error(gen.request_id)) == "received"
    row = generation_row(url, gen.generation_id)
    assert row.status == "failed" and row.images is None and row.finished_at is not None
    assert row.error_message is not None and "the LoRA could not be loaded" in row.error_message
    (note,) = outbox_of(url, gen.generation_id)
    assert note.message_type == MessageType.TEXT.value and note.media is None
    assert note.text.startswith("❌ The photos could not be made: the image service refused")
    assert "do not count toward today's limit" in note.text
    assert buttons(note.reply_markup)[0] == CALLBACK_AGAIN.format(generation_id=gen.generation_id)
    # The same person's next generation still has all 20 left after this one's 4.
    following = submitted(url, 2, telegram_id=_telegram_id(url, gen), language="en")
    assert post(web, signer, generated(following.request_id, 2)) == "received"
    (next_note,) = outbox_of(url, following.generation_id)
    assert "Photos left today: 18." in next_note.text


def _telegram_id(database_url: str, gen: Submitted) -> int:
    async def work(session: AsyncSession) -> int:
        user = await session.get(User, gen.user_id)
        assert user is not None
        return int(user.telegram_id)

    return run(database_url, work)


def test_payload_error_sends_nothing_and_the_generation_runs(
    web: InProcessApp, signer: FalSigner
) -> None:
    url = web.settings.database_url
    gen = new(web, 2)
    assert post(web, signer, result_pending(gen.request_id)) == "received"
    assert generation_row(url, gen.generation_id).status == "running"
    assert outbox_of(url, gen.generation_id) == []
    assert [e.status for e in events_of(url, gen.request_id)] == ["result_pending"]


def test_three_copies_give_one_row_and_late_progress_is_ignored(
    web: InProcessApp, signer: FalSigner
) -> None:
    url = web.settings.database_url
    gen = new(web, 3)
    body = generated(gen.request_id, 3)
    answers = [post(web, signer, body) for _ in range(3)]
    assert answers == ["received", "duplicate", "duplicate"]
    assert post(web, signer, status_only(gen.request_id, "IN_PROGRESS")) == "ignored"
    assert post(web, signer, status_only(gen.request_id, "IN_QUEUE")) == "ignored"
    assert post(web, signer, generation_error(gen.request_id)) == "ignored"
    assert generation_row(url, gen.generation_id).status == "completed"
    assert len(outbox_of(url, gen.generation_id)) == 1


def test_progress_moves_queued_to_running_once(web: InProcessApp, signer: FalSigner) -> None:
    url = web.settings.database_url
    gen = new(web, 1)
    assert post(web, signer, status_only(gen.request_id, "IN_PROGRESS")) == "received"
    assert post(web, signer, status_only(gen.request_id, "IN_QUEUE")) == "ignored"
    assert generation_row(url, gen.generation_id).status == "running"
    assert [e.transition for e in events_of(url, gen.request_id)] == ["queued->running", None]


def test_a_callback_before_the_registration_is_matched_by_its_hint(
    web: InProcessApp, signer: FalSigner
) -> None:
    url = web.settings.database_url
    gen = new(web, 2, registered=False)
    body = generated(gen.request_id, 2)
    assert post(web, signer, body, f"generation_id={gen.generation_id}") == "received"
    row = generation_row(url, gen.generation_id)
    assert row.status == "completed"
    assert len(outbox_of(url, gen.generation_id)) == 1
    # The hint registered the job: the repeat is matched by its request id.
    assert post(web, signer, body, f"generation_id={gen.generation_id}") == "duplicate"
    assert post(web, signer, status_only(gen.request_id)) == "ignored"


def test_a_callback_before_the_registration_without_a_hint_waits_for_register(
    web: InProcessApp, signer: FalSigner
) -> None:
    url = web.settings.database_url
    gen = new(web, 2, registered=False)
    assert post(web, signer, generated(gen.request_id, 2)) == "unmatched"
    assert outbox_of(url, gen.generation_id) == []

    async def accept(session: AsyncSession) -> list[Result]:
        job = job_of(gen.request_id, gen.user_id, gen.avatar_id, gen.generation_id)
        return await register(session, job)

    (result,) = run(url, accept)
    assert result.transition == "queued->completed" and result.notification_enqueued
    assert generation_row(url, gen.generation_id).status == "completed"
    assert len(outbox_of(url, gen.generation_id)) == 1
    (event,) = events_of(url, gen.request_id)
    assert (event.outcome, event.generation_id) == ("received", gen.generation_id)


@pytest.mark.postgres
def test_a_registered_generation_takes_the_direct_path(postgres_url: str) -> None:
    url = migrated(postgres_url)
    gen = submitted(url, 2)
    body = generated(gen.request_id, 2)
    first = on_pool(url, lambda pool: matched(pool, body))
    again = on_pool(url, lambda pool: matched(pool, body))
    assert first is not None and first.notification_enqueued
    assert (first.transition, first.generation_id) == ("queued->completed", gen.generation_id)
    assert again is not None and again.outcome.value == "duplicate"
    assert delivery(body).event.generated is not None
    assert generation_row(url, gen.generation_id).status == "completed"
    assert len(outbox_of(url, gen.generation_id)) == 1


def test_status_and_metrics_count_generations_by_status(
    web: InProcessApp, signer: FalSigner
) -> None:
    def counted() -> tuple[dict[str, int], dict[str, float]]:
        status = web.call("GET", "/api/v1/webhook/status").json()
        text = web.call("GET", "/metrics").body.decode()
        gauges = re.findall(r'^generations\{status="(\w+)"\} (\S+)$', text, re.M)
        return status["generations"], {name: float(value) for name, value in gauges}

    before, gauges_before = counted()
    assert set(before) == {s.value for s in GenerationStatus} == set(gauges_before)
    done, failing = new(web, 1), new(web, 2)
    new(web, 1, registered=False)
    assert post(web, signer, generated(done.request_id, 1)) == "received"
    assert post(web, signer, generation_error(failing.request_id)) == "received"
    after, gauges_after = counted()
    moved = {k: after[k] - before[k] for k in after}
    assert moved == {"queued": 1, "running": 0, "completed": 1, "failed": 1}
    assert {k: gauges_after[k] - gauges_before[k] for k in after} == moved
    status = web.call("GET", "/api/v1/webhook/status").json()
    assert status["oldest_generation_age_seconds"] is not None
