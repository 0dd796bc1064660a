"""Retention: what `maintenance` prunes, what it keeps, in bounded batches, idempotently."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import parse_body, parse_event
from service.jobs.ingest import Delivery, ingest
from service.settings import Settings, SettingsError
from service.store.engine import create_engine, sessionmaker
from service.store.models import Avatar, Notification, WebhookEvent, utcnow
from service.store.retention import Pruned, prune
from service.store.users import ensure_user
from tests.support import schema
from tests.support.db import attach_many, run
from tests.support.servers import base_env, run_cli
from tests.support.trainings import training_job
from tests.support.webhooks import fal_ok, legacy, new_request_id

OLD = utcnow() - dt.timedelta(days=120)


def deliver(url: str, body: bytes) -> int:
    event = parse_event(parse_body(body), {})
    delivery = Delivery(body, event, {}, "", None, signed=False)
    run(url, lambda s: ingest(s, delivery))

    async def newest(session: AsyncSession) -> int:
        found = select(WebhookEvent.id).order_by(WebhookEvent.id.desc()).limit(1)
        return int((await session.execute(found)).scalar_one())

    return run(url, newest)


def age(url: str, model: Any, ids: list[int], **values: Any) -> None:
    """Move rows into the past (or another state), as time and the dispatcher would."""

    async def work(session: AsyncSession) -> None:
        await session.execute(update(model).where(model.id.in_(ids)).values(**values))

    run(url, work)


def ids(url: str, model: Any) -> set[int]:
    async def work(session: AsyncSession) -> set[int]:
        return set((await session.execute(select(model.id))).scalars())

    return run(url, work)


def pruned(url: str, batch: int = 1000) -> Pruned:
    async def go() -> Pruned:
        engine = create_engine(url)
        try:
            return await prune(sessionmaker(engine), 90, 30, batch=batch)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def open_job_without_its_events(url: str, request_id: str) -> None:
    """A training registered without applying stored events (as a hint-registered one is)."""

    async def work(session: AsyncSession) -> None:
        user = await ensure_user(session, 99)
        avatar = Avatar(
            user_id=user.id, name="Cy", training_type="style", status="training", progress=0
        )
        session.add(avatar)
        await session.flush()
        session.add(training_job(request_id, user.id, avatar.id))

    run(url, work)


@pytest.fixture
def url(database_url: str) -> str:
    schema.upgrade(database_url)
    return database_url


def test_old_events_of_finished_or_unknown_jobs_go_and_what_open_jobs_need_stays(
    url: str,
) -> None:
    done, running, waiting, young = (new_request_id() for _ in range(4))
    attach_many(url, [(1, "Done", done), (2, "Running", running), (3, "Young", young)])
    finished = [deliver(url, legacy(done, "in_progress", progress=50)), deliver(url, fal_ok(done))]
    of_running = deliver(url, legacy(running, "in_progress", progress=20))
    stray = deliver(url, fal_ok(new_request_id()))  # unmatched, nobody's
    of_open_job = deliver(url, fal_ok(waiting))  # unmatched, but its job is registered open
    open_job_without_its_events(url, waiting)
    recent = deliver(url, fal_ok(young))
    old = [*finished, of_running, stray, of_open_job]
    age(url, WebhookEvent, old, received_at=OLD)

    report = pruned(url)
    assert report.events == 3
    assert ids(url, WebhookEvent) == {of_running, of_open_job, recent}
    # Nothing left to do: a second pass prunes nothing.
    again = pruned(url)
    assert (again.events, again.notifications, again.batches) == (0, 0, 0)


def test_only_final_notifications_nobody_must_act_on_are_pruned(url: str) -> None:
    rids = [new_request_id() for _ in range(7)]
    attach_many(url, [(10 + i, f"A{i}", rid) for i, rid in enumerate(rids)])
    for rid in rids:
        deliver(url, fal_ok(rid))
    notes = sorted(ids(url, Notification))
    states = ["sent", "undeliverable", "pending", "sending", "uncertain", "failed", "sent"]
    for note, state in zip(notes, states, strict=True):
        age(url, Notification, [note], state=state, updated_at=OLD)
    age(url, Notification, [notes[-1]], updated_at=utcnow())  # sent, but recently

    assert pruned(url).notifications == 2
    assert ids(url, Notification) == set(notes[2:])


def test_batches_are_bounded_and_each_is_timed(url: str) -> None:
    rids = [new_request_id() for _ in range(5)]
    old = [deliver(url, fal_ok(rid)) for rid in rids]  # unmatched: nobody's
    age(url, WebhookEvent, old, received_at=OLD)
    report = pruned(url, batch=2)
    assert report.events == 5
    assert report.batches == 3
    assert len(report.batch_seconds) == 3
    assert 0 < report.longest_batch_seconds == max(report.batch_seconds)
    assert ids(url, WebhookEvent) == set()


def test_maintenance_command_prunes_with_the_configured_retention(url: str) -> None:
    kept = deliver(url, fal_ok(new_request_id()))
    gone = deliver(url, fal_ok(new_request_id()))
    age(url, WebhookEvent, [kept], received_at=utcnow() - dt.timedelta(days=5))
    age(url, WebhookEvent, [gone], received_at=utcnow() - dt.timedelta(days=8))
    env = base_env(DATABASE_URL=url, EVENTS_RETENTION_DAYS="7")
    result = run_cli("maintenance", "--batch", "10", env=env)
    summary = json.loads(result.stdout)
    assert summary["events"] == 1
    assert summary["batches"] == 1
    assert set(summary) >= {"notifications", "longest_batch_ms", "seconds"}
    assert ids(url, WebhookEvent) == {kept}


def test_retention_settings_default_to_90_and_30_days() -> None:
    settings = Settings.from_mapping({})
    assert (settings.events_retention_days, settings.notifications_retention_days) == (90, 30)
    env = {"EVENTS_RETENTION_DAYS": "7", "NOTIFICATIONS_RETENTION_DAYS": "1"}
    taken = Settings.from_mapping(env)
    assert (taken.events_retention_days, taken.notifications_retention_days) == (7, 1)


@pytest.mark.parametrize("name", ["EVENTS_RETENTION_DAYS", "NOTIFICATIONS_RETENTION_DAYS"])
@pytest.mark.parametrize("value", ["0", "-1", "ninety", "1.5"])
def test_a_bad_retention_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_mapping({name: value})
    assert str(caught.value).startswith(f"{name}: ")
    assert "\n" not in str(caught.value)


def test_maintenance_on_a_database_not_migrated_says_so(tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path}/empty.db")
    result = run_cli("maintenance", env=env, check=False)
    assert result.returncode == 3
    assert "migrate" in result.stderr
    assert result.stdout == ""
