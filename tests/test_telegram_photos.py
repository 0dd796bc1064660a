"""Photos and albums through the Telegram seam, against the local Bot API server, with the JPEGs
on a local image host: by URL, the upload when Telegram will not fetch it, the document last."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from service.outbox.download import DownloadFailed, download
from service.outbox.messages import Message, MessageType, album_sent, telegram_messages
from service.outbox.sender import SendResult
from service.outbox.states import SendOutcome
from service.outbox.telegram import TelegramSender, bot_for
from tests.fakes.telegram_api import TEST_TOKEN, FakeBotApi, Fault
from tests.fakes.telegram_media import FETCH_AGENT, MB
from tests.support.imagehost import ImageHost
from tests.support.images import jpeg, padded
from tests.support.servers import free_port

READ_TIMEOUT = 1.0
BUTTONS = {"inline_keyboard": [[{"text": "More like this", "callback_data": "gen:again:g1"}]]}


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with ImageHost() as server:
        yield server


def send(
    api: FakeBotApi, message: Message, checkpoints: list[SendResult] | None = None
) -> SendResult:
    async def go() -> SendResult:
        bot = bot_for(TEST_TOKEN, api.url, read_timeout=READ_TIMEOUT, connect_timeout=0.5)
        sender = TelegramSender(bot)
        await sender.start()

        async def checkpoint(partial: SendResult) -> None:
            # The album is out and its follow-up not yet: what the dispatcher stores here.
            assert api.calls[-1].method == "sendMediaGroup"
            (checkpoints if checkpoints is not None else []).append(partial)

        try:
            return await sender.send(message, checkpoint)
        finally:
            await sender.stop()

    return asyncio.run(go())


def photo(url: str, text: str = "<b>Studio</b> portrait") -> Message:
    return Message(
        chat_id=42,
        text=text,
        reply_markup=BUTTONS,
        message_type=MessageType.PHOTO,
        media=({"url": url},),
    )


def album(urls: list[str], text: str = "Photos left today: <b>16</b>") -> Message:
    media = [{"url": url} for url in urls]
    media[0]["caption"] = "Business &amp; city"
    return Message(
        chat_id=42,
        text=text,
        reply_markup=BUTTONS,
        message_type=MessageType.ALBUM,
        media=tuple(media),
    )


def served(host: ImageHost, count: int, size: int | None = None) -> list[str]:
    images = [jpeg(96, 64, seed=n) for n in range(count)]
    return [host.add(f"/{n}.jpeg", padded(i, size) if size else i) for n, i in enumerate(images)]


def test_a_photo_goes_by_url_with_its_caption_and_buttons_and_keeps_its_file_id(
    api: FakeBotApi, host: ImageHost
) -> None:
    (url,) = served(host, 1)
    result = send(api, photo(url))
    assert result.outcome is SendOutcome.SENT
    (delivery,) = api.media.photos()
    assert delivery.sources == ["url"]
    assert delivery.caption == "Studio portrait"
    assert delivery.reply_markup == BUTTONS
    assert result.message_id == delivery.messages[0]["message_id"]
    assert result.media == ({"url": url, "file_id": delivery.file_ids()[0]},)
    assert host.fetched_by("/0.jpeg") == [FETCH_AGENT]
    # Sent again from what was stored: by its file_id, without the URL (FAL's expire).
    assert result.media is not None
    again = send(api, dataclasses.replace(photo(url), media=result.media))
    assert again.outcome is SendOutcome.SENT
    assert api.media.photos()[1].sources == ["file_id"]
    assert host.fetched_by("/0.jpeg") == [FETCH_AGENT]


@pytest.mark.parametrize("why", ["over 5 MB", "refused to Telegram's fetcher"])
def test_a_url_telegram_will_not_fetch_is_downloaded_and_uploaded_once(
    api: FakeBotApi, host: ImageHost, why: str
) -> None:
    size = 6 * MB if why == "over 5 MB" else None
    (url,) = served(host, 1, size)
    if why != "over 5 MB":
        host.refuse_agent(FETCH_AGENT)
    result = send(api, photo(url))
    assert result.outcome is SendOutcome.SENT, result.error
    (delivery,) = api.media.deliveries()
    assert (delivery.method, delivery.sources) == ("sendPhoto", ["upload"])
    assert delivery.data == [host.files["/0.jpeg"][0]]
    assert delivery.caption == "Studio portrait" and delivery.reply_markup == BUTTONS
    assert [c.status for c in api.calls_to("sendPhoto")] == [400, 200]
    assert result.media is not None and result.media[0]["file_id"] == delivery.file_ids()[0]


def test_a_photo_too_big_to_upload_as_a_photo_goes_as_a_document(
    api: FakeBotApi, host: ImageHost
) -> None:
    (url,) = served(host, 1, 11 * MB)
    result = send(api, photo(url))
    assert result.outcome is SendOutcome.SENT, result.error
    (delivery,) = api.media.deliveries()
    assert delivery.method == "sendDocument" and delivery.caption == "Studio portrait"
    assert result.media is not None
    # Not a photo's file_id: "My photos" cannot resend it with sendPhoto.
    assert "file_id" not in result.media[0]
    assert result.media[0]["document_file_id"] == delivery.file_ids()[0]


def test_a_photo_nobody_can_fetch_fails_clearly(api: FakeBotApi, host: ImageHost) -> None:
    gone = send(api, photo(f"{host.url}/expired.jpeg"))
    assert gone.outcome is SendOutcome.UNDELIVERABLE
    assert gone.error is not None and "HTTP 404" in gone.error
    assert "Failed to get http url content" in gone.error
    # A host that does not answer at all may be back later.
    down = send(api, photo(f"http://127.0.0.1:{free_port()}/1.jpeg"))
    assert down.outcome is SendOutcome.RETRY
    assert down.error is not None and "could not fetch" in down.error
    assert api.media.deliveries() == []


def test_an_album_is_one_media_group_then_its_follow_up_with_the_buttons(
    api: FakeBotApi, host: ImageHost
) -> None:
    urls = served(host, 4)
    checkpoints: list[SendResult] = []
    message = album(urls)
    assert telegram_messages(message) == 5
    result = send(api, message, checkpoints)
    assert result.outcome is SendOutcome.SENT, result.error
    (group,) = api.media.albums()
    assert group.sources == ["url"] * 4 and group.caption == "Business & city"
    (follow_up,) = api.sent_messages()
    assert follow_up["text"] == "Photos left today: <b>16</b>"
    assert follow_up["reply_markup"] == BUTTONS
    assert result.media is not None
    assert [e["file_id"] for e in result.media] == group.file_ids()
    assert [e["message_id"] for e in result.media] == [m["message_id"] for m in group.messages]
    assert result.message_id == group.messages[0]["message_id"]
    # The checkpoint came between the two, with the album's ids.
    (checkpoint,) = checkpoints
    assert checkpoint.media == result.media and checkpoint.outcome is SendOutcome.SENT


def test_when_the_follow_up_fails_the_album_is_recorded_and_never_sent_again(
    api: FakeBotApi, host: ImageHost
) -> None:
    api.plan("sendMessage", [Fault.retry_after(3)])
    message = album(served(host, 3))
    first = send(api, message)
    assert first.outcome is SendOutcome.RATE_LIMITED and first.retry_after == 3
    assert first.error is not None and first.error.startswith("album sent; its follow-up:")
    assert first.media is not None
    # The retry reads the row's media back: only the follow-up is left to send.
    retried = dataclasses.replace(message, media=first.media)
    assert album_sent(retried) and telegram_messages(retried) == 1
    second = send(api, retried)
    assert second.outcome is SendOutcome.SENT
    assert len(api.media.albums()) == 1 and len(api.sent_messages()) == 1
    assert second.message_id == first.message_id


def test_an_album_telegram_will_not_fetch_is_uploaded(api: FakeBotApi, host: ImageHost) -> None:
    host.refuse_agent(FETCH_AGENT)
    result = send(api, album(served(host, 2)))
    assert result.outcome is SendOutcome.SENT, result.error
    (group,) = api.media.albums()
    assert group.sources == ["upload", "upload"] and group.caption == "Business & city"
    assert [c.status for c in api.calls_to("sendMediaGroup")] == [400, 200]


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (Fault.retry_after(5), SendOutcome.RATE_LIMITED),
        (Fault.server_error(502), SendOutcome.RETRY),
        (Fault.blocked(), SendOutcome.UNDELIVERABLE),
        (Fault.hang(READ_TIMEOUT + 1.0), SendOutcome.UNCERTAIN),
    ],
    ids=["429", "502", "403", "read-timeout"],
)
def test_an_album_refused_by_telegram_follows_the_text_policy(
    api: FakeBotApi, host: ImageHost, fault: Fault, outcome: SendOutcome
) -> None:
    api.plan("sendMediaGroup", [fault])
    checkpoints: list[SendResult] = []
    result = send(api, album(served(host, 2)), checkpoints)
    assert result.outcome is outcome
    assert result.media is None and checkpoints == []
    assert api.calls_to("sendMessage") == []
    if outcome is SendOutcome.RATE_LIMITED:
        assert result.retry_after == 5


def test_downloads_are_bounded(host: ImageHost) -> None:
    url = host.add("/big.jpeg", padded(jpeg(8, 8), 2 * MB))

    def fetch(target: str, **kwargs: Any) -> bytes:
        return asyncio.run(download(target, **kwargs))

    assert len(fetch(url)) == 2 * MB
    with pytest.raises(DownloadFailed, match="over 1 MB") as too_big:
        fetch(url, limit=MB)
    assert too_big.value.outcome is SendOutcome.UNDELIVERABLE
    with pytest.raises(DownloadFailed, match="not an http") as scheme:
        fetch("file:///etc/passwd")
    assert scheme.value.outcome is SendOutcome.UNDELIVERABLE
