"""The reconciler against the local FAL queue and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.reconciler import Policy, Report, reconcile_once
from service.bot.services import Services
from service.fal.payload import Event, EventStatus, parse_body, parse_event
from service.jobs.ingest import Delivery, ingest
from service.jobs.registry import Source
from service.operator import attach
from service.settings import Settings
from service.store import training_data
from service.store.models import Avatar, Notification, TrainingData, WebhookEvent, utcnow
from service.store.users import ensure_user
from tests.fakes.fal_queue import PORTRAIT, FalQueueServer
from tests.support import schema
from tests.support.files import FileServer
from tests.support.images import png
from tests.support.trainings import training_job

KEY = "fal-key-id:fal-key-secret"
POLICY = Policy(interval=1, expected=60, hard_limit=3600, stale_claim=120, data_retention=86400)
T = TypeVar("T")


@pytest.fixture
def fal() -> Iterator[FalQueueServer]:
    with FalQueueServer(KEY) as server:
        yield server


@pytest.fixture
def files() -> Iterator[FileServer]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("1.png", png(600, 600, 1))
    with FileServer() as server:
        server.files["/photos.zip"] = buffer.getvalue()
        yield server


@pytest.fixture
def db(database_url: str) -> str:
    schema.upgrade(database_url)
    return database_url


class World:
    """The bot's services over one database and the local FAL queue."""

    def __init__(self, database_url: str, fal: FalQueueServer, files: FileServer) -> None:
        self.settings = Settings(database_url=database_url, fal_key=KEY, fal_queue_url=fal.url)
        self.fal = fal
        self.files = files

    def run(self, work: Callable[[Services], Awaitable[T]]) -> T:
        async def go() -> T:
            svc = Services.open(self.settings, fal_timeout=2.0)
            try:
                return await work(svc)
            finally:
                await svc.close()

        return asyncio.run(go())

    def reconcile(self) -> Report:
        return self.run(lambda svc: reconcile_once(svc, POLICY))

    def training(self, telegram_id: int, age_seconds: float) -> tuple[str, str]:
        """A training the bot submitted `age_seconds` ago; returns (avatar id, request id)."""

        async def work(svc: Services) -> tuple[str, str]:
            submission = await svc.fal.submit(
                PORTRAIT,
                {"images_data_url": f"{self.files.url}/photos.zip"},
                "http://127.0.0.1:9/unused",
            )

            async def store(session: AsyncSession) -> str:
                user = await ensure_user(session, telegram_id, language_code="ru")
                avatar = Avatar(
                    user_id=user.id,
                    name=f"Avatar {telegram_id}",
                    training_type="portrait",
                    status="training",
                    progress=0,
                    started_by="bot",
                    training_started_at=utcnow() - dt.timedelta(seconds=age_seconds),
                )
                session.add(avatar)
                await session.flush()
                job = training_job(submission.request_id, user.id, avatar.id, urls_from=submission)
                session.add(job)
                return avatar.id

            return await svc.transaction(store), submission.request_id

        avatar_id, rid = self.run(work)
        self.fal.wait_downloaded(rid)
        return avatar_id, rid

    def query(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        return self.run(lambda svc: svc.transaction(work))

    def avatar(self, avatar_id: str) -> Avatar:
        return self.query(lambda s: s.get_one(Avatar, avatar_id))

    def notifications(self, avatar_id: str) -> list[str]:
        async def work(session: AsyncSession) -> list[str]:
            rows = await session.execute(
                select(Notification.kind).where(Notification.avatar_id == avatar_id)
            )
            return [kind for (kind,) in rows]

        return self.query(work)

    def events(self, request_id: str) -> list[WebhookEvent]:
        async def work(session: AsyncSession) -> list[WebhookEvent]:
            rows = await session.execute(
                select(WebhookEvent).where(WebhookEvent.request_id == request_id)
            )
            return list(rows.scalars())

        return self.query(work)


@pytest.fixture
def world(db: str, fal: FalQueueServer, files: FileServer) -> World:
    return World(db, fal, files)


def status_calls(fal: FalQueueServer) -> int:
    return sum(1 for c in fal.calls if c.path.endswith("/status"))


def test_a_finished_training_whose_callback_was_lost_is_applied_once(world: World) -> None:
    avatar_id, rid = world.training(8001, age_seconds=POLICY.expected + 5)
    world.fal.complete(rid, deliver=False)
    report = world.reconcile()
    assert (report.checked, report.applied) == (1, 1)
    avatar = world.avatar(avatar_id)
    assert avatar.status == "completed" and avatar.lora_url and avatar.progress == 100
    assert world.notifications(avatar_id) == ["completed"]
    (event,) = world.events(rid)
    assert event.signed is False and event.outcome == "received"
    assert event.source == "reconciler" and event.headers == {}
    assert parse_body(event.body)["payload"]["diffusers_lora_file"]["url"] == avatar.lora_url
    # Done now: the next pass does not even ask.
    asked = status_calls(world.fal)
    assert world.reconcile().checked == 0
    assert status_calls(world.fal) == asked
    assert world.notifications(avatar_id) == ["completed"]


def test_a_young_training_is_not_asked_about(world: World) -> None:
    avatar_id, rid = world.training(8002, age_seconds=5)
    world.fal.complete(rid, deliver=False)
    assert world.reconcile().checked == 0
    assert status_calls(world.fal) == 0
    assert world.avatar(avatar_id).status == "training"


def test_a_payload_error_callback_is_resolved_at_once_by_fetching_the_result(
    world: World,
) -> None:
    avatar_id, rid = world.training(8003, age_seconds=5)
    world.fal.complete(rid, deliver=False)
    raw = (
        b'{"request_id": "%s", "status": "OK", "payload": null, '
        b'"payload_error": "Response payload could not be serialized"}' % rid.encode()
    )
    event = parse_event(parse_body(raw), {"avatar_id": avatar_id}, rid)
    delivery = Delivery(raw, event, {}, f"avatar_id={avatar_id}", "127.0.0.1", signed=True)
    result = world.run(lambda svc: svc.transaction(lambda s: ingest(s, delivery)))
    assert result.outcome.value == "received"
    assert world.avatar(avatar_id).status == "training"
    report = world.reconcile()
    assert (report.checked, report.applied) == (1, 1)
    assert world.avatar(avatar_id).status == "completed"
    assert world.notifications(avatar_id) == ["completed"]


def test_a_training_that_failed_at_fal_fails_with_fals_reason(world: World) -> None:
    avatar_id, rid = world.training(8004, age_seconds=POLICY.expected + 5)
    world.fal.fail(rid, deliver=False, message="no face found in 7 of 10 images")
    world.reconcile()
    avatar = world.avatar(avatar_id)
    assert avatar.status == "failed"
    assert "no face found in 7 of 10 images" in (avatar.error_message or "")
    assert world.notifications(avatar_id) == ["failed"]


@pytest.mark.parametrize(
    ("status", "error_type"), [(500, "internal_error"), (504, "timeout")], ids=["500", "504"]
)
def test_a_run_that_broke_at_fal_fails_at_once_with_fals_reason(
    world: World, status: int, error_type: str
) -> None:
    # FAL answers such a result with a 5xx: read as FAL's reason, not as FAL being unwell
    # (which would be retried for hours and then blamed on the time limit).
    avatar_id, rid = world.training(8010 + status, age_seconds=POLICY.expected + 5)
    world.fal.start_training(rid)
    world.fal.fail_run(rid, status=status, error_type=error_type, deliver=False)
    report = world.reconcile()
    assert (report.checked, report.applied, report.timed_out) == (1, 1, 0)
    avatar = world.avatar(avatar_id)
    assert avatar.status == "failed"
    assert "the runner crashed" in (avatar.error_message or "")
    assert world.notifications(avatar_id) == ["failed"]


def test_past_the_hard_limit_it_is_cancelled_at_fal_and_failed(world: World) -> None:
    avatar_id, rid = world.training(8005, age_seconds=POLICY.hard_limit + 5)
    world.fal.start_training(rid)
    report = world.reconcile()
    assert report.timed_out == 1
    avatar = world.avatar(avatar_id)
    assert avatar.status == "failed"
    assert "did not finish within 1 hours" in (avatar.error_message or "")
    assert world.fal.request(rid).cancelled
    assert world.notifications(avatar_id) == ["failed"]


def test_a_training_still_running_within_the_limit_is_left_running(world: World) -> None:
    avatar_id, rid = world.training(8006, age_seconds=POLICY.expected + 5)
    world.fal.start_training(rid)
    report = world.reconcile()
    assert (report.checked, report.applied, report.timed_out) == (1, 0, 0)
    assert world.avatar(avatar_id).status == "training"
    assert world.notifications(avatar_id) == []


def test_fal_unreachable_changes_nothing(world: World) -> None:
    avatar_id, _ = world.training(8007, age_seconds=POLICY.expected + 5)
    world.fal.stop()
    report = world.reconcile()
    assert report.checked == 1 and report.applied == 0
    assert world.avatar(avatar_id).status == "training"


def test_an_abandoned_claim_goes_back_to_draft_and_a_fresh_one_stays(world: World) -> None:
    async def claims(session: AsyncSession) -> tuple[str, str]:
        old_user = await ensure_user(session, 8008)
        new_user = await ensure_user(session, 8009)
        ids = []
        for user_id, age in ((old_user.id, POLICY.stale_claim + 5), (new_user.id, 1)):
            avatar = Avatar(
                user_id=user_id,
                name="Claim",
                training_type="portrait",
                status="training",
                progress=0,
                started_by="bot",
            )
            session.add(avatar)
            await session.flush()
            await session.execute(
                update(Avatar)
                .where(Avatar.id == avatar.id)
                .values(updated_at=utcnow() - dt.timedelta(seconds=age))
            )
            ids.append(avatar.id)
        return ids[0], ids[1]

    old, fresh = world.query(claims)
    assert world.reconcile().reverted == 1
    assert world.avatar(old).status == "draft"
    assert "interrupted" in (world.avatar(old).error_message or "")
    assert world.avatar(fresh).status == "training"


def test_trainings_attached_by_an_operator_are_left_to_the_operator(world: World) -> None:
    async def attached(session: AsyncSession) -> Any:
        shown = await attach(session, 8010, "Old system", "portrait", "legacy-request-1")
        await session.execute(
            update(Avatar)
            .where(Avatar.id == shown["id"])
            .values(training_started_at=utcnow() - dt.timedelta(seconds=10 * 3600))
        )
        return shown["id"]

    avatar_id = world.query(attached)
    assert world.reconcile().checked == 0
    assert world.avatar(avatar_id).status == "training"


def test_long_expired_zips_are_purged_and_others_kept(world: World) -> None:
    async def zips(session: AsyncSession) -> tuple[str, str]:
        user = await ensure_user(session, 8011)
        tokens = []
        for ttl in (-POLICY.data_retention - 60, -60):
            avatar = Avatar(user_id=user.id, name="Z", training_type="portrait", status="draft")
            session.add(avatar)
            await session.flush()
            row = await training_data.store(session, avatar.id, b"zip", 1, ttl)
            tokens.append(row.token)
        return tokens[0], tokens[1]

    ancient, recent = world.query(zips)
    assert world.reconcile().purged == 1

    async def left(session: AsyncSession) -> list[str]:
        return [token for (token,) in await session.execute(select(TrainingData.token))]

    assert world.query(left) == [recent]
    assert ancient != recent


def test_a_cancelling_training_is_still_followed_and_its_completion_counts(world: World) -> None:
    avatar_id, rid = world.training(8012, age_seconds=POLICY.expected + 5)
    asked = Delivery.learnt(
        Event(rid, EventStatus.CANCEL_REQUESTED), Source.RECONCILER, {"status": "asked"}
    )
    world.query(lambda s: ingest(s, asked))
    assert world.avatar(avatar_id).status == "cancelling"
    world.fal.complete(rid, deliver=False)
    report = world.reconcile()
    assert (report.checked, report.applied) == (1, 1)
    assert world.avatar(avatar_id).status == "completed"
    assert world.notifications(avatar_id) == ["completed"]
    assert sorted(e.source for e in world.events(rid)) == ["reconciler", "reconciler"]
