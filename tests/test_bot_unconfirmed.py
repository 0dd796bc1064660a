"""A submission that reached FAL but whose answer was lost: the local FAL queue accepts it and
drops the connection unanswered. The avatar keeps its slot, "submitted, unconfirmed", and FAL's
callback (with its `?avatar_id=` hint) is applied; without one, a retry is offered only after
SUBMISSION_UNCONFIRMED_SECONDS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.bot.unconfirmed import REASON
from service.store.models import FalJob
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.fal_queue import FalQueueServer
from tests.fakes.telegram_api import FakeBotApi
from tests.support.bot import BotStack, Person, avatars_of, begin_avatar
from tests.support.db import run
from tests.support.servers import holds

# What must happen inside the window (the refused retry, or FAL's callback applied) takes ~0.15 s
# from the press, so 3 s leaves a loaded machine plenty; an ignored window would offer the
# retry on the reconciler's next pass (0.5 s), far under the WINDOW - 1 s the test requires.
WINDOW = 3.0
UNCONFIRMED = "не подтвердил"
EXPIRED = "снова среди черновиков"


@pytest.fixture(scope="module")
def stack(
    module_api: FakeBotApi, module_signer: FalSigner, module_jwks: JwksServer
) -> Iterator[BotStack]:
    """The whole system, its reconciler looking twice a second, the window a few seconds."""
    settings = {"RECONCILE_INTERVAL_SECONDS": "0.5", "SUBMISSION_UNCONFIRMED_SECONDS": str(WINDOW)}
    with (
        FalQueueServer(signer=module_signer) as fal,
        BotStack(module_api, fal, module_jwks.jwks_url, **settings) as running,
    ):
        yield running


def jobs_of(database_url: str, avatar_id: str) -> list[str]:
    async def work(session: AsyncSession) -> list[str]:
        rows = await session.execute(select(FalJob.request_id).where(FalJob.avatar_id == avatar_id))
        return list(rows.scalars())

    return run(database_url, work)


def start_with_the_answer_lost(stack: BotStack, person: Person, name: str) -> str:
    """Create an avatar and press Start while FAL accepts it and loses the answer; returns
    the request id FAL gave it (which the bot never heard)."""
    before = len(stack.fal.requests())
    begin_avatar(person, name)
    person.send_photos(10)
    person.press("photos:done")
    person.expect("Проверим")
    stack.fal.lose_answers(1)
    person.press("train:start")
    told = person.expect(UNCONFIRMED)
    assert not person.buttons(told), "no retry while FAL may have it"
    return stack.fal.wait_submitted(before + 1)[-1].request_id


def test_the_callback_of_an_unconfirmed_submission_is_applied(stack: BotStack) -> None:
    person = Person(stack.api, 7601)
    request_id = start_with_the_answer_lost(stack, person, "Unheard")
    (avatar,) = avatars_of(stack.database_url, person.id)
    assert avatar.status == "training", "the slot is kept"
    assert avatar.training_started_at is not None
    assert jobs_of(stack.database_url, avatar.id) == []
    hook = parse_qs(urlsplit(stack.fal.request(request_id).webhook_url or "").query)
    assert hook["avatar_id"] == [avatar.id]

    assert stack.fal.complete(request_id) == 200
    person.expect("готов")
    (avatar,) = avatars_of(stack.database_url, person.id)
    assert avatar.status == "completed" and avatar.lora_url
    assert jobs_of(stack.database_url, avatar.id) == [request_id]
    # The window passes, and nothing is offered again: the training was confirmed by FAL.
    started = avatar.training_started_at
    assert started is not None
    left = WINDOW + 1.5 - (time.time() - started.timestamp())
    holds(lambda: not any(EXPIRED in m["text"] for m in person.messages()), max(left, 0.5))
    assert avatars_of(stack.database_url, person.id)[0].status == "completed"


def test_without_a_callback_a_retry_is_offered_only_after_the_window(stack: BotStack) -> None:
    person = Person(stack.api, 7602)
    first = start_with_the_answer_lost(stack, person, "Silent")
    (avatar,) = avatars_of(stack.database_url, person.id)
    pressed, submitted = time.monotonic(), len(stack.fal.requests())
    # Within the window the avatar is no draft: a retry (an old button) is refused.
    person.press(f"avatar:retry:{avatar.id}")
    person.expect("уже не черновик")
    assert len(stack.fal.requests()) == submitted, "no second training at FAL"

    offered = person.expect(EXPIRED, timeout=WINDOW + 10)
    assert time.monotonic() - pressed >= WINDOW - 1.0, "offered before the window ended"
    assert person.buttons(offered) == [f"avatar:retry:{avatar.id}", f"avatar:discard:{avatar.id}"]
    (avatar,) = avatars_of(stack.database_url, person.id)
    assert avatar.status == "draft" and avatar.error_message == REASON
    assert avatar.training_started_at is None
    # Offered once.
    holds(lambda: sum(EXPIRED in m["text"] for m in person.messages()) == 1, 1.5)

    before = len(stack.fal.requests())
    person.press(f"avatar:retry:{avatar.id}")
    person.expect("началось")
    second = stack.fal.wait_submitted(before + 1)[-1].request_id
    assert jobs_of(stack.database_url, avatar.id) == [second] != [first]
    assert stack.fal.complete(second) == 200
    person.expect("готов")
