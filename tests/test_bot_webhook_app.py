"""service/bot/webhook.py without nginx: the secret and its path, the endpoint's answers on
the real Starlette app in front of a real (unstarted) bot application's update queue."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import httpx
from telegram import Update
from telegram.ext import ApplicationBuilder

from service.bot.services import Services
from service.bot.webhook import (
    SECRET_HEADER,
    RecentUpdates,
    create_app,
    secret_path,
    secret_token,
    webhook_url,
)
from service.settings import Settings
from tests.fakes.telegram_api import TEST_TOKEN, message_update
from tests.support import schema

SECRET = "s3cret_-token"


def test_the_secret_is_generated_once_and_kept_in_the_database(database_url: str) -> None:
    schema.upgrade(database_url)

    async def twice(settings: Settings) -> tuple[str, str]:
        # Two starts of the bot: two Services, one database.
        found = []
        for _ in range(2):
            svc = Services.open(settings)
            try:
                found.append(await secret_token(settings, svc))
            finally:
                await svc.close()
        return found[0], found[1]

    settings = Settings(telegram_token=TEST_TOKEN, database_url=database_url)
    one, again = asyncio.run(twice(settings))
    assert one == again
    # 256 random bits in the characters Telegram allows; nothing of the token in it.
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", one)
    assert TEST_TOKEN.split(":")[1] not in one
    chosen = Settings(
        telegram_token=TEST_TOKEN, database_url=database_url, telegram_webhook_secret=SECRET
    )
    assert asyncio.run(twice(chosen)) == (SECRET, SECRET)


def test_the_url_is_the_base_and_a_path_that_does_not_show_the_secret() -> None:
    settings = Settings(telegram_token=TEST_TOKEN, bot_webhook_url="https://aibots.kz:8443/tg")
    url = webhook_url(settings, SECRET)
    path = secret_path(SECRET)
    assert url == f"https://aibots.kz:8443/tg/{path}"
    assert re.fullmatch(r"[0-9a-f]{32}", path)
    assert SECRET not in url


def test_recent_updates_forget_the_oldest_beyond_their_size() -> None:
    recent = RecentUpdates(size=3)
    assert [recent.first_time(n) for n in (1, 2, 1, 3, 4)] == [True, True, False, True, True]
    # 1 was the oldest of four: forgotten, so it counts as new again; 4 is remembered.
    assert recent.first_time(1) and not recent.first_time(4)


@dataclass
class Endpoint:
    client: httpx.AsyncClient
    queue: asyncio.Queue[object]

    async def post(
        self, body: object, secret: str | None = SECRET, path: str = ""
    ) -> httpx.Response:
        headers = {} if secret is None else {SECRET_HEADER: secret}
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        target = path or f"/telegram/{secret_path(SECRET)}"
        return await self.client.post(target, content=raw, headers=headers)


async def sorting(endpoint: Endpoint) -> None:
    update = {"update_id": 41, **message_update(5, "/start")}
    for secret in (None, "", "wrong", SECRET.upper()):
        refused = await endpoint.post(update, secret=secret)
        assert refused.status_code == 401, secret
        assert refused.json()["error"] == "unauthorized"
    assert endpoint.queue.empty(), "a refused update is never handled"
    assert (await endpoint.post(update, path="/telegram/" + "f" * 32)).status_code == 404
    assert (await endpoint.post(b"not json")).status_code == 400
    assert (await endpoint.post([1, 2])).status_code == 400
    assert (await endpoint.post(update)).json() == {"status": "accepted", "update_id": 41}
    assert (await endpoint.post(update)).json() == {"status": "duplicate", "update_id": 41}
    assert endpoint.queue.qsize() == 1
    taken = endpoint.queue.get_nowait()
    assert isinstance(taken, Update) and taken.update_id == 41
    answer = await endpoint.client.get(f"/telegram/{secret_path(SECRET)}")
    assert answer.status_code == 405 and answer.json()["error"] == "bad_request"


def test_the_endpoint_sorts_what_it_is_sent() -> None:
    """Through httpx's ASGI transport: the app itself, no server in between."""

    async def scenario() -> None:
        application = ApplicationBuilder().token(TEST_TOKEN).updater(None).build()
        transport = httpx.ASGITransport(app=create_app(application, SECRET))
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
            await sorting(Endpoint(client, application.update_queue))

    asyncio.run(scenario())
