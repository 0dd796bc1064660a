"""Making photos through the running bot: the conversation, the limits, FAL's submission.

`python -m service bot` and the webhook service under gunicorn, driven through the local Bot
API server; generations go to the local FAL queue's `fal-ai/flux-lora`, which checks the LoRA
and the trigger word as the real one would need them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from service.store.models import Avatar
from tests.fakes.fal_generation import FLUX_LORA
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.fal_queue import FalRequest
from tests.fakes.telegram_api import FakeBotApi
from tests.support.bot import BotStack, Person, running_bot
from tests.support.bot_generations import (
    completed_avatar,
    earlier_generation,
    generations_of,
    job_of,
)
from tests.support.servers import holds

PER_DAY = 10


@pytest.fixture(scope="module")
def stack(
    module_api: FakeBotApi, module_signer: FalSigner, module_jwks: JwksServer
) -> Iterator[BotStack]:
    settings = {"GENERATIONS_PER_DAY": str(PER_DAY)}
    with running_bot(module_api, module_signer, module_jwks.jwks_url, **settings) as running:
        yield running


def avatar_for(stack: BotStack, person: Person, name: str = "Anna") -> Avatar:
    avatar = completed_avatar(stack.database_url, person.id, name, person.user["language_code"])
    assert avatar.lora_url and avatar.trigger_word
    stack.fal.add_lora(avatar.lora_url, avatar.trigger_word)
    return avatar


def choose(person: Person, avatar: Avatar, style: str, frame: str, count: int) -> None:
    """From the avatar's Generate button to the count, in Russian."""
    person.press(f"avatar:generate:{avatar.id}")
    person.expect("Выберите стиль")
    person.press(f"gen:style:{style}")
    person.expect("Какой кадр?")
    person.press(f"gen:frame:{frame}")
    person.expect("Сколько фото?")
    person.press(f"gen:count:{count}")


def submitted(stack: BotStack, before: int) -> FalRequest:
    request = stack.fal.wait_submitted(before + 1)[-1]
    assert request.app_id == FLUX_LORA
    return request


def test_a_style_from_the_generate_button_is_submitted_with_the_avatars_lora(
    stack: BotStack,
) -> None:
    person = Person(stack.api, 8101)
    avatar = avatar_for(stack, person)
    before = len(stack.fal.requests())
    person.press(f"avatar:generate:{avatar.id}")
    styles = person.expect("Выберите стиль")
    assert f"Осталось на сегодня: {PER_DAY} из {PER_DAY}" in styles["text"]
    buttons = person.buttons(styles)
    assert "gen:style:studio" in buttons and buttons[-1] == "gen:own"
    person.press("gen:style:studio")
    frames = person.expect("Какой кадр?")
    assert "Студийный портрет" in frames["text"]
    assert person.buttons(frames) == [
        "gen:frame:portrait",
        "gen:frame:square",
        "gen:frame:landscape",
    ]
    person.press("gen:frame:portrait")
    counts = person.expect("Сколько фото?")
    assert person.buttons(counts) == ["gen:count:1", "gen:count:2", "gen:count:3", "gen:count:4"]
    person.press("gen:count:4")
    queued = person.expect("Уже делаю")
    assert "4 фото" in queued["text"] and "Anna" in queued["text"]
    assert f"Осталось на сегодня: {PER_DAY - 4} из {PER_DAY}" in queued["text"]

    request = submitted(stack, before)
    body = request.arguments
    assert body["loras"] == [{"path": avatar.lora_url, "scale": 1.0}]
    assert avatar.trigger_word in body["prompt"] and "studio portrait" in body["prompt"]
    assert body["num_images"] == 4 and body["image_size"] == "portrait_4_3"
    assert body["output_format"] == "jpeg" and body["enable_safety_checker"] is True
    (generation,) = generations_of(stack.database_url, person.id)
    assert parse_qs(urlsplit(request.webhook_url or "").query) == {"generation_id": [generation.id]}
    assert generation.status == "queued" and generation.style == "studio"
    assert generation.label == "Студийный портрет" and generation.prompt == body["prompt"]
    job = job_of(stack.database_url, generation.id)
    assert job is not None and job.request_id == request.request_id
    assert job.kind == "generation" and job.avatar_id == avatar.id and job.app == FLUX_LORA
    assert job.status_url and job.response_url and job.cancel_url


def test_an_own_prompt_in_english_with_bad_prompts_refused_first(stack: BotStack) -> None:
    person = Person(stack.api, 8201, "en")
    avatar = avatar_for(stack, person, "Bob")
    before = len(stack.fal.requests())
    person.send("/generate")  # one ready avatar: no question which
    person.expect("Choose a style")
    person.press("gen:own")
    person.expect("Describe the photo")
    person.send("on a beach\x07 at dawn")
    person.expect("invisible or control characters")
    person.send("x" * 501)
    assert "501 characters" in person.expect("at most 500")["text"]
    person.send("on a bench in   <Paris> & rain")
    frames = person.expect("Which frame?")
    # The person's own words are shown literally.
    assert "on a bench in <Paris> & rain" in frames["text"]
    person.press("gen:frame:square")
    person.expect("How many photos?")
    person.press("gen:count:1")
    assert "1 photo with" in person.expect("On its way")["text"]
    request = submitted(stack, before)
    assert (
        request.arguments["prompt"]
        == f"photo of {avatar.trigger_word}, on a bench in <Paris> & rain"
    )
    assert request.arguments["image_size"] == "square_hd" and request.arguments["num_images"] == 1
    (generation,) = generations_of(stack.database_url, person.id)
    assert generation.style is None and generation.label == "on a bench in <Paris> & rain"


def test_generate_asks_which_avatar_when_there_are_several(stack: BotStack) -> None:
    person = Person(stack.api, 8301)
    person.send("/help")
    assert f"от 1 до 4 фото ({PER_DAY} в день)" in person.expect("Как это работает")["text"]
    person.send("/generate")
    person.expect("нет готового аватара")
    first, second = avatar_for(stack, person, "First"), avatar_for(stack, person, "Second")
    person.send("/generate")
    asked = person.expect("Каким аватаром")
    assert sorted(person.buttons(asked)) == sorted(
        [f"avatar:generate:{first.id}", f"avatar:generate:{second.id}"]
    )
    person.press(f"avatar:generate:{second.id}")
    assert "Second" in person.expect("Выберите стиль")["text"]
    # My avatars has the same way in, one button per ready avatar.
    person.send("/avatars")
    listing = person.expect("Ваши аватары")
    assert {f"avatar:generate:{first.id}", f"avatar:generate:{second.id}"} <= set(
        person.buttons(listing)
    )
    person.send("/cancel")
    person.expect("Генерация отменена")
    person.press("gen:style:studio")
    person.expect("Этот выбор устарел")


def test_the_days_photos_are_counted_in_the_database_failed_ones_not(stack: BotStack) -> None:
    person = Person(stack.api, 8401)
    avatar = avatar_for(stack, person)
    earlier_generation(stack.database_url, avatar, 4, "completed", hours_ago=20)
    earlier_generation(stack.database_url, avatar, 4, "completed", hours_ago=2)
    earlier_generation(stack.database_url, avatar, 4, "failed", hours_ago=1)
    earlier_generation(stack.database_url, avatar, 4, "completed", hours_ago=25)
    before = len(stack.fal.requests())
    choose(person, avatar, "business", "landscape", 3)
    refused = person.expect("осталось мало фото")["text"]
    assert "вы просите 3 фото, осталось 2 из 10" in refused
    assert "Выберите 2 или меньше" in refused
    # The one from 20 hours ago frees its 4 photos in 4 hours.
    assert re.search(r"Хватит снова через (4 ч\.|3 ч 59 мин)", refused), refused
    person.press("gen:count:2")
    person.expect("Уже делаю")
    submitted(stack, before)
    assert [g.status for g in generations_of(stack.database_url, person.id)][-1] == "queued"


def test_no_more_than_the_limit_at_once(stack: BotStack) -> None:
    person = Person(stack.api, 8501)
    avatar = avatar_for(stack, person)
    earlier_generation(stack.database_url, avatar, 1, "queued", hours_ago=0.1)
    earlier_generation(stack.database_url, avatar, 1, "running", hours_ago=0.1)
    before = len(stack.fal.requests())
    choose(person, avatar, "city", "square", 1)
    person.expect("одновременно можно не больше 2")
    holds(lambda: len(stack.fal.requests()) == before, 1.0, what="no submission")
    assert len(generations_of(stack.database_url, person.id)) == 2


def test_fal_refusing_the_submission_fails_it_uncounted_and_try_again_works(
    stack: BotStack,
) -> None:
    person = Person(stack.api, 8601)
    avatar = avatar_for(stack, person)
    before = len(stack.fal.requests())
    stack.fal.plan("submit", (503, {"detail": "Service Unavailable"}))
    choose(person, avatar, "cinematic", "landscape", 2)
    refused = person.expect("Сервис изображений сейчас недоступен")
    assert "не засчитано" in refused["text"]
    (failed,) = generations_of(stack.database_url, person.id)
    assert failed.status == "failed" and "503" in (failed.error_message or "")
    assert person.buttons(refused)[0] == f"gen:again:{failed.id}"
    detail = [{"loc": ["body", "prompt"], "msg": "prompt is not allowed", "type": "x"}]
    stack.fal.plan("submit", (422, {"detail": detail}))
    person.press(f"gen:again:{failed.id}")
    assert "prompt: prompt is not allowed" in person.expect("отклонил запрос")["text"]
    person.press(f"gen:again:{failed.id}")
    # The failed ones gave their photos back.
    assert f"осталось на сегодня: {PER_DAY - 2}" in person.expect("Уже делаю")["text"].lower()
    request = submitted(stack, before)
    assert (
        request.arguments["num_images"] == 2 and request.arguments["image_size"] == "landscape_4_3"
    )
    statuses = [g.status for g in generations_of(stack.database_url, person.id)]
    assert statuses == ["failed", "failed", "queued"]
    person.press("gen:mine")
    listing = person.expect("Ваши фото")["text"]
    lines = listing.splitlines()
    assert lines[1].startswith("1. ⏳ Кино — 2 фото, Пейзаж (горизонтально), в очереди")
    assert "❌" in lines[2] and "ошибка" in lines[2] and "prompt is not allowed" in lines[3]
    # Nothing finished yet: nothing to send again.
    assert person.buttons(person.messages()[-1]) == []


def test_nobody_uses_another_persons_avatar_or_photos(stack: BotStack) -> None:
    owner, stranger = Person(stack.api, 8701), Person(stack.api, 8702)
    avatar = avatar_for(stack, owner)
    made = earlier_generation(stack.database_url, avatar, 1, "completed", hours_ago=1)
    stranger.press(f"avatar:generate:{avatar.id}")
    stranger.expect("не найден")
    stranger.press(f"gen:new:{avatar.id}")
    stranger.expect("не найден")
    stranger.press(f"gen:again:{made}")
    stranger.expect("фото не найдены")
    stranger.press(f"gen:send:{made}")
    stranger.expect("фото не найдены")
    assert len(generations_of(stack.database_url, owner.id)) == 1
    assert generations_of(stack.database_url, stranger.id) == []


def test_one_conversation_at_a_time(stack: BotStack) -> None:
    person = Person(stack.api, 8801)
    avatar = avatar_for(stack, person)
    # Creating an avatar drops a half-chosen generation...
    person.press(f"avatar:generate:{avatar.id}")
    person.expect("Выберите стиль")
    person.press("gen:own")
    person.expect("Опишите фото")
    person.send("/create")
    person.expect("Как назовём")
    person.send("Второй")  # a name, not a prompt
    person.expect("Какой тип")
    person.press("gen:style:studio")
    person.expect("Этот выбор устарел")
    # ...and a generation begun while creating one drops that draft, saying so.
    person.press(f"gen:new:{avatar.id}")
    person.expect("Создание аватара отменено")
    person.expect("Выберите стиль")
    person.press("gen:own")
    person.expect("Опишите фото")
    person.send("в шляпе")
    person.expect("Какой кадр?")
    # /start goes back to the menu and forgets what was chosen.
    person.send("/start")
    person.expect("Здравствуйте")
    person.press("gen:frame:square")
    person.expect("Этот выбор устарел")
    assert generations_of(stack.database_url, person.id) == []
