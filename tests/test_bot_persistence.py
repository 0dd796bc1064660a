"""Conversations kept in the database: a killed bot continues them, an abandoned one ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.persistence import decode, encode
from service.bot.photos import Draft, Photo
from service.store.models import BotState
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.fal_queue import FalQueueServer
from tests.fakes.telegram_api import FakeBotApi
from tests.support.bot import FAL_KEY, BotStack, Person, avatars_of, begin_avatar
from tests.support.bot_generations import completed_avatar
from tests.support.db import run
from tests.support.images import png
from tests.support.servers import holds, wait_until


@pytest.fixture(scope="module")
def fal(module_signer: FalSigner) -> Iterator[FalQueueServer]:
    with FalQueueServer(FAL_KEY, module_signer) as server:
        yield server


def state_rows(database_url: str) -> dict[tuple[str, str], Any]:
    async def work(session: AsyncSession) -> dict[tuple[str, str], Any]:
        rows = await session.execute(select(BotState.scope, BotState.key, BotState.data))
        return {(scope, key): data for scope, key, data in rows.all()}

    return run(database_url, work)


def restart(stack: BotStack) -> None:
    """SIGKILL the bot (no shutdown, no last flush) and start it again, polling."""
    stack.bot.kill()
    polled = len(stack.api.calls_to("getUpdates"))
    stack.bot.start()
    wait_until(
        lambda: len(stack.api.calls_to("getUpdates")) > polled, 30, what="the new bot's polling"
    )


def test_a_draft_and_its_step_round_trip_through_json() -> None:
    draft = Draft("Ann", "style", [Photo("f1", "u1", "document", 640, 512, 1234)])
    stored = json.loads(json.dumps(encode({"draft": draft, "count": 3, "odd": object()})))
    # What JSON cannot hold is left out (and logged), not written half-way.
    assert set(stored) == {"draft", "count"}
    assert decode(stored) == {"draft": draft, "count": 3}
    assert decode({"draft": {"type": "draft", "value": {"name": "x"}}}) == {}


def test_a_person_who_sent_seven_photos_continues_at_the_eighth_after_the_bot_is_killed(
    module_api: FakeBotApi, fal: FalQueueServer, module_jwks: JwksServer
) -> None:
    with BotStack(module_api, fal, module_jwks.jwks_url) as stack:
        person = Person(stack.api, 7901)
        begin_avatar(person, "Survivor")
        person.send_photos(7)
        # Written before the seventh acknowledgement was sent, not on a timer.
        users = {k: v for k, v in state_rows(stack.database_url).items() if k[0] == "user"}
        assert len(users[("user", str(person.id))]["draft"]["value"]["photos"]) == 7

        restart(stack)

        person.send_photos(3, start=7)  # waits for "Фото 8 ", then 9 and 10
        person.press("photos:done")
        summary = person.expect("Проверим")
        assert "Фотографий: 10" in summary["text"]
        assert "Survivor" in summary["text"]


def test_photos_being_chosen_survive_a_killed_bot(
    module_api: FakeBotApi, fal: FalQueueServer, module_jwks: JwksServer
) -> None:
    with BotStack(module_api, fal, module_jwks.jwks_url) as stack:
        person = Person(stack.api, 7903)
        avatar = completed_avatar(stack.database_url, person.id, "Ready")
        person.press(f"gen:new:{avatar.id}")
        person.expect("Выберите стиль")
        person.press("gen:style:studio")
        person.expect("Какой кадр")

        restart(stack)

        # The style chosen before the restart is still there: the next step goes on from it.
        person.press("gen:frame:square")
        asked = person.expect("Сколько фото")
        assert "Студийный портрет" in asked["text"]


def test_an_abandoned_conversation_ends_with_a_message_even_across_a_restart(
    module_api: FakeBotApi, fal: FalQueueServer, module_jwks: JwksServer
) -> None:
    with BotStack(module_api, fal, module_jwks.jwks_url, CONVERSATION_TIMEOUT_SECONDS="3") as stack:
        person = Person(stack.api, 7902)
        begin_avatar(person, "Left alone")
        person.send_photos(2)
        # The process that held the conversation is gone before it times out: the new one
        # ends it from the database.
        restart(stack)
        person.expect("не отвечали 1 мин", timeout=20)

        def conversations() -> list[tuple[str, str]]:
            return [k for k in state_rows(stack.database_url) if k[0] == "conversation"]

        wait_until(lambda: not conversations(), 10, what="the conversation's row removed")
        draft_left = state_rows(stack.database_url).get(("user", str(person.id)), {})
        assert "draft" not in draft_left

        # The next photo is not taken into the old draft: the person is at the menu.
        person.photo(png(640, 512, seed=3), 640, 512)
        person.expect("Здравствуйте")
        # And the conversation is over: a photo now is one sent outside it.
        person.photo(png(640, 512, seed=4), 640, 512)
        person.expect("Чтобы создать аватар")
        assert avatars_of(stack.database_url, person.id) == []

        # A new conversation starts cleanly and keeps its photos.
        begin_avatar(person, "Second try")
        person.send_photos(1)


def test_photos_left_being_chosen_are_set_aside_with_a_message(
    module_api: FakeBotApi, fal: FalQueueServer, module_jwks: JwksServer
) -> None:
    with BotStack(module_api, fal, module_jwks.jwks_url, CONVERSATION_TIMEOUT_SECONDS="3") as stack:
        person = Person(stack.api, 7904)
        avatar = completed_avatar(stack.database_url, person.id, "Ready")
        person.press(f"gen:new:{avatar.id}")
        person.expect("Выберите стиль")
        person.press("gen:style:studio")
        person.expect("Какой кадр")
        person.expect("отложил выбор фото", timeout=20)
        kept = state_rows(stack.database_url).get(("user", str(person.id)), {})
        assert "generation" not in kept
        # The frame button of before no longer leads anywhere.
        person.press("gen:frame:square")
        holds(lambda: not any("Сколько фото" in m["text"] for m in person.messages()), 2.0,
              what="no count asked after the choices were set aside")  # fmt: skip
