"""Migration 0006 on a filled database (from 0005), SQLite and PostgreSQL: every row kept, the
tallies' triggers still counting; the downgrade only while no generation would be lost."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.util.exc import CommandError

from service.store import migrate
from service.store.engine import sync_url
from tests.test_migrations import BASE, fill, snapshot, tables

POINTING = ("fal_jobs", "webhook_events", "notifications")


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    # Filled as 0003 had it, then brought to 0005 the way production was.
    command.upgrade(migrate.alembic_config(database_url), "0003")
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    fill(engine)
    command.upgrade(migrate.alembic_config(database_url), "0005")
    yield engine
    engine.dispose()


def tally(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, value, counted FROM tallies")).all()
    return {f"{name}:{value}": int(n) for name, value, n in rows}


def retag_one_event(engine: sa.Engine) -> tuple[str, str]:
    """Move the oldest event to another outcome; answers (the one it had, the new one)."""
    events = tables(engine)["webhook_events"]
    with engine.begin() as conn:
        first, had = conn.execute(
            sa.select(events.c.id, events.c.outcome).order_by(events.c.id).limit(1)
        ).one()
        new = "received" if had == "ignored" else "ignored"
        conn.execute(events.update().where(events.c.id == first).values(outcome=new))
    return str(had), new


def test_0006_keeps_every_row_and_the_tallies_triggers(
    engine: sa.Engine, database_url: str
) -> None:
    before, counted = snapshot(engine), tally(engine)
    # The filled rows are days old: 0005 counted them all, so a change to one is a trigger's.
    marks = {k: row["up_to_id"] for (k,), row in before["tally_marks"].items()}
    assert marks["webhook_events"] == max(key for (key,) in before["webhook_events"])
    command.upgrade(migrate.alembic_config(database_url), "0006")
    after = snapshot(engine)
    assert after.pop("generations") == {}
    for name, rows in before.items():
        if name in POINTING:
            rows = {key: {**row, "generation_id": None} for key, row in rows.items()}
        assert after[name] == rows, name
    assert all(len(before[name]) > 0 for name in POINTING)
    assert tally(engine) == counted
    had, new = retag_one_event(engine)
    moved = {k: v - counted.get(k, 0) for k, v in tally(engine).items() if v != counted.get(k)}
    # Tables rebuilt on SQLite would have lost their triggers: nothing would have moved.
    assert moved == {f"webhook_events:{had}": -1, f"webhook_events:{new}": 1}


def _generation(engine: sa.Engine) -> dict[str, Any]:
    t = tables(engine)
    with engine.connect() as conn:
        user_id, avatar_id = conn.execute(
            sa.select(t["avatars"].c.user_id, t["avatars"].c.id).limit(1)
        ).one()
    return {
        "id": "gen1", "user_id": user_id, "avatar_id": avatar_id, "status": "completed",
        "label": "Studio", "prompt": "photo of x", "frame": "square_hd", "num_images": 1,
        "created_at": BASE, "updated_at": BASE,
    }  # fmt: skip


def test_downgrade_works_on_an_empty_generations_table(
    engine: sa.Engine, database_url: str
) -> None:
    before = snapshot(engine)
    config = migrate.alembic_config(database_url)
    command.upgrade(config, "0006")
    # A generation that came and went leaves nothing the older schema cannot hold.
    generations = tables(engine)["generations"]
    with engine.begin() as conn:
        conn.execute(generations.insert().values(**_generation(engine)))
        conn.execute(generations.delete())
    command.downgrade(config, "0005")
    assert migrate.current_revision(database_url) == "0005"
    assert snapshot(engine) == before
    for name in POINTING:
        columns = {c["name"] for c in sa.inspect(engine).get_columns(name)}
        assert "generation_id" not in columns, name
    command.upgrade(config, "head")
    assert migrate.current_revision(database_url) == migrate.head_revision(database_url)


def test_downgrade_is_refused_while_a_generation_exists(
    engine: sa.Engine, database_url: str
) -> None:
    config = migrate.alembic_config(database_url)
    command.upgrade(config, "0006")
    generations = tables(engine)["generations"]
    with engine.begin() as conn:
        conn.execute(generations.insert().values(**_generation(engine)))
    with pytest.raises((CommandError, RuntimeError), match="1 generations would be lost"):
        command.downgrade(config, "0005")
    assert migrate.current_revision(database_url) == "0006"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(generations)).scalar_one() == 1
