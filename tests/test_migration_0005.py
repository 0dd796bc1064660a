"""Migration 0005 on a filled database, both kinds: the tallies start equal to a count."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic import command

from service.store import migrate
from service.store.engine import sync_url
from service.store.models import UTCDateTime


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    command.upgrade(migrate.alembic_config(database_url), "0004")
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


events = sa.table(
    "webhook_events",
    *(sa.column(c) for c in ("id", "dedupe_key", "request_id", "status", "outcome", "signed")),
    *(sa.column(c) for c in ("query", "body", "source")),
    sa.column("headers", sa.JSON),
    sa.column("received_at", UTCDateTime()),
)
notifications = sa.table(
    "notifications",
    *(sa.column(c) for c in ("id", "dedupe_key", "chat_id", "kind", "text", "state")),
    *(sa.column(c) for c in ("attempts", "message_type")),
    sa.column("created_at", UTCDateTime()),
    sa.column("next_attempt_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
)


def fill(engine: sa.Engine) -> None:
    """Old events of two outcomes, a recent one, and sent and pending notifications."""
    # Now, not at import: the migration's hold-back is measured from the moment it runs, and
    # a suite takes longer than the hold-back between collecting this module and running it.
    now = dt.datetime.now(dt.UTC)
    rows = [("ignored", now - dt.timedelta(days=2))] * 3 + [
        ("unmatched", now - dt.timedelta(hours=1))
    ]
    rows.append(("received", now))
    with engine.begin() as conn:
        for n, (outcome, at) in enumerate(rows):
            conn.execute(
                events.insert().values(
                    dedupe_key=f"k{n}", request_id=f"r{n}", status="OK", outcome=outcome,
                    signed=False, query="", body=b"{}", source="webhook", headers={},
                    received_at=at,
                )
            )  # fmt: skip
        for n, (state, at) in enumerate(
            [("sent", now - dt.timedelta(days=1))] * 2 + [("pending", now)]
        ):
            conn.execute(
                notifications.insert().values(
                    dedupe_key=f"n{n}", chat_id=1, kind="t", text="x", state=state, attempts=0,
                    message_type="text", created_at=at, next_attempt_at=at, updated_at=at,
                )
            )  # fmt: skip


def tallied(engine: sa.Engine) -> tuple[dict[str, int], dict[str, int]]:
    with engine.connect() as conn:
        marks: dict[str, int] = dict(
            conn.execute(sa.text("SELECT name, up_to_id FROM tally_marks")).all()
        )
        counts = conn.execute(sa.text("SELECT name, value, counted FROM tallies")).all()
    return marks, {f"{name}:{value}": int(n) for name, value, n in counts}


def test_upgrade_counts_the_old_rows_and_downgrade_removes_every_trace(
    engine: sa.Engine, database_url: str
) -> None:
    fill(engine)
    command.upgrade(migrate.alembic_config(database_url), "0005")
    marks, counts = tallied(engine)
    # The recent rows stay above the mark: a read counts them itself.
    assert marks == {"webhook_events": 4, "notifications": 2}
    assert counts == {
        "webhook_events:ignored": 3,
        "webhook_events:unmatched": 1,
        "notifications:": 2,
    }
    with engine.begin() as conn:
        conn.execute(events.update().where(events.c.id == 4).values(outcome="received"))
        conn.execute(events.delete().where(events.c.id.in_([1, 5])))
        conn.execute(notifications.delete().where(notifications.c.id == 1))
    assert tallied(engine)[1] == {
        "webhook_events:ignored": 2,
        "webhook_events:unmatched": 0,
        "webhook_events:received": 1,
        "notifications:": 1,
    }
    command.downgrade(migrate.alembic_config(database_url), "0004")
    names = sa.inspect(engine).get_table_names()
    assert "tallies" not in names and "tally_marks" not in names
    # No trigger is left to write into a table that is gone.
    with engine.begin() as conn:
        conn.execute(events.update().where(events.c.id == 4).values(outcome="ignored"))
        conn.execute(events.delete())
        conn.execute(notifications.delete())
    command.upgrade(migrate.alembic_config(database_url), "head")
    assert tallied(engine) == ({"webhook_events": 0, "notifications": 0}, {})
