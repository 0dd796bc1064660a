"""One training at a time per person, held by the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from alembic import command
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from telegram import User as TelegramUser

from service.bot import training
from service.bot.photos import Draft, Photo
from service.bot.services import Services
from service.operator import attach
from service.settings import Settings
from service.store import migrate
from service.store.engine import sync_url
from service.store.models import Avatar, User
from service.store.users import ensure_user
from tests.support import schema
from tests.support.db import run


@pytest.fixture
def db(database_url: str) -> str:
    schema.upgrade(database_url)
    return database_url


def bot_training(telegram_id: int, name: str) -> Callable[[AsyncSession], Awaitable[str]]:
    async def work(session: AsyncSession) -> str:
        user = await ensure_user(session, telegram_id)
        avatar = Avatar(
            user_id=user.id,
            name=name,
            training_type="portrait",
            status="training",
            progress=0,
            started_by="bot",
        )
        session.add(avatar)
        await session.flush()
        return avatar.id

    return work


def test_a_second_bot_training_for_one_person_is_refused_by_the_database(db: str) -> None:
    first = run(db, bot_training(9201, "One"))
    with pytest.raises(IntegrityError):
        run(db, bot_training(9201, "Two"))
    # Another person is not affected, and once the first ends a new one may start.
    run(db, bot_training(9202, "Other"))

    async def finish(session: AsyncSession) -> None:
        await session.execute(update(Avatar).where(Avatar.id == first).values(status="completed"))

    run(db, finish)
    run(db, bot_training(9201, "Two"))


def test_trainings_attached_by_an_operator_do_not_take_the_slot(db: str) -> None:
    async def attach_two(session: AsyncSession) -> None:
        # The old system could run two at once for one person; both must be registrable.
        await attach(session, 9203, "Old one", "portrait", "old-request-1")
        await attach(session, 9203, "Old two", "style", "old-request-2")

    run(db, attach_two)
    run(db, bot_training(9203, "New"))

    async def trainings(session: AsyncSession) -> list[tuple[str, str]]:
        rows = await session.execute(
            select(Avatar.started_by, Avatar.status)
            .join(User, User.id == Avatar.user_id)
            .where(User.telegram_id == 9203)
        )
        return sorted((by or "operator", status) for by, status in rows)

    # All three run at once: the bot's own and the two the operator attached.
    assert run(db, trainings) == [
        ("bot", "training"),
        ("operator", "training"),
        ("operator", "training"),
    ]


def test_two_simultaneous_starts_let_exactly_one_through(db: str) -> None:
    draft = Draft("Race", photos=[Photo(f"f{n}", f"u{n}", "photo", 800, 600, 1) for n in range(10)])
    person = TelegramUser(9204, "Racer", is_bot=False)

    async def race() -> list[object]:
        svc = Services.open(Settings(database_url=db))
        try:
            return list(
                await asyncio.gather(
                    *(training.create(svc, person, draft) for _ in range(4)),
                    return_exceptions=True,
                )
            )
        finally:
            await svc.close()

    outcomes = asyncio.run(race())
    created = [o for o in outcomes if isinstance(o, training.AvatarRef)]
    refused = [o for o in outcomes if isinstance(o, training.AlreadyTraining)]
    assert len(created) == 1 and len(refused) == 3, outcomes


def test_migration_0002_goes_down_and_up_again(db: str) -> None:
    config = migrate.alembic_config(db)
    command.downgrade(config, "0001")
    engine = create_sync_engine(sync_url(db))
    try:
        with engine.connect() as connection:
            schema = inspect(connection)
            assert "training_data" not in schema.get_table_names()
            assert "started_by" not in {c["name"] for c in schema.get_columns("avatars")}
        command.upgrade(config, "head")
        with engine.connect() as connection:
            schema = inspect(connection)
            assert "training_data" in schema.get_table_names()
            indexes = {i["name"]: i for i in schema.get_indexes("avatars")}
            assert indexes["uq_avatars_one_training_per_user"]["unique"]
    finally:
        engine.dispose()
