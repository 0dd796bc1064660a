"""One transaction per event, on SQLite and PostgreSQL: record, dedupe, transition, outbox."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, func, select

from service.fal.payload import Event, EventStatus, parse_body, parse_event
from service.jobs.ingest import Delivery, Outcome, Result, ingest
from service.jobs.registry import Source
from service.operator import attach, show
from service.store.engine import create_engine, run_transaction, sessionmaker
from service.store.models import Avatar, FalJob, Notification, WebhookEvent
from service.store.users import ensure_user
from tests.support import schema
from tests.support.db import run
from tests.support.trainings import training_job
from tests.support.webhooks import fal_error, fal_ok, legacy


def deliver(database_url: str, body: bytes, query: str = "") -> Result:
    from urllib.parse import parse_qsl

    event = parse_event(parse_body(body), dict(parse_qsl(query)))
    delivery = Delivery(body, event, {}, query, "127.0.0.1", signed=False)
    return run(database_url, lambda s: ingest(s, delivery))


def make_avatar(database_url: str, request_id: str | None, name: str = "Ann") -> str:
    async def work(session: Any) -> str:
        user = await ensure_user(session, 4242, language_code="ru")
        avatar = Avatar(
            user_id=user.id, name=name, training_type="portrait", status="training", progress=0
        )
        session.add(avatar)
        await session.flush()
        if request_id is not None:
            session.add(training_job(request_id, user.id, avatar.id))
        return avatar.id

    return run(database_url, work)


def count(database_url: str, model: Any, *where: Any) -> int:
    async def work(session: Any) -> int:
        return int(
            (
                await session.execute(select(func.count()).select_from(model).where(*where))
            ).scalar_one()
        )

    return run(database_url, work)


def avatar(database_url: str, request_id: str) -> dict[str, Any]:
    return run(database_url, lambda s: show(s, request_id))


def migrated(database_url: str) -> str:
    schema.upgrade(database_url)
    return database_url


def test_completion_marks_avatar_completed_and_enqueues_one_notification(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-1")
    result = deliver(url, fal_ok("rid-1"))
    assert result.outcome is Outcome.RECEIVED
    assert result.transition == "training->completed:100"
    assert result.notification_enqueued
    shown = avatar(url, "rid-1")
    assert shown["status"] == "completed"
    assert shown["progress"] == 100
    assert shown["lora_url"] == "https://fal.media/files/lora.safetensors"
    assert shown["config_url"] == "https://fal.media/files/config.json"
    assert count(url, Notification) == 1


def test_same_delivery_twice_is_a_duplicate_and_changes_nothing(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-2")
    assert deliver(url, fal_ok("rid-2")).outcome is Outcome.RECEIVED
    again = deliver(url, fal_ok("rid-2"))
    assert again.outcome is Outcome.DUPLICATE
    assert count(url, WebhookEvent) == 1
    assert count(url, Notification) == 1


def test_a_different_body_after_the_end_is_ignored_but_recorded(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-3")
    deliver(url, fal_ok("rid-3"))
    late_error = deliver(url, fal_error("rid-3"))
    late_progress = deliver(url, legacy("rid-3", "in_progress", progress=50))
    assert late_error.outcome is Outcome.IGNORED
    assert late_progress.outcome is Outcome.IGNORED
    shown = avatar(url, "rid-3")
    assert shown["status"] == "completed"
    assert shown["error_message"] is None
    assert count(url, WebhookEvent) == 3
    assert count(url, Notification) == 1


def test_progress_never_goes_down_with_out_of_order_events(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-4")
    assert deliver(url, legacy("rid-4", "in_progress", progress=60)).outcome is Outcome.RECEIVED
    assert deliver(url, legacy("rid-4", "in_progress", progress=30)).outcome is Outcome.IGNORED
    assert avatar(url, "rid-4")["progress"] == 60
    assert deliver(url, legacy("rid-4", "training", progress=75)).outcome is Outcome.RECEIVED
    assert avatar(url, "rid-4")["progress"] == 75


def test_failure_keeps_a_readable_error_and_enqueues_a_failed_notice(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-5")
    result = deliver(url, fal_error("rid-5"))
    assert result.outcome is Outcome.RECEIVED
    shown = avatar(url, "rid-5")
    assert shown["status"] == "failed"
    assert "Invalid status code: 422" in shown["error_message"]
    assert "images_data_url" in shown["error_message"]
    kinds = run(url, lambda s: _kinds(s))
    assert kinds == ["failed"]


async def _kinds(session: Any) -> list[str]:
    return list((await session.execute(select(Notification.kind))).scalars())


def test_avatar_id_in_query_matches_an_avatar_without_request_id_and_records_it(
    database_url: str,
) -> None:
    url = migrated(database_url)
    avatar_id = make_avatar(url, None)
    result = deliver(url, fal_ok("rid-6"), query=f"avatar_id={avatar_id}&training_type=portrait")
    assert result.outcome is Outcome.RECEIVED
    assert result.avatar_id == avatar_id
    assert avatar(url, "rid-6")["id"] == avatar_id


def test_avatar_id_in_comment_matches_too(database_url: str) -> None:
    url = migrated(database_url)
    avatar_id = make_avatar(url, None)
    body = legacy("rid-7", "completed", comment=f" user_id=99 ; avatar_id={avatar_id};")
    assert deliver(url, body).outcome is Outcome.RECEIVED
    assert avatar(url, "rid-7")["status"] == "completed"


def test_avatar_id_does_not_override_an_avatars_own_request_id(database_url: str) -> None:
    url = migrated(database_url)
    avatar_id = make_avatar(url, "rid-8-real")
    result = deliver(url, fal_ok("rid-8-other"), query=f"avatar_id={avatar_id}")
    assert result.outcome is Outcome.UNMATCHED
    assert avatar(url, "rid-8-real")["status"] == "training"


def test_unmatched_event_is_applied_when_the_training_is_registered(database_url: str) -> None:
    url = migrated(database_url)
    assert deliver(url, legacy("rid-9", "in_progress", progress=40)).outcome is Outcome.UNMATCHED
    assert deliver(url, fal_ok("rid-9")).outcome is Outcome.UNMATCHED
    attached = run(url, lambda s: attach(s, 777, "Late <b>one</b>", "style", "rid-9"))
    assert attached["status"] == "completed"
    assert attached["lora_url"] == "https://fal.media/files/lora.safetensors"
    assert count(url, WebhookEvent, WebhookEvent.outcome == "unmatched") == 0
    assert count(url, Notification) == 1
    # A repeat after the registration is recognised as the same delivery.
    assert deliver(url, fal_ok("rid-9")).outcome is Outcome.DUPLICATE


def test_concurrent_duplicates_change_state_once(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-10")
    body = fal_ok("rid-10")
    event = parse_event(parse_body(body), {})
    delivery = Delivery(body, event, {}, "", "127.0.0.1", signed=False)

    async def go() -> list[Result]:
        engine = create_engine(url)
        sessions = sessionmaker(engine)
        try:
            return await asyncio.gather(
                *(run_transaction(sessions, lambda s: ingest(s, delivery)) for _ in range(10))
            )
        finally:
            await engine.dispose()

    outcomes = sorted(r.outcome.value for r in asyncio.run(go()))
    assert outcomes == ["duplicate"] * 9 + ["received"]
    assert count(url, Notification) == 1


def test_notification_text_escapes_the_name(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-11", name="<b>Ann_2*[x]</b> & Co")
    deliver(url, fal_ok("rid-11"))

    async def texts(session: Any) -> list[str]:
        return list((await session.execute(select(Notification.text))).scalars())

    (text,) = run(url, texts)
    assert "<b>&lt;b&gt;Ann_2*[x]&lt;/b&gt; &amp; Co</b>" in text


def test_an_avatar_found_by_its_hint_gets_its_training_registered(database_url: str) -> None:
    url = migrated(database_url)
    avatar_id = make_avatar(url, None)
    deliver(url, legacy("rid-12", "in_progress", progress=10), query=f"avatar_id={avatar_id}")
    job = run(url, lambda s: s.get(FalJob, "rid-12"))
    assert job is not None
    assert (job.kind, job.avatar_id, job.status_url) == ("training", avatar_id, None)
    # The next event needs no hint: the registry knows the request id now.
    assert deliver(url, fal_ok("rid-12")).avatar_id == avatar_id


def test_an_event_learnt_from_fal_records_its_source(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-13")
    event = Event("rid-13", EventStatus.FAILED, error_message="stopped after 1 hours")
    evidence = {"request_id": "rid-13", "status": "ERROR", "error": "stopped after 1 hours"}
    learnt = Delivery.learnt(event, Source.RECONCILER, evidence)
    assert run(url, lambda s: ingest(s, learnt)).outcome is Outcome.RECEIVED
    assert avatar(url, "rid-13")["error_message"] == "stopped after 1 hours"

    async def recorded(session: Any) -> tuple[str, bytes, dict[str, str], bool]:
        row = (await session.execute(select(WebhookEvent))).scalar_one()
        return row.source, row.body, row.headers, row.signed

    source, body, headers, signed = run(url, recorded)
    assert (source, headers, signed) == ("reconciler", {}, False)
    assert parse_body(body) == evidence
    # Told twice, it is one event.
    assert run(url, lambda s: ingest(s, learnt)).outcome is Outcome.DUPLICATE


def test_a_cancel_request_keeps_the_outcome_counting(database_url: str) -> None:
    url = migrated(database_url)
    make_avatar(url, "rid-14")
    make_avatar(url, "rid-15", name="Bob")
    for rid in ("rid-14", "rid-15"):
        asked = Event(rid, EventStatus.CANCEL_REQUESTED)
        assert apply(url, asked, {"status": "CANCELLATION_REQUESTED"}).transition == (
            "training->cancelling:0"
        )
    assert deliver(url, legacy("rid-14", "in_progress", progress=50)).outcome is Outcome.RECEIVED
    assert avatar(url, "rid-14")["status"] == "cancelling"
    # Finished before the cancel reached it: the avatar is usable.
    assert deliver(url, fal_ok("rid-14")).transition == "cancelling->completed:100"
    # Stopped by the cancel, which FAL reports as an error: cancelled, not failed.
    assert deliver(url, fal_error("rid-15")).transition == "cancelling->cancelled:0"
    assert sorted(run(url, _kinds)) == ["cancelled", "completed"]


def apply(url: str, event: Event, evidence: dict[str, Any]) -> Result:
    learnt = Delivery.learnt(event, Source.RECONCILER, evidence)
    return run(url, lambda s: ingest(s, learnt))


def test_a_matched_event_on_postgresql_is_two_statements(postgres_url: str) -> None:
    """The look-up under the row lock, then record + change + outbox row as one statement."""
    url = migrated(postgres_url)
    make_avatar(url, "rid-16")
    body = fal_ok("rid-16")
    delivery = Delivery(body, parse_event(parse_body(body), {}), {}, "", None, signed=True)
    statements: list[str] = []

    async def go() -> Result:
        engine = create_engine(url)
        event.listens_for(engine.sync_engine, "before_cursor_execute")(
            lambda *args: statements.append(args[2])
        )
        try:
            return await run_transaction(sessionmaker(engine), lambda s: ingest(s, delivery))
        finally:
            await engine.dispose()

    assert asyncio.run(go()).notification_enqueued
    assert len([s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]) == 2
