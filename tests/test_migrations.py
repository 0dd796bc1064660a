"""Migration 0004 on a filled database, SQLite and PostgreSQL: every row kept, jobs registered."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.util.exc import CommandError

from service.fal.payload import Event, EventStatus, parse_body, parse_event
from service.jobs.ingest import Delivery, Outcome, ingest
from service.jobs.registry import Source
from service.operator import attach, show
from service.store import migrate
from service.store.engine import sync_url
from service.store.models import UTCDateTime
from tests.support.db import run
from tests.support.webhooks import fal_ok, legacy

PER_STATE = 40
BASE = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
APPS = {"portrait": "fal-ai/flux-lora-portrait-trainer", "style": "fal-ai/flux-lora-fast-training"}
URLS = ("status_url", "response_url", "cancel_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    command.upgrade(migrate.alembic_config(database_url), "0003")
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def tables(engine: sa.Engine) -> dict[str, sa.Table]:
    """The schema as it is in the database, datetimes read and written as aware UTC."""
    metadata = sa.MetaData()
    metadata.reflect(engine)
    for table in metadata.tables.values():
        for column in table.columns:
            if isinstance(column.type, sa.DateTime):
                column.type = UTCDateTime()
    return dict(metadata.tables)


def snapshot(engine: sa.Engine) -> dict[str, dict[Any, dict[str, Any]]]:
    """Every row of every table of ours, by primary key."""
    found = tables(engine)
    rows: dict[str, dict[Any, dict[str, Any]]] = {}
    with engine.connect() as conn:
        for name, table in found.items():
            if name == "alembic_version":
                continue
            key = [c.name for c in table.primary_key.columns]
            rows[name] = {
                tuple(row[k] for k in key): dict(row)
                for row in conn.execute(sa.select(table)).mappings()
            }
    return rows


# (status, started_by, has a request id, has FAL's URLs) for every kind of training at 0003.
KINDS = [
    ("draft", "bot", False, False),
    ("training", "bot", False, False),  # claimed, not yet submitted
    ("training", "bot", True, True),
    ("training", None, True, False),  # `avatars attach`
    ("completed", "bot", True, True),
    ("completed", None, True, False),
    ("failed", "bot", True, True),
    ("cancelled", "bot", True, True),
]


def fill(engine: sa.Engine) -> dict[str, int]:
    """Trainings in every state, their events, unmatched events, outbox rows, zips."""
    t = tables(engine)
    users, avatars, events = t["users"], t["avatars"], t["webhook_events"]
    notifications, zips = t["notifications"], t["training_data"]
    people = PER_STATE * len(KINDS)
    with engine.begin() as conn:
        conn.execute(
            users.insert(),
            [
                {
                    "telegram_id": 10_000 + i,
                    "language_code": ("ru", "en", None)[i % 3],
                    "created_at": BASE,
                    "updated_at": BASE,
                }
                for i in range(people)
            ],
        )
        user_of = dict(conn.execute(sa.select(users.c.telegram_id, users.c.id)).all())
    avatar_rows, event_rows, note_rows, zip_rows = [], [], [], []
    for i in range(people):
        status, started_by, has_request, has_urls = KINDS[i % len(KINDS)]
        when = BASE + dt.timedelta(minutes=i)
        training_type = ("portrait", "style")[i % 2]
        rid = f"rid-{i}" if has_request else None
        avatar_id = f"av{i:06d}"
        avatar_rows.append(
            {
                "id": avatar_id,
                "user_id": user_of[10_000 + i],
                "name": f"Avatar {i}",
                "training_type": training_type,
                "status": status,
                "progress": 100 if status == "completed" else i % 90,
                "fal_request_id": rid,
                **{
                    f"fal_{u}": f"https://queue.fal.run/x/requests/{rid}/{u}" if has_urls else None
                    for u in URLS
                },
                "trigger_word": f"aibots{i}",
                "lora_url": None,
                "config_url": None,
                "error_message": "bad photos" if status == "failed" else None,
                "created_at": when,
                "updated_at": when,
                # Some trainings predate training_started_at: submitted_at falls back.
                "training_started_at": when + dt.timedelta(seconds=5) if i % 5 else None,
                "finished_at": when + dt.timedelta(hours=1)
                if status in ("completed", "failed", "cancelled")
                else None,
                "started_by": started_by,
                "photo_count": 12,
                "photos": [{"file_id": f"f{i}", "file_unique_id": f"u{i}", "kind": "photo"}],
            }
        )
        if status == "draft":
            zip_rows.append(
                {
                    "token": f"tok{i:040d}",
                    "avatar_id": avatar_id,
                    "content": b"PK\x03\x04zip",
                    "size": 8,
                    "sha256": "0" * 64,
                    "photo_count": 12,
                    "created_at": when,
                    "expires_at": when + dt.timedelta(days=1),
                }
            )
        if rid is not None:
            from_reconciler = i % 3 == 0
            event_rows.append(
                {
                    "dedupe_key": f"{i:064d}",
                    "request_id": rid,
                    "avatar_id": avatar_id,
                    "status": "in_progress",
                    "outcome": "received",
                    "signed": not from_reconciler,
                    "client_ip": None if from_reconciler else "203.0.113.7",
                    "query": "",
                    "headers": {"x-aibots-source": "reconciler"}
                    if from_reconciler
                    else {"x-fal-webhook-request-id": rid},
                    "body": b'{"status":"IN_PROGRESS"}',
                    "transition": "training->training:5",
                    "received_at": when,
                    "applied_at": when,
                }
            )
        if status in ("completed", "failed", "cancelled"):
            note_rows.append(
                {
                    "dedupe_key": f"avatar:{avatar_id}:outcome",
                    "avatar_id": avatar_id,
                    "chat_id": 10_000 + i,
                    "kind": status,
                    "message_type": "text",
                    "text": f"<b>Avatar {i}</b>",
                    "media": None,
                    "reply_markup": None,
                    "state": ("pending", "sent", "failed")[i % 3],
                    "attempts": i % 3,
                    "next_attempt_at": when,
                    "created_at": when,
                    "updated_at": when,
                }
            )
    # Events that found no avatar yet, one of them for a training attached after the upgrade.
    for j in range(PER_STATE):
        event_rows.append(
            {
                "dedupe_key": f"u{j:063d}",
                "request_id": f"late-{j}",
                "avatar_id": None,
                "status": "completed",
                "outcome": "unmatched",
                "signed": True,
                "client_ip": "203.0.113.8",
                "query": "",
                "headers": {},
                "body": fal_ok(f"late-{j}"),
                "transition": None,
                "received_at": BASE,
                "applied_at": None,
            }
        )
    with engine.begin() as conn:
        for table, rows in (
            (avatars, avatar_rows),
            (zips, zip_rows),
            (events, event_rows),
            (notifications, note_rows),
        ):
            conn.execute(table.insert(), rows)
    return {
        "users": people,
        "avatars": len(avatar_rows),
        "webhook_events": len(event_rows),
        "notifications": len(note_rows),
        "training_data": len(zip_rows),
    }


def test_0004_moves_every_training_into_the_registry_and_keeps_every_row(
    engine: sa.Engine, database_url: str
) -> None:
    counts = fill(engine)
    before = snapshot(engine)
    started = time.perf_counter()
    command.upgrade(migrate.alembic_config(database_url), "0004")
    took = time.perf_counter() - started
    after = snapshot(engine)
    print(f"\n0004 upgrade on {engine.dialect.name}: {counts}, {took:.2f} s")

    moved = {f"fal_{u}" for u in ("request_id", *URLS)}
    for name in ("users", "notifications", "training_data"):
        assert after[name] == before[name], name
    for key, avatar in before["avatars"].items():
        assert after["avatars"][key] == {k: v for k, v in avatar.items() if k not in moved}
    for key, event in before["webhook_events"].items():
        source = "reconciler" if event["headers"].get("x-aibots-source") else "webhook"
        assert after["webhook_events"][key] == {**event, "source": source}
    assert sum(e["source"] == "reconciler" for e in after["webhook_events"].values()) > 0

    expected_jobs = {
        (a["fal_request_id"],): {
            "request_id": a["fal_request_id"],
            "kind": "training",
            "user_id": a["user_id"],
            "avatar_id": a["id"],
            "app": APPS[a["training_type"]] if a["started_by"] == "bot" else None,
            **{u: a[f"fal_{u}"] for u in URLS},
            "submitted_at": a["training_started_at"] or a["created_at"],
        }
        for a in before["avatars"].values()
        if a["fal_request_id"] is not None
    }
    assert after["fal_jobs"] == expected_jobs
    assert len(expected_jobs) == PER_STATE * sum(1 for k in KINDS if k[2])


def test_the_service_runs_on_a_migrated_database(engine: sa.Engine, database_url: str) -> None:
    fill(engine)
    command.upgrade(migrate.alembic_config(database_url), "head")
    # A running training's late callback is matched through the registry.
    body = fal_ok("rid-2")
    delivery = Delivery(body, parse_event(parse_body(body), {}), {}, "", None, signed=True)
    result = run(database_url, lambda s: ingest(s, delivery))
    assert (result.outcome, result.avatar_id) == (Outcome.RECEIVED, "av000002")
    assert run(database_url, lambda s: show(s, "rid-2"))["status"] == "completed"
    # An event stored as unmatched before the upgrade is applied by `avatars attach`.
    attached = run(database_url, lambda s: attach(s, 777, "Late", "portrait", "late-3"))
    assert attached["status"] == "completed" and attached["fal_request_id"] == "late-3"
    # A finished training stays finished.
    late = legacy("rid-4", "in_progress", progress=10)
    ignored = Delivery(late, parse_event(parse_body(late), {}), {}, "", None, signed=True)
    assert run(database_url, lambda s: ingest(s, ignored)).outcome is Outcome.IGNORED


def test_downgrade_to_0003_puts_every_request_id_back(engine: sa.Engine, database_url: str) -> None:
    fill(engine)
    before = snapshot(engine)
    config = migrate.alembic_config(database_url)
    # To the newest schema, which the code of today writes, and from there all the way down.
    command.upgrade(config, "head")
    # An event the reconciler learnt after the upgrade: its source is a column, not a header.
    learnt = Event("rid-2", EventStatus.IN_PROGRESS, progress=50)
    delivery = Delivery.learnt(learnt, Source.RECONCILER, {"status": "IN_PROGRESS"})
    assert run(database_url, lambda s: ingest(s, delivery)).outcome is Outcome.RECEIVED
    started = time.perf_counter()
    command.downgrade(config, "0003")
    print(f"\n0004 downgrade on {engine.dialect.name}: {time.perf_counter() - started:.2f} s")
    after = snapshot(engine)
    (added,) = [e for k, e in after["webhook_events"].items() if k not in before["webhook_events"]]
    assert added["headers"] == {"x-aibots-source": "reconciler"}
    for key, event in before["webhook_events"].items():
        assert after["webhook_events"][key] == event
    assert after["avatars"][("av000002",)]["fal_request_id"] == "rid-2"
    for name in ("users", "notifications", "training_data"):
        assert after[name] == before[name], name
    for key, avatar in before["avatars"].items():
        changed = ("progress", "updated_at") if key == ("av000002",) else ()
        assert {k: v for k, v in after["avatars"][key].items() if k not in changed} == {
            k: v for k, v in avatar.items() if k not in changed
        }
    assert migrate.current_revision(database_url) == "0003"


def test_downgrade_is_refused_while_a_job_is_not_a_training(
    engine: sa.Engine, database_url: str
) -> None:
    fill(engine)
    config = migrate.alembic_config(database_url)
    command.upgrade(config, "0004")
    jobs = tables(engine)["fal_jobs"]
    with engine.begin() as conn:
        conn.execute(
            jobs.insert().values(
                request_id="gen-1",
                kind="generation",
                user_id=sa.select(sa.func.min(tables(engine)["users"].c.id)).scalar_subquery(),
                submitted_at=BASE,
            )
        )
    with pytest.raises((CommandError, RuntimeError), match="not trainings would be lost"):
        command.downgrade(config, "0003")
    assert migrate.current_revision(database_url) == "0004"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == (
            PER_STATE * sum(1 for k in KINDS if k[2]) + 1
        )
