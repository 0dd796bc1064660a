"""The dialect seam: what each database can do, and a chain of writes on each of them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.chains import Step, StepContext, write_chain
from service.store.dialect import POSTGRESQL, SQLITE, dialect_for
from service.store.engine import run_transaction, sessionmaker

metadata = MetaData()
records = Table("records", metadata, Column("key", String(32), primary_key=True))
effects = Table(
    "effects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(32)),
    Column("note", String(32)),
)


def _record(ctx: StepContext) -> Any:
    return (
        ctx.dialect.insert(records)
        .values(key=ctx.param("key", String()))
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(records.c.key)
    )


def _effect(ctx: StepContext) -> Any:
    chosen = select(ctx.param("key", String()), ctx.param("note", String())).where(ctx.gate)
    return (
        ctx.dialect.insert(effects)
        .from_select(["key", "note"], chosen)
        .returning(effects.c.id, *ctx.dialect.wake("test_channel"))
    )


CHAIN = (Step("recorded", _record), Step("effect", _effect), Step("again", _effect))


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("sqlite:///var/aisha.db", "sqlite"),
        ("sqlite:///:memory:", "sqlite"),
        ("postgresql://u@db/aibots", "postgresql"),
        ("postgres://u@db/aibots", "postgresql"),
        ("postgresql+psycopg://u@db/aibots", "postgresql"),
    ],
)
def test_a_url_names_its_dialect(url: str, name: str) -> None:
    assert dialect_for(url).name == name


def test_capabilities_differ_as_the_databases_do() -> None:
    assert POSTGRESQL.row_locks and POSTGRESQL.wakes_on_commit and POSTGRESQL.combines_writes
    assert not (SQLITE.row_locks or SQLITE.wakes_on_commit or SQLITE.combines_writes)
    # Without a wake-up the outbox must look more often.
    assert SQLITE.outbox_poll_seconds < POSTGRESQL.outbox_poll_seconds


def test_only_an_sqlite_file_has_a_path(tmp_path: Path) -> None:
    assert SQLITE.file_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert SQLITE.file_path("sqlite:///:memory:") is None
    assert POSTGRESQL.file_path("postgresql://u@db/aibots") is None
    assert POSTGRESQL.libpq_conninfo("postgres://u:p@db/aibots") == "postgresql://u:p@db/aibots"


def test_skip_locked_and_wake_only_where_the_database_has_them() -> None:
    query = select(records.c.key)
    pg = postgresql.dialect()  # type: ignore[no-untyped-call]
    on_postgresql = POSTGRESQL.skip_locked(query).compile(dialect=pg)
    on_sqlite = SQLITE.skip_locked(query).compile(dialect=sqlite.dialect())
    assert "SKIP LOCKED" in str(on_postgresql)
    assert "FOR UPDATE" not in str(on_sqlite)
    assert len(POSTGRESQL.wake("outbox")) == 1
    assert SQLITE.wake("outbox") == []


def _run_chain(url: str, keys: list[str]) -> tuple[list[dict[str, int]], list[int], int]:
    """Run CHAIN once per key; answers the counts, statements per run, and effects stored."""

    async def go() -> tuple[list[dict[str, int]], list[int], int]:
        dialect = dialect_for(url)
        engine = dialect.create_engine(url)
        statements: list[str] = []
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def count(*args: Any) -> None:
            statements.append(args[2])

        async def once(session: AsyncSession, key: str) -> dict[str, int]:
            params = {name: {"key": key, "note": name} for name in ("recorded", "effect", "again")}
            return await write_chain(session, CHAIN, params)

        sessions = sessionmaker(engine)
        written, per_run = [], []
        try:
            for key in keys:
                before = len(statements)

                async def work(session: AsyncSession, key: str = key) -> dict[str, int]:
                    return await once(session, key)

                written.append(await run_transaction(sessions, work))
                per_run.append(
                    sum(1 for s in statements[before:] if "records" in s or "effects" in s)
                )
            async with sessions() as session:
                stored = len((await session.execute(select(effects.c.id))).all())
        finally:
            await engine.dispose()
        return written, per_run, stored

    return asyncio.run(go())


def test_a_chain_writes_all_its_steps_or_only_a_first_that_wrote_nothing(
    database_url: str,
) -> None:
    written, per_run, stored = _run_chain(database_url, ["a", "a", "b"])
    assert written == [
        {"recorded": 1, "effect": 1, "again": 1},
        {"recorded": 0, "effect": 0, "again": 0},
        {"recorded": 1, "effect": 1, "again": 1},
    ]
    assert stored == 4
    if dialect_for(database_url).combines_writes:
        assert per_run == [1, 1, 1]  # one round trip whatever the chain's length
    else:
        assert per_run == [3, 1, 3]  # a repeat stops after its first write
