"""The bot end to end: `python -m service bot` and the webhook service under gunicorn, driven
through the local Bot API server, training on the local FAL queue with signed callbacks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import Avatar, FalJob, TrainingData, User, WebhookEvent
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.fal_queue import PORTRAIT, STYLE, FalQueueServer
from tests.fakes.telegram_api import FakeBotApi, Fault
from tests.support.bot import FAL_KEY, BotStack, Person, avatars_of, begin_avatar, start_training
from tests.support.db import run
from tests.support.http import call
from tests.support.images import jpeg_header, png
from tests.support.servers import holds, wait_until

# Trainings older than this are asked about at FAL; the reconciler looks twice a second.
EXPECTED_SECONDS = 5


@pytest.fixture(scope="module")
def fal(module_signer: FalSigner) -> Iterator[FalQueueServer]:
    with FalQueueServer(FAL_KEY, module_signer) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    module_api: FakeBotApi, fal: FalQueueServer, module_jwks: JwksServer
) -> Iterator[BotStack]:
    with BotStack(
        module_api,
        fal,
        module_jwks.jwks_url,
        RECONCILE_INTERVAL_SECONDS="0.5",
        TRAINING_EXPECTED_SECONDS=str(EXPECTED_SECONDS),
    ) as running:
        yield running


def training_rows(database_url: str, avatar_id: str) -> int:
    async def work(session: AsyncSession) -> int:
        rows = await session.execute(
            select(TrainingData.token).where(TrainingData.avatar_id == avatar_id)
        )
        return len(rows.all())

    return run(database_url, work)


def events_of(database_url: str, request_id: str) -> list[WebhookEvent]:
    async def work(session: AsyncSession) -> list[WebhookEvent]:
        rows = await session.execute(
            select(WebhookEvent).where(WebhookEvent.request_id == request_id)
        )
        return list(rows.scalars())

    return run(database_url, work)


def test_start_greets_records_the_user_and_shows_the_menu(stack: BotStack) -> None:
    russian, english = Person(stack.api, 7001), Person(stack.api, 7002, "en-GB")
    russian.send("/start")
    english.send("/start")
    greeting = russian.expect("Здравствуйте")
    assert russian.buttons(greeting) == ["avatar:create", "avatars:list", "help"]
    assert greeting["sent"]["parse_mode"] == "HTML"
    assert "Hello" in english.expect("Hello")["text"]

    async def users(session: AsyncSession) -> dict[int, str | None]:
        rows = await session.execute(select(User.telegram_id, User.language_code))
        return {row[0]: row[1] for row in rows}

    recorded = run(stack.database_url, users)
    assert recorded[7001] == "ru" and recorded[7002] == "en-GB"
    english.press("help")
    assert "How it works" in english.expect("How it works")["text"]


def test_twelve_photos_train_and_the_person_hears_once_that_it_is_ready(
    stack: BotStack,
) -> None:
    person = Person(stack.api, 7101)
    name = "<b>Ann_2*[x]</b> & Co"
    person.send("/start")
    person.expect("Здравствуйте")
    person.press("avatar:create")
    person.expect("Как назовём")
    person.send(name)
    asked = person.expect("Какой тип")
    # Rendered literally: what the person reads is the name itself, markup and all.
    assert name in asked["text"]
    person.press("type:portrait")
    person.expect("от 10 до 20")
    person.send_photos(12)
    person.press("photos:done")
    summary = person.expect("Проверим")
    assert "Фотографий: 12" in summary["text"]
    person.press("train:start")
    started = person.expect("началось")
    assert name in started["text"]

    (request,) = [r for r in stack.fal.requests() if r.arguments.get("trigger_phrase")][-1:]
    assert request.app_id == PORTRAIT
    images_url = request.arguments["images_data_url"]
    assert images_url.startswith(f"{stack.server.url}/api/v1/training-data/")
    webhook = urlsplit(request.webhook_url or "")
    (avatar,) = avatars_of(stack.database_url, person.id)
    assert parse_qs(webhook.query) == {"avatar_id": [avatar.id], "training_type": ["portrait"]}
    job = run(stack.database_url, lambda s: s.get_one(FalJob, request.request_id))
    assert avatar.status == "training" and job.avatar_id == avatar.id and job.kind == "training"
    assert job.app == PORTRAIT
    assert job.status_url and job.response_url and job.cancel_url
    # FAL fetched a zip holding exactly the twelve photos.
    downloaded = stack.fal.wait_downloaded(request.request_id)
    assert downloaded.archive is not None
    assert sorted(downloaded.archive.values()) == sorted(person.photos)

    assert stack.fal.complete(request.request_id) == 200
    ready = person.expect("готов")
    assert name in ready["text"]
    assert f"avatar:generate:{avatar.id}" in person.buttons(ready)
    # FAL repeats the callback, and a copy arrives late: still one message.
    assert stack.fal.deliver(request.request_id) == 200
    late = stack.fal.deliver_later(request.request_id, 0.5)
    late.join(timeout=10)
    assert not late.is_alive(), "the late copy was not delivered"
    # Both copies were answered, so committed; a wrong second message would leave within the
    # outbox's poll on SQLite (0.2 s) plus one message a second to one chat (1 s).
    holds(lambda: len(person.ready_messages()) == 1, 2.0, what="one 'ready' message")
    (done,) = avatars_of(stack.database_url, person.id)
    assert done.status == "completed" and done.lora_url
    # The zip was deleted with the training's end, and its URL no longer answers.
    assert training_rows(stack.database_url, done.id) == 0
    assert call("GET", images_url).status == 404
    signed = [e for e in events_of(stack.database_url, request.request_id) if e.signed]
    assert [e.outcome for e in signed][:1] == ["received"]


def test_style_avatar_in_english_is_submitted_to_the_style_trainer(stack: BotStack) -> None:
    person = Person(stack.api, 7151, "en")
    begin_avatar(person, "Watercolour", "style")
    person.send_photos(10)
    person.press("photos:done")
    person.expect("Let's check")
    person.press("train:start")
    person.expect("has started")
    request = stack.fal.wait_submitted(len(stack.fal.requests()))[-1]
    assert request.app_id == STYLE
    assert request.arguments["is_style"] is True
    assert request.arguments["trigger_word"].startswith("aibots")
    stack.fal.fail(request.request_id)
    failed = person.expect("failed")
    assert "create the avatar again" in failed["text"]
    (avatar,) = avatars_of(stack.database_url, person.id)
    assert avatar.status == "failed" and avatar.error_message


def test_cancel_mid_way_keeps_nothing(stack: BotStack) -> None:
    person = Person(stack.api, 7201)
    begin_avatar(person, "Half made")
    person.send_photos(3)
    person.send("/cancel")
    person.expect("отменено")
    assert avatars_of(stack.database_url, person.id) == []
    # The conversation is over: photos and /cancel are now outside it.
    person.photo(png(640, 512, seed=1), 640, 512)
    person.expect("Чтобы создать аватар")
    person.send("/cancel")
    person.expect("нечего отменять")

    # A Start button from before is outdated, not a way back in.
    def outdated() -> int:
        answers = stack.api.calls_to("answerCallbackQuery")
        return sum(
            1 for c in answers if str(c.params.get("text")).startswith("Эта кнопка устарела.")
        )

    before = outdated()
    person.press("train:start")
    wait_until(lambda: outdated() > before, 5, what="the outdated button's answer")
    assert avatars_of(stack.database_url, person.id) == []


def test_too_few_photos_cannot_start(stack: BotStack) -> None:
    person = Person(stack.api, 7301)
    submitted = len(stack.fal.requests())
    begin_avatar(person, "Nine")
    person.send_photos(9)
    person.send("/done")
    assert "сейчас 9" in person.expect("Нужно не меньше 10")["text"]
    person.press("train:start")
    person.expect("Нужно не меньше 10")
    # The refusal is the handler's answer; a submission would have come from the same
    # handler, so a second is ample for one that was wrongly made anyway to show.
    holds(
        lambda: (
            avatars_of(stack.database_url, person.id) == []
            and len(stack.fal.requests()) == submitted
        ),
        1.0,
        what="no avatar and no submission",
    )
    person.send_photos(1, start=9)
    person.send("/done")
    person.expect("Проверим")


def test_documents_are_checked_by_their_real_content(stack: BotStack) -> None:
    person = Person(stack.api, 7401)
    begin_avatar(person, "Files")
    person.document(b"PK\x03\x04 not really", "application/zip", "photos.zip")
    person.expect("Это не изображение")
    person.document(b"hello, I am text pretending", "image/png", "fake.png")
    person.expect("Это не изображение")
    person.document(png(800, 600, 5), "image/png", "huge.png", declared_size=15 * 2**20)
    assert "15.0 МБ" in person.expect("Файл слишком большой")["text"]
    person.document(png(300, 300, 6), "image/png", "small.png")
    assert "300×300" in person.expect("слишком маленькое")["text"]
    good = person.document(png(800, 600, 7), "image/png", "good.png")
    person.expect("Фото 1 принято")
    person.document(png(800, 600, 7), "image/png", "good.png", unique_id=good)
    person.expect("уже есть среди присланных")
    person.photo(png(400, 300, 8), 400, 300)
    assert "400×300" in person.expect("слишком маленькое")["text"]
    # Neither the name nor the MIME type decides: the file's own header does.
    person.document(png(800, 600, 9), "application/octet-stream", "scan")
    person.expect("Фото 2 принято")
    person.document(jpeg_header(900, 700), "application/octet-stream", "picture.dat")
    person.expect("Фото 3 принято")
    person.document(b"%PDF-1.7 a scanned letter", "application/octet-stream", "scan")
    person.expect("Это не изображение")
    person.send("/cancel")
    person.expect("отменено")


def test_fal_refusing_the_submission_leaves_a_draft_that_can_be_retried(
    stack: BotStack,
) -> None:
    person = Person(stack.api, 7501)
    before = len(stack.fal.requests())
    begin_avatar(person, "Stubborn")
    person.send_photos(10)
    person.press("photos:done")
    person.expect("Проверим")
    stack.fal.plan("submit", (401, {"detail": "Invalid key"}))
    person.press("train:start")
    refused = person.expect("не принимает наши запросы")
    (avatar,) = avatars_of(stack.database_url, person.id)
    assert avatar.status == "draft" and "401" in (avatar.error_message or "")
    assert person.buttons(refused) == [f"avatar:retry:{avatar.id}", f"avatar:discard:{avatar.id}"]
    downloads = len(stack.api.calls_to("download"))

    detail = [{"loc": ["body", "images_data_url"], "msg": "images are too dark", "type": "x"}]
    stack.fal.plan("submit", (422, {"detail": detail}))
    person.press(f"avatar:retry:{avatar.id}")
    assert "images_data_url: images are too dark" in person.expect("отклонил")["text"]
    stack.fal.plan("submit", (503, {"detail": "Service Unavailable"}))
    person.press(f"avatar:retry:{avatar.id}")
    person.expect("недоступен")
    assert avatars_of(stack.database_url, person.id)[0].status == "draft"
    assert len(stack.fal.requests()) == before

    person.press(f"avatar:retry:{avatar.id}")
    person.expect("началось")
    request = stack.fal.wait_submitted(before + 1)[-1]
    # The zip made for the first attempt is reused: the photos were fetched from Telegram once.
    assert len(stack.api.calls_to("download")) == downloads
    assert stack.fal.wait_downloaded(request.request_id).archive is not None
    assert stack.fal.complete(request.request_id) == 200
    person.expect("готов")
    assert avatars_of(stack.database_url, person.id)[0].status == "completed"
    person.press(f"avatar:retry:{avatar.id}")
    person.expect("уже не черновик")


def test_a_draft_can_be_deleted_and_nobody_else_can_touch_it(stack: BotStack) -> None:
    owner, stranger = Person(stack.api, 7551), Person(stack.api, 7552)
    begin_avatar(owner, "Mine")
    owner.send_photos(10)
    owner.press("photos:done")
    owner.expect("Проверим")
    stack.fal.plan("submit", (500, {"detail": "Internal Server Error"}))
    owner.press("train:start")
    owner.expect("недоступен")
    (draft,) = avatars_of(stack.database_url, owner.id)
    # Callback data is written by the client: someone else's id gets nowhere.
    for action in ("retry", "discard", "refresh", "cancel", "generate"):
        stranger.press(f"avatar:{action}:{draft.id}")
        stranger.expect("не найден")
    assert avatars_of(stack.database_url, owner.id)[0].status == "draft"
    owner.press(f"avatar:discard:{draft.id}")
    owner.expect("удалён")
    assert avatars_of(stack.database_url, owner.id) == []
    assert training_rows(stack.database_url, draft.id) == 0
    owner.press(f"avatar:retry:{draft.id}")
    owner.expect("не найден")


def test_a_lost_callback_is_recovered_by_the_reconciler(stack: BotStack) -> None:
    person = Person(stack.api, 7601)
    request = start_training(stack, person, "Lost")
    stack.fal.complete(request.request_id, deliver=False)
    ready = person.expect("готов", timeout=EXPECTED_SECONDS + 10)
    assert "Lost" in ready["text"]
    (event,) = events_of(stack.database_url, request.request_id)
    assert event.signed is False and event.source == "reconciler" and event.headers == {}
    # FAL's callback, late after all: recorded, changes nothing, sends nothing.
    assert stack.fal.deliver(request.request_id) == 200
    # The callback was committed before its 200; a wrong message would leave within the
    # outbox's poll (0.2 s) and one message a second to one chat (1 s).
    holds(lambda: len(person.ready_messages()) == 1, 2.0, what="one 'ready' message")
    outcomes = sorted(e.outcome for e in events_of(stack.database_url, request.request_id))
    assert outcomes == ["ignored", "received"]


def test_one_training_at_a_time_then_refresh_and_cancel_from_my_avatars(
    stack: BotStack,
) -> None:
    person = Person(stack.api, 7701)
    first = start_training(stack, person, "First")
    begin_avatar(person, "Second")
    person.send_photos(10)
    person.press("photos:done")
    person.expect("Проверим")
    person.press("train:start")
    assert "First" in person.expect("уже обучается")["text"]
    assert [a.name for a in avatars_of(stack.database_url, person.id)] == ["First"]

    person.send("/avatars")
    listing = person.expect("Ваши аватары")
    (first_avatar,) = avatars_of(stack.database_url, person.id)
    assert f"avatar:refresh:{first_avatar.id}" in person.buttons(listing)
    person.press(f"avatar:refresh:{first_avatar.id}")
    person.expect("ждёт в очереди")
    person.press(f"avatar:cancel:{first_avatar.id}")
    person.expect("Отменяю")
    person.expect("отменено")  # from the outbox
    assert stack.fal.request(first.request_id).cancelled

    # The draft of the second one was kept: the same Start button works now.
    person.press("train:start")
    person.expect("началось")
    names = {a.name: a.status for a in avatars_of(stack.database_url, person.id)}
    assert names == {"First": "cancelled", "Second": "training"}
    second = stack.fal.wait_submitted(len(stack.fal.requests()))[-1]
    stack.fal.complete(second.request_id)
    person.expect("готов")


def outcome_messages(person: Person) -> list[str]:
    """What the outbox told this person about how their trainings ended (its three texts)."""
    endings = ("готов!", "Не удалось обучить аватар", ") отменено.")
    return [m["text"] for m in person.messages() if any(word in m["text"] for word in endings)]


def cancel_from_my_avatars(stack: BotStack, person: Person) -> Avatar:
    person.send("/avatars")
    person.expect("Ваши аватары")
    (avatar,) = avatars_of(stack.database_url, person.id)
    person.press(f"avatar:cancel:{avatar.id}")
    return avatar


def status_of(stack: BotStack, person: Person) -> str:
    (avatar,) = avatars_of(stack.database_url, person.id)
    return avatar.status


@pytest.mark.parametrize(
    ("telegram_id", "ending", "heard", "status"),
    [
        (7801, "complete", "готов!", "completed"),
        (7802, "end_cancelled", ") отменено.", "cancelled"),
    ],
    ids=["fal-finishes-anyway", "fal-stops"],
)
def test_a_running_training_asked_to_cancel_ends_as_fal_ends_it(
    stack: BotStack, telegram_id: int, ending: str, heard: str, status: str
) -> None:
    # FAL answers CANCELLATION_REQUESTED for a running request: only a signal. A LoRA that
    # comes anyway is the person's (a `cancelled` mark, being final, would have thrown it
    # away); a run that stops ends the avatar as cancelled.
    person = Person(stack.api, telegram_id)
    request = start_training(stack, person, "Stubborn")
    stack.fal.start_training(request.request_id)
    cancel_from_my_avatars(stack, person)
    person.expect("FAL получил просьбу остановиться")
    assert status_of(stack, person) == "cancelling"
    assert getattr(stack.fal, ending)(request.request_id) == 200
    person.expect(heard)
    assert status_of(stack, person) == status
    # Window: an extra outcome would follow within one outbox poll and the per-chat interval.
    holds(lambda: len(outcome_messages(person)) == 1, 2.5, what="one outcome message")


def test_a_cancel_that_comes_too_late_applies_the_finished_result(stack: BotStack) -> None:
    # ALREADY_COMPLETED: the callback has not arrived, so the bot fetches the result itself.
    person = Person(stack.api, 7803)
    request = start_training(stack, person, "Done")
    stack.fal.complete(request.request_id, deliver=False)
    cancel_from_my_avatars(stack, person)
    person.expect("уже закончилось")
    person.expect("готов")
    assert status_of(stack, person) == "completed"


def test_a_training_fal_does_not_know_is_resolved_through_its_status(stack: BotStack) -> None:
    # NOT_FOUND from the cancel, and the status URL does not know it either: nothing will
    # ever finish it, so it is cancelled here (one message from the outbox).
    person = Person(stack.api, 7804)
    start_training(stack, person, "Ghost")
    stack.fal.plan("cancel", (404, {"status": "NOT_FOUND"}))
    stack.fal.plan("status", (404, {"detail": "Request not found"}))
    cancel_from_my_avatars(stack, person)
    person.expect("FAL не знает")
    person.expect("отменено")
    assert status_of(stack, person) == "cancelled"


def test_a_cancel_fal_does_not_find_while_it_still_runs_leaves_it_running(
    stack: BotStack,
) -> None:
    person = Person(stack.api, 7805)
    request = start_training(stack, person, "Runner")
    stack.fal.start_training(request.request_id)
    stack.fal.plan("cancel", (404, {"status": "NOT_FOUND"}))
    cancel_from_my_avatars(stack, person)
    person.expect("ещё идёт")
    assert status_of(stack, person) == "training"


def test_a_failing_handler_is_logged_with_its_update_and_apologised_for(
    stack: BotStack,
) -> None:
    person = Person(stack.api, 7801)
    stack.api.plan("sendMessage", [Fault.server_error(500)])
    update_id = person.send("/help")
    person.expect("Извините")
    logged = [
        json.loads(line)
        for line in stack.bot.log_text().splitlines()
        if '"bot_handler_failed"' in line
    ]
    assert any(entry.get("update_id") == update_id for entry in logged), logged
    person.send("/start")
    person.expect("Здравствуйте")
