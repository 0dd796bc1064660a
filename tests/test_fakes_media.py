"""The local Bot API server's photos, driven through python-telegram-bot and httpx: by URL (fetched
from a local image host as Telegram fetches), by upload, by file_id; albums; refusals."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from telegram import Bot as TelegramBot
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, InputMediaPhoto
from telegram.constants import ParseMode
from telegram.error import BadRequest, RetryAfter, TimedOut
from telegram.request import HTTPXRequest

from tests.fakes.telegram_api import TEST_TOKEN, FakeBotApi, Fault
from tests.fakes.telegram_media import FETCH_AGENT, MB
from tests.support.imagehost import ImageHost
from tests.support.images import jpeg, padded
from tests.support.servers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _ptb_timedelta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with ImageHost() as server:
        yield server


def make_bot(api: FakeBotApi, read_timeout: float = 5.0) -> TelegramBot:
    request = HTTPXRequest(connect_timeout=2.0, read_timeout=read_timeout, write_timeout=5.0)
    return TelegramBot(
        TEST_TOKEN, base_url=api.base_url, base_file_url=api.base_file_url, request=request
    )


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


BUTTONS = InlineKeyboardMarkup([[InlineKeyboardButton("More like this", callback_data="gen:x")]])


def test_a_photo_by_url_is_fetched_as_telegram_does_and_answered_with_photo_sizes(
    api: FakeBotApi, host: ImageHost
) -> None:
    image = jpeg(1600, 1200, seed=3)
    url = host.add("/a.jpeg", image)

    async def scenario() -> None:
        async with make_bot(api) as bot:
            sent = await bot.send_photo(
                42,
                url,
                caption="<b>Studio</b> &amp; light",
                parse_mode=ParseMode.HTML,
                reply_markup=BUTTONS,
            )
            assert sent.caption == "Studio & light"
            assert sent.reply_markup == BUTTONS
            sizes = sent.photo
            assert [(s.width, s.height) for s in sizes][-1] == (1600, 1200)
            assert [s.width for s in sizes] == sorted(s.width for s in sizes)
            assert len({s.file_id for s in sizes}) == len(sizes) > 1
            # Sent again by its file_id: no URL needed, the same photo.
            again = await bot.send_photo(42, sizes[-1].file_id)
            assert again.photo[-1].file_unique_id == sizes[-1].file_unique_id
            file = await bot.get_file(sizes[-1].file_id)
            assert await file.download_as_bytearray() == bytearray(image)

    run(scenario())
    assert host.fetched_by("/a.jpeg") == [FETCH_AGENT]
    first, second = api.media.photos()
    assert (first.sources, second.sources) == (["url"], ["file_id"])
    assert first.caption == "Studio & light" and first.data == [image]
    assert first.reply_markup == BUTTONS.to_dict()


def test_uploads_up_to_10_mb_and_urls_up_to_5_mb(api: FakeBotApi, host: ImageHost) -> None:
    big = padded(jpeg(64, 48), 5 * MB + 1)
    url = host.add("/big.jpeg", big)

    async def scenario() -> None:
        async with make_bot(api) as bot:
            with pytest.raises(BadRequest, match=r"^Failed to get http url content$"):
                await bot.send_photo(7, url)
            uploaded = await bot.send_photo(7, big, caption="uploaded")
            assert uploaded.photo[-1].width == 64
            with pytest.raises(BadRequest, match=r"(?i)^photo_save_file_invalid$"):
                await bot.send_photo(7, padded(jpeg(64, 48), 10 * MB + 1))
            # Too big as a photo, fine as a document (50 MB by upload).
            document = await bot.send_document(7, padded(jpeg(64, 48), 10 * MB + 1))
            assert document.document is not None and document.document.file_size == 10 * MB + 1

    run(scenario())
    assert [d.sources for d in api.media.deliveries()] == [["upload"], ["upload"]]
    assert [d.method for d in api.media.deliveries()] == ["sendPhoto", "sendDocument"]


def test_urls_telegram_cannot_use_are_refused_with_its_descriptions(
    api: FakeBotApi, host: ImageHost
) -> None:
    page = host.add("/page.html", b"<html></html>", "text/html")
    broken = host.add("/broken.jpeg", b"\xff\xd8 not really")

    async def scenario() -> None:
        async with make_bot(api) as bot:
            for url, error in [
                (f"http://127.0.0.1:{free_port()}/gone.jpeg", "^Failed to get http url content$"),
                (f"{host.url}/missing.jpeg", "^Failed to get http url content$"),
                (page, "^Wrong type of the web page content$"),
                (broken, "(?i)^image_process_failed$"),
                ("not a url", "^Wrong file identifier/http url specified$"),
            ]:
                with pytest.raises(BadRequest, match=error):
                    await bot.send_photo(7, url)
            host.refuse_agent("TelegramBot")
            with pytest.raises(BadRequest, match=r"^Failed to get http url content$"):
                await bot.send_photo(7, host.add("/hotlink.jpeg", jpeg(8, 8)))

    run(scenario())
    assert api.media.deliveries() == []
    assert len(api.calls_to("sendPhoto")) == 6


def test_an_album_is_one_delivery_of_its_messages_with_the_caption_on_the_first(
    api: FakeBotApi, host: ImageHost
) -> None:
    urls = [host.add(f"/{n}.jpeg", jpeg(64, 48, seed=n)) for n in range(3)]

    async def scenario() -> None:
        async with make_bot(api) as bot:
            media = [
                InputMediaPhoto(urls[0], caption="<i>Cinematic</i>", parse_mode=ParseMode.HTML),
                InputMediaPhoto(urls[1]),
                InputMediaPhoto(urls[2]),
                InputMediaPhoto(jpeg(32, 32, seed=9)),  # an upload, as attach://
            ]
            sent = await bot.send_media_group(42, media)
            assert len(sent) == 4
            assert len({m.media_group_id for m in sent}) == 1
            assert [m.caption for m in sent] == ["Cinematic", None, None, None]
            assert sent[3].photo[-1].width == 32

    run(scenario())
    (album,) = api.media.albums()
    assert album.sources == ["url", "url", "url", "upload"]
    assert album.caption == "Cinematic" and album.chat_id == 42
    assert len(set(album.file_ids())) == 4


def test_an_album_refuses_bad_sizes_long_captions_and_any_bad_item(
    api: FakeBotApi, host: ImageHost
) -> None:
    url = host.add("/ok.jpeg", jpeg(16, 16))
    method = f"{api.base_url}{TEST_TOKEN}/sendMediaGroup"

    def group(*items: dict[str, Any]) -> dict[str, Any]:
        answer = httpx.post(method, json={"chat_id": 5, "media": list(items)})
        return dict(answer.json())

    photo = {"type": "photo", "media": url}
    assert "2-10" in group(photo)["description"]
    assert "2-10" in group(*[photo] * 11)["description"]
    long = {**photo, "caption": "x" * 1025}
    assert group(long, photo)["description"] == "Bad Request: message caption is too long"
    gone = {"type": "photo", "media": f"{host.url}/gone.jpeg"}
    assert group(photo, gone)["description"] == "Bad Request: failed to get HTTP URL content"
    assert group({**photo, "caption": "x" * 1024}, photo)["ok"] is True
    assert len(api.media.albums()) == 1


def test_scripted_failures_apply_to_the_media_methods(api: FakeBotApi, host: ImageHost) -> None:
    url = host.add("/a.jpeg", jpeg(16, 16))
    api.plan("sendMediaGroup", [Fault.retry_after(3), Fault.hang(1.0)])

    async def scenario() -> None:
        async with make_bot(api, read_timeout=0.3) as bot:
            media = [InputMediaPhoto(url), InputMediaPhoto(url)]
            with pytest.raises(RetryAfter):
                await bot.send_media_group(1, media)
            assert api.media.albums() == []
            with pytest.raises(TimedOut):
                await bot.send_media_group(1, media)

    run(scenario())
    # The hang delivered it after the client gave up: the uncertain case.
    (album,) = api.media.wait_for(1)
    assert album.method == "sendMediaGroup"


def answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.post(url).is_success
    except httpx.TransportError:
        return False


def test_standalone_process_records_photos_and_albums(tmp_path: Path, host: ImageHost) -> None:
    port, record = free_port(), tmp_path / "sent.jsonl"
    command = [sys.executable, "-m", "tests.fakes.telegram_api", "--port", str(port)]
    process = subprocess.Popen([*command, "--record", str(record)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/bot{TEST_TOKEN}"
    image = host.add("/a.jpeg", jpeg(16, 16))
    try:
        with httpx.Client() as client:
            wait_until(lambda: answers(client, f"{url}/getMe"), 10, what="the fake to come up")
            client.post(f"{url}/sendPhoto", data={"chat_id": 11, "photo": image, "caption": "c"})
            media = json.dumps([{"type": "photo", "media": image}] * 3)
            client.post(f"{url}/sendMediaGroup", data={"chat_id": 12, "media": media})
            client.post(f"{url}/sendPhoto", data={"chat_id": 13, "photo": "nothing"})  # refused
            lines = [json.loads(line) for line in record.read_text().splitlines()]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=5)
    assert [(x["chat_id"], x["method"], x["photos"], x["caption"]) for x in lines] == [
        (11, "sendPhoto", 1, "c"),
        (12, "sendMediaGroup", 3, None),
    ]
