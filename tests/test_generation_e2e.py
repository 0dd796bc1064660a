"""Photos end to end: the running bot, the running webhook service (gunicorn, its dispatcher)
and the local FAL queue's signed callbacks, down to what the local Bot API server received."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.store.models import Avatar
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.fal_queue import FalRequest
from tests.fakes.telegram_api import FakeBotApi, Fault
from tests.fakes.telegram_media import Delivery
from tests.support.bot import BotStack, Person, running_bot, start_training
from tests.support.bot_generations import completed_avatar, event_outcomes, generations_of
from tests.support.db import notifications
from tests.support.servers import holds, wait_until

# The outbox's per-chat interval here: an album of four and its follow-up hold the chat for
# five intervals, and a wrong second album would wait behind them.
CHAT_INTERVAL = 0.1
# A wrong second album would leave within the outbox's poll on SQLite (0.2 s) plus those five
# intervals (0.5 s); this is ample for it to show.
SETTLE = 3.0
# Generations without a callback this old are asked about at FAL; the reconciler looks twice
# a second.
EXPECTED_SECONDS = 3
# Not the default: the webhook service's outcomes must tell what is left by the same number.
PER_DAY = 12


@pytest.fixture(scope="module")
def stack(
    module_api: FakeBotApi, module_signer: FalSigner, module_jwks: JwksServer
) -> Iterator[BotStack]:
    settings = {
        "RECONCILE_INTERVAL_SECONDS": "0.5",
        "GENERATION_EXPECTED_SECONDS": str(EXPECTED_SECONDS),
        "GENERATIONS_PER_DAY": str(PER_DAY),
        "TELEGRAM_CHAT_INTERVAL": str(CHAT_INTERVAL),
    }
    with running_bot(module_api, module_signer, module_jwks.jwks_url, **settings) as running:
        yield running


def deliveries(stack: BotStack, person: Person, method: str | None = None) -> list[Delivery]:
    return [d for d in stack.api.media.deliveries(method) if d.chat_id == person.id]


def ask(
    stack: BotStack, person: Person, avatar_id: str, count: int, style: str = "studio"
) -> FalRequest:
    before = len(stack.fal.requests())
    person.press(f"avatar:generate:{avatar_id}")
    person.expect("Выберите стиль")
    person.press(f"gen:style:{style}")
    person.expect("Какой кадр?")
    person.press("gen:frame:portrait")
    person.expect("Сколько фото?")
    person.press(f"gen:count:{count}")
    person.expect("Уже делаю")
    return stack.fal.wait_submitted(before + 1)[-1]


def ready_avatar(stack: BotStack, person: Person, name: str = "Anna") -> Avatar:
    avatar = completed_avatar(stack.database_url, person.id, name)
    assert avatar.lora_url and avatar.trigger_word
    stack.fal.add_lora(avatar.lora_url, avatar.trigger_word)
    return avatar


def test_a_trained_avatar_makes_four_photos_and_exactly_one_album_arrives(
    stack: BotStack,
) -> None:
    person = Person(stack.api, 9101)
    training = start_training(stack, person, "Anna")
    assert stack.fal.complete(training.request_id) == 200
    ready = person.expect("готов")
    (generate,) = [b for b in person.buttons(ready) if b.startswith("avatar:generate:")]
    request = ask(stack, person, generate.rsplit(":", 1)[1], 4)
    assert stack.fal.complete(request.request_id) == 200
    (album,) = wait_for_deliveries(stack, person, 1)
    assert album.method == "sendMediaGroup" and len(album.messages) == 4
    assert album.sources == ["url"] * 4
    assert album.caption == "Студийный портрет"
    assert all(d.startswith(b"\xff\xd8") for d in album.data)
    follow_up = person.expect("Готово: 4 фото")
    assert f"Осталось фото на сегодня: {PER_DAY - 4}." in follow_up["text"]
    (generation,) = generations_of(stack.database_url, person.id)
    assert person.buttons(follow_up) == [
        f"gen:again:{generation.id}",
        f"gen:new:{generation.avatar_id}",
        "gen:mine",
    ]
    # FAL repeats the callback three times: still one album.
    for _ in range(3):
        assert stack.fal.deliver(request.request_id) == 200
    holds(lambda: len(deliveries(stack, person)) == 1, SETTLE, what="one album")
    (done,) = generations_of(stack.database_url, person.id)
    assert done.status == "completed" and done.seed

    # My photos: the finished one is sent again by Telegram's file ids, not FAL's URLs.
    person.press("gen:mine")
    listing = person.expect("Ваши фото")
    assert f"gen:send:{generation.id}" in person.buttons(listing)
    person.press(f"gen:send:{generation.id}")
    _, again = wait_for_deliveries(stack, person, 2)
    assert again.method == "sendMediaGroup" and again.sources == ["file_id"] * 4
    assert again.file_ids() == album.file_ids() and again.caption == album.caption


def wait_for_deliveries(
    stack: BotStack, person: Person, n: int, timeout: float = 15
) -> list[Delivery]:
    wait_until(lambda: len(deliveries(stack, person)) >= n, timeout, what=f"{n} deliveries")
    return deliveries(stack, person)


def test_a_fal_error_gives_one_failure_message_and_nothing_counted(stack: BotStack) -> None:
    person = Person(stack.api, 9201)
    avatar = ready_avatar(stack, person)
    request = ask(stack, person, avatar.id, 2)
    assert stack.fal.fail(request.request_id, message="the LoRA could not be loaded") == 200
    failed = person.expect("Не удалось создать фото")
    (generation,) = generations_of(stack.database_url, person.id)
    assert person.buttons(failed)[0] == f"gen:again:{generation.id}"
    assert stack.fal.deliver(request.request_id) == 200

    def failures() -> int:
        return sum("Не удалось создать фото" in m["text"] for m in person.messages())

    holds(lambda: failures() == 1, SETTLE, what="one failure message")
    assert deliveries(stack, person) == []
    assert generations_of(stack.database_url, person.id)[0].status == "failed"
    # It did not count: the day's 20 are all there for the next one.
    person.press(f"gen:again:{generation.id}")
    assert f"Осталось на сегодня: {PER_DAY - 2} из {PER_DAY}" in person.expect("Уже делаю")["text"]


def test_photos_flagged_by_the_safety_checker_are_held_back(stack: BotStack) -> None:
    person = Person(stack.api, 9301)
    avatar = ready_avatar(stack, person)
    request = ask(stack, person, avatar.id, 3, style="outdoors")
    assert stack.fal.complete(request.request_id, nsfw=[True, False, True]) == 200
    (photo,) = wait_for_deliveries(stack, person, 1)
    assert photo.method == "sendPhoto"
    assert photo.caption is not None and "На природе" in photo.caption
    assert "Скрыто фильтром безопасности: 2" in photo.caption
    holds(lambda: len(deliveries(stack, person)) == 1, SETTLE, what="one photo")
    # Sent again from My photos: the one photo, by its file id, with its caption.
    (generation,) = generations_of(stack.database_url, person.id)
    person.send("/photos")
    person.expect("Ваши фото")
    person.press(f"gen:send:{generation.id}")
    _, again = wait_for_deliveries(stack, person, 2)
    assert again.method == "sendPhoto" and again.sources == ["file_id"]
    assert again.file_ids() == photo.file_ids() and again.caption == photo.caption


def test_telegram_refusing_a_big_photo_by_url_gets_it_uploaded(stack: BotStack) -> None:
    person = Person(stack.api, 9401)
    avatar = ready_avatar(stack, person)
    request = ask(stack, person, avatar.id, 2, style="city")
    big = 6 * 1024 * 1024
    assert stack.fal.complete(request.request_id, sizes=[big, 0]) == 200
    wait_until(
        lambda: any(d.method == "sendMediaGroup" for d in deliveries(stack, person)),
        20,
        what="the album",
    )
    (album,) = deliveries(stack, person, "sendMediaGroup")
    assert "upload" in album.sources and len(album.messages) == 2
    assert len(album.data[album.sources.index("upload")]) >= big
    holds(lambda: len(deliveries(stack, person, "sendMediaGroup")) == 1, SETTLE, what="one album")


def test_the_webhook_service_stopped_before_the_send_sends_one_album_after_restart(
    stack: BotStack,
) -> None:
    person = Person(stack.api, 9501)
    avatar = ready_avatar(stack, person)
    request = ask(stack, person, avatar.id, 2, style="art")
    # Telegram is down, so the outcome is committed and waits in the outbox.
    stack.api.plan("sendMediaGroup", [Fault.server_error(502)] * 50)
    assert stack.fal.complete(request.request_id) == 200

    def refused_and_recorded() -> bool:
        # Killed before the dispatcher wrote the refusal down, the row would stay `sending`
        # under its lease (120 s) instead of waiting for its next attempt.
        waiting = notifications(stack.database_url, "pending")
        return any(n["chat_id"] == person.id and n["attempts"] >= 1 for n in waiting)

    wait_until(refused_and_recorded, 10, what="a refused send, recorded")
    stack.server.kill()
    stack.api.plan("sendMediaGroup", [])
    stack.server.start()
    stack.server.wait_ready()
    (album,) = wait_for_deliveries(stack, person, 1)
    assert album.method == "sendMediaGroup" and len(album.messages) == 2
    holds(lambda: len(deliveries(stack, person)) == 1, SETTLE, what="one album")


@pytest.mark.parametrize("how", ["lost", "payload_error"])
def test_a_callback_without_the_photos_is_made_good_by_the_reconciler(
    stack: BotStack, how: str
) -> None:
    person = Person(stack.api, 9601 if how == "lost" else 9602)
    avatar = ready_avatar(stack, person)
    request = ask(stack, person, avatar.id, 2, style="business")
    if how == "lost":
        stack.fal.complete(request.request_id, deliver=False)
    else:
        # FAL finished but could not send the output: the bot fetches it at once.
        assert stack.fal.payload_error(request.request_id) == 200
    (album,) = wait_for_deliveries(stack, person, 1, timeout=EXPECTED_SECONDS + 15)
    assert album.method == "sendMediaGroup" and album.caption == "Деловой стиль"
    # FAL's callback after all, late: recorded, changes nothing, sends nothing.
    if how == "lost":
        stack.fal.complete(request.request_id)
    holds(lambda: len(deliveries(stack, person)) == 1, SETTLE, what="one album")
    (done,) = generations_of(stack.database_url, person.id)
    assert done.status == "completed"
    outcomes = event_outcomes(stack.database_url, request.request_id)
    assert ("reconciler", "received") in outcomes
    assert [o for o in outcomes if o[0] == "webhook"] == (
        [("webhook", "ignored")] if how == "lost" else [("webhook", "received")]
    )


def test_a_prompt_of_ones_own_comes_back_as_the_caption_literally(stack: BotStack) -> None:
    person = Person(stack.api, 9701, "en")
    avatar = completed_avatar(stack.database_url, person.id, "Eve", "en")
    assert avatar.lora_url and avatar.trigger_word
    stack.fal.add_lora(avatar.lora_url, avatar.trigger_word)
    before = len(stack.fal.requests())
    person.send("/generate")
    person.expect("Choose a style")
    person.press("gen:own")
    person.expect("Describe the photo")
    prompt = "as <b>a knight</b> & dragon"
    person.send(prompt)
    person.expect("Which frame?")
    person.press("gen:frame:landscape")
    person.expect("How many photos?")
    person.press("gen:count:2")
    person.expect("On its way")
    request = stack.fal.wait_submitted(before + 1)[-1]
    assert request.arguments["prompt"] == f"photo of {avatar.trigger_word}, {prompt}"
    assert stack.fal.complete(request.request_id) == 200
    (album,) = wait_for_deliveries(stack, person, 1)
    # Escaped when rendered, so the person reads exactly what they typed.
    assert album.caption == prompt
    person.expect("Done: 2 photos")
    person.send("/photos")
    listing = person.expect("Your photos")
    assert prompt in listing["text"] and "2 photos" in listing["text"] and "done" in listing["text"]
    (generation,) = generations_of(stack.database_url, person.id)
    person.press(f"gen:send:{generation.id}")
    _, again = wait_for_deliveries(stack, person, 2)
    assert again.sources == ["file_id"] * 2 and again.caption == prompt
