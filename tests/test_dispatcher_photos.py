"""Photos and albums through the elected dispatcher: a real database, the real sender, the local
Bot API server fetching JPEGs from a local image host. Rows are enqueued as the outcome of a
generation writes them (one row per outcome; an album is one row)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from service import operator
from service.outbox.messages import Message, MessageType
from service.outbox.states import NotificationState
from service.store.engine import run_transaction
from tests.fakes.telegram_api import FakeBotApi, Fault
from tests.fakes.telegram_media import FETCH_AGENT, MB
from tests.support.imagehost import ImageHost
from tests.support.images import jpeg, padded
from tests.test_dispatcher import TOKEN, Worker, all_in, rows, run_one, until

S = NotificationState
BUTTONS = {
    "inline_keyboard": [
        [{"text": "More like this", "callback_data": "gen:again:g1"}],
        [{"text": "My photos", "callback_data": "gen:mine"}],
    ]
}


@pytest.fixture
def api() -> Iterator[FakeBotApi]:
    with FakeBotApi(TOKEN) as server:
        yield server


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with ImageHost() as server:
        yield server


def served(host: ImageHost, count: int, size: int | None = None) -> list[str]:
    images = [jpeg(128, 96, seed=n) for n in range(count)]
    return [host.add(f"/{n}.jpeg", padded(i, size) if size else i) for n, i in enumerate(images)]


def photo(url: str, chat: int = 7) -> Message:
    return Message(
        chat_id=chat,
        text="<b>Studio</b> portrait",
        reply_markup=BUTTONS,
        message_type=MessageType.PHOTO,
        media=({"url": url},),
    )


def album(urls: list[str], chat: int = 7) -> Message:
    media: list[dict[str, Any]] = [{"url": url} for url in urls]
    media[0]["caption"] = "Cinematic"
    return Message(
        chat_id=chat,
        text="Photos left today: 16",
        reply_markup=BUTTONS,
        message_type=MessageType.ALBUM,
        media=tuple(media),
    )


def test_a_photo_row_is_one_photo_with_its_caption_and_buttons_and_its_file_id_is_stored(
    api: FakeBotApi, host: ImageHost, database_url: str
) -> None:
    (url,) = served(host, 1)

    async def body(worker: Worker) -> None:
        await all_in(worker, S.SENT, 1, seconds=15)
        (row,) = await rows(worker)
        (delivery,) = api.media.photos()
        assert row.media == [{"url": url, "file_id": delivery.file_ids()[0]}]
        assert row.telegram_message_id == delivery.messages[0]["message_id"]

    run_one(api, database_url, [photo(url)], body)
    (delivery,) = api.media.deliveries()
    assert delivery.caption == "Studio portrait" and delivery.reply_markup == BUTTONS
    assert api.sent_messages() == []


def test_an_album_of_four_is_one_media_group_and_one_follow_up_and_its_file_ids_are_stored(
    api: FakeBotApi, host: ImageHost, database_url: str
) -> None:
    urls = served(host, 4)

    async def body(worker: Worker) -> None:
        await all_in(worker, S.SENT, 1, seconds=15)
        (row,) = await rows(worker)
        (group,) = api.media.albums()
        assert [entry["file_id"] for entry in row.media or []] == group.file_ids()
        assert [entry["url"] for entry in row.media or []] == urls
        assert row.telegram_message_id == group.messages[0]["message_id"]

    run_one(api, database_url, [album(urls)], body)
    (group,) = api.media.deliveries()
    assert len(group.messages) == 4 and group.caption == "Cinematic"
    (follow_up,) = api.sent_messages()
    assert follow_up["text"] == "Photos left today: 16" and follow_up["reply_markup"] == BUTTONS


def test_a_url_over_5_mb_is_uploaded_instead_and_received_once(
    api: FakeBotApi, host: ImageHost, sqlite_url: str
) -> None:
    (url,) = served(host, 1, 6 * MB)

    async def body(worker: Worker) -> None:
        await all_in(worker, S.SENT, 1, seconds=20)

    run_one(api, sqlite_url, [photo(url)], body)
    (delivery,) = api.media.deliveries()
    assert delivery.sources == ["upload"] and len(delivery.data[0]) == 6 * MB
    assert [c.status for c in api.calls_to("sendPhoto")] == [400, 200]
    # Telegram tried (and refused past 5 MB), then we fetched it.
    assert host.fetched_by("/0.jpeg")[0] == FETCH_AGENT
    assert len(host.fetched_by("/0.jpeg")) == 2


def test_a_url_nobody_can_fetch_is_undeliverable_with_the_reason(
    api: FakeBotApi, host: ImageHost, sqlite_url: str
) -> None:
    async def body(worker: Worker) -> None:
        await all_in(worker, S.UNDELIVERABLE, 1, seconds=15)
        (row,) = await rows(worker)
        assert row.last_error is not None and "HTTP 404" in row.last_error

    run_one(api, sqlite_url, [album([f"{host.url}/gone.jpeg", f"{host.url}/also.jpeg"])], body)
    assert api.media.deliveries() == [] and api.calls_to("sendMessage") == []


def test_a_429_on_the_album_waits_retry_after_and_sends_it_once(
    api: FakeBotApi, host: ImageHost, sqlite_url: str
) -> None:
    api.plan("sendMediaGroup", [Fault.retry_after(2)])

    async def body(worker: Worker) -> None:
        await all_in(worker, S.SENT, 1, seconds=15)

    # A short chat interval: the album's own pacing (four slots of its chat) ends before the
    # 429's two seconds, so the retry comes when Telegram allows, not when the chat does.
    run_one(api, sqlite_url, [album(served(host, 3))], body, telegram_chat_interval=0.2)
    first, second = api.calls_to("sendMediaGroup")
    assert first.status == 429 and second.ok
    assert 2.0 <= second.at - first.at < 3.5
    assert len(api.media.albums()) == 1 and len(api.sent_messages()) == 1


@pytest.mark.parametrize(
    ("fault", "state"),
    [(Fault.blocked(), S.UNDELIVERABLE), (Fault.hang(1.5), S.UNCERTAIN)],
    ids=["403", "read-timeout"],
)
def test_403_stops_and_a_read_timeout_is_uncertain(
    api: FakeBotApi, host: ImageHost, sqlite_url: str, fault: Fault, state: NotificationState
) -> None:
    api.plan("sendMediaGroup", [fault])

    async def body(worker: Worker) -> None:
        await all_in(worker, state, 1, seconds=15)

    message = album(served(host, 2))
    run_one(api, sqlite_url, [message], body, telegram_read_timeout_seconds=0.5)
    assert len(api.calls_to("sendMediaGroup")) == 1
    assert api.calls_to("sendMessage") == []


def test_a_follow_up_failing_after_the_album_never_sends_the_album_again(
    api: FakeBotApi, host: ImageHost, database_url: str
) -> None:
    # The follow-up: a 502 (retried by the loop), then a read timeout (uncertain, re-queued by
    # an operator), then delivered. The album goes out once through all of it.
    api.plan("sendMessage", [Fault.server_error(502), Fault.hang(1.5)])

    async def body(worker: Worker) -> None:
        await all_in(worker, S.UNCERTAIN, 1, seconds=20)
        (row,) = await rows(worker)
        (group,) = api.media.albums()
        assert [entry["file_id"] for entry in row.media or []] == group.file_ids()
        assert row.last_error is not None and row.last_error.startswith("album sent;")
        await run_transaction(
            worker.sessions, lambda s: operator.retry_notifications(s, row.id, False)
        )
        worker.wakeup.set()
        await all_in(worker, S.SENT, 1, seconds=15)

    # The chat's pacing is not what this is about: an album of four and its follow-up hold the
    # chat five intervals, so at 1 s the 502's retry waited 5 s; at 0.1 s the back-off rules.
    run_one(
        api,
        database_url,
        [album(served(host, 4))],
        body,
        telegram_read_timeout_seconds=0.5,
        telegram_chat_interval=0.1,
    )
    assert len(api.calls_to("sendMediaGroup")) == 1 and len(api.media.albums()) == 1
    # The follow-up itself: refused, timed out (delivered late: why it was uncertain), resent.
    follow_ups = api.calls_to("sendMessage")
    assert len(follow_ups) == 3 and follow_ups[0].status == 502 and follow_ups[2].ok


def test_pacing_counts_an_album_as_its_messages(
    api: FakeBotApi, host: ImageHost, sqlite_url: str
) -> None:
    # An album of four and its follow-up are five messages: the chat's next message waits five
    # intervals, and everyone else five global slots.
    urls = served(host, 4)
    messages = [
        album(urls, chat=1),
        Message(chat_id=1, text="after the album"),
        Message(chat_id=2, text="another chat"),
    ]

    async def body(worker: Worker) -> None:
        await until(lambda: len(api.sent_messages()) == 3, 20, "all three texts")
        # Telegram has the last text a moment before the dispatcher records it as sent.
        await all_in(worker, S.SENT, 3, seconds=5)

    run_one(
        api,
        sqlite_url,
        messages,
        body,
        telegram_rate_per_second=10.0,
        telegram_chat_interval=0.4,
    )
    (group,) = api.calls_to("sendMediaGroup")
    by_text = {c.params["text"]: c.at for c in api.calls_to("sendMessage") if c.ok}
    assert by_text["another chat"] - group.at >= 5 / 10 - 0.05
    assert by_text["after the album"] - group.at >= 5 * 0.4 - 0.05


def test_the_albums_checkpoint_is_in_the_database_before_its_follow_up_is_answered(
    api: FakeBotApi, host: ImageHost, database_url: str
) -> None:
    # The follow-up hangs past the (renewed) lease, as a sender that died after the album
    # would leave it: the row is claimed again meanwhile, and that claim reads the checkpoint
    # from the database, so it sends only the follow-up and never the album again.
    api.plan("sendMessage", [Fault.hang(3.0)])

    async def body(worker: Worker) -> None:
        await until(lambda: len(api.calls_to("sendMessage")) == 2, 15, "a second follow-up")
        await all_in(worker, S.SENT, 1, seconds=15)

    run_one(
        api,
        database_url,
        [album(served(host, 2))],
        body,
        outbox_lease_seconds=1.0,
        telegram_chat_interval=0.1,
    )
    assert len(api.calls_to("sendMediaGroup")) == 1 and len(api.media.albums()) == 1
