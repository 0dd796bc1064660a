"""The whole system for bot tests: webhook service, bot process, local Bot API and FAL queue.

`BotStack` runs the webhook service under gunicorn and `python -m service bot` beside it, both
on one SQLite database and one Bot API server, the bot pointed at a local FAL queue whose
callbacks go to the real webhook service. `Person` plays one Telegram user through the Bot
API server's getUpdates and reads what the bot (and the outbox) sent to them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

from service.store.models import Avatar
from tests.fakes.fal_keys import FalSigner
from tests.fakes.fal_queue import TEST_KEY, FalQueueServer
from tests.fakes.telegram_api import (
    TEST_TOKEN,
    FakeBotApi,
    callback_update,
    default_user,
    document_update,
    message_update,
    photo_update,
)
from tests.support.db import owned_by
from tests.support.images import png
from tests.support.servers import GunicornServer, ServiceProcess, base_env, wait_until

TOKEN = TEST_TOKEN
FAL_KEY = TEST_KEY
WEBHOOK = "/api/v1/avatar/status_update"
_file_numbers = itertools.count(1)


class BotStack:
    def __init__(
        self, api: FakeBotApi, fal: FalQueueServer, jwks_url: str, **settings: str
    ) -> None:
        self.api = api
        self.fal = fal
        # The bot is up once it asks for updates, or once it has set its webhook.
        self.ready_call = "setWebhook" if settings.get("BOT_UPDATES") == "webhook" else "getUpdates"
        shared = {"TELEGRAM_TOKEN": TOKEN, "TELEGRAM_API_URL": api.url}
        # The quota is both processes': the bot checks it, the outcomes tell what is left. The
        # per-chat pace is the web service's (its outbox sends the outcomes).
        web = {
            k: v
            for k, v in settings.items()
            if k.startswith("GENERATIONS_") or k == "TELEGRAM_CHAT_INTERVAL"
        }
        self.server = GunicornServer({**shared, **web, "FAL_JWKS_URL": jwks_url})
        self.database_url = self.server.database_url
        self.bot = ServiceProcess(
            "bot",
            base_env(
                **shared,
                DATABASE_URL=self.database_url,
                FAL_KEY=FAL_KEY,
                FAL_QUEUE_URL=fal.url,
                FAL_WEBHOOK_URL=f"{self.server.url}{WEBHOOK}",
                PUBLIC_BASE_URL=self.server.url,
                **settings,
            ),
        )

    def __enter__(self) -> BotStack:
        try:
            # The bot needs the migrated database to start, not the web service: the two
            # interpreters start side by side.
            self.server.start()
            self.bot.start()
            self.server.wait_ready()
            wait_until(self._polling, 30, what=f"the bot's first {self.ready_call}")
        except BaseException:
            self.close()
            raise
        return self

    def _polling(self) -> bool:
        assert self.bot.proc is not None
        if self.bot.proc.poll() is not None:
            raise AssertionError(f"the bot exited early:\n{self.bot.log_text()[-3000:]}")
        # A getUpdates stays pending for its long poll; a refused setWebhook does not count.
        return any(call.outcome != "error" for call in self.api.calls_to(self.ready_call))

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.bot.close()
        self.server.close()


@contextlib.contextmanager
def running_bot(
    api: FakeBotApi, signer: FalSigner, jwks_url: str, **settings: str
) -> Iterator[BotStack]:
    """A BotStack with a local FAL queue of its own, signing with `signer`."""
    with FalQueueServer(FAL_KEY, signer) as fal, BotStack(api, fal, jwks_url, **settings) as stack:
        yield stack


class Person:
    """One Telegram user talking to the bot."""

    def __init__(self, api: FakeBotApi, user_id: int, language_code: str = "ru") -> None:
        self.api = api
        self.id = user_id
        self.user = {**default_user(user_id), "language_code": language_code}
        self._seen = 0
        self.photos: list[bytes] = []

    # -- what the person does ------------------------------------------------------------------

    def send(self, text: str) -> int:
        return self.api.push_update(message_update(self.id, text, user=self.user))

    def press(self, data: str, message_id: int = 1) -> int:
        return self.api.push_update(callback_update(self.id, data, message_id, user=self.user))

    def photo(self, data: bytes, width: int, height: int, unique_id: str | None = None) -> str:
        number = next(_file_numbers)
        file_id = f"photo-{self.id}-{number}"
        unique = unique_id or f"uphoto-{self.id}-{number}"
        self.api.add_file(file_id, data, unique, f"photos/file_{number}.jpg")
        self.api.push_update(
            photo_update(self.id, file_id, unique, width, height, len(data), user=self.user)
        )
        return unique

    def document(
        self,
        data: bytes,
        mime_type: str,
        file_name: str,
        declared_size: int | None = None,
        unique_id: str | None = None,
    ) -> str:
        number = next(_file_numbers)
        file_id = f"doc-{self.id}-{number}"
        unique = unique_id or f"udoc-{self.id}-{number}"
        self.api.add_file(file_id, data, unique, f"documents/file_{number}")
        size = len(data) if declared_size is None else declared_size
        self.api.push_update(
            document_update(self.id, file_id, unique, mime_type, file_name, size, user=self.user)
        )
        return unique

    # -- what the person sees ------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """Every message delivered to this chat, as the Bot API server parsed it (the text
        the person reads, with entities), plus the parameters as sent (`sent`)."""
        return [
            {**call.result, "sent": call.params}
            for call in self.api.calls_to("sendMessage")
            if call.ok and call.params.get("chat_id") == self.id
        ]

    def expect(self, fragment: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next unread message containing `fragment`; fails with what did arrive."""
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            unread = self.messages()[self._seen :]
            for offset, message in enumerate(unread):
                if fragment in message["text"]:
                    self._seen += offset + 1
                    found.append(message)
                    return True
            return False

        try:
            wait_until(arrived, timeout, interval=0.05, what=f"a message with {fragment!r}")
        except AssertionError:
            texts = [m["text"][:120] for m in self.messages()[self._seen :]]
            raise AssertionError(f"no message with {fragment!r}; unread: {texts!r}") from None
        return found[0]

    def ready_messages(self) -> list[dict[str, Any]]:
        """The outbox's "avatar ready" messages (they carry the Generate button)."""
        return [m for m in self.messages() if "avatar:generate:" in str(m["sent"])]

    def send_photos(self, count: int, start: int = 0) -> None:
        """Send `count` distinct photos, waiting for each acknowledgement."""
        word = "Photo" if self.user["language_code"] == "en" else "Фото"
        for number in range(start, start + count):
            data = png(640, 512, seed=self.id + number)
            self.photos.append(data)
            self.photo(data, 640, 512)
            self.expect(f"{word} {len(self.photos)} ")

    def buttons(self, message: dict[str, Any]) -> list[str]:
        markup = message["sent"].get("reply_markup") or {}
        return [b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row]


def begin_avatar(person: Person, name: str, training_type: str = "portrait") -> None:
    """/create -> name -> type: the bot then waits for photos."""
    person.photos = []
    person.send("/create")
    person.expect("Как назовём" if person.user["language_code"] != "en" else "call the avatar")
    person.send(name)
    person.expect("Аватар" if person.user["language_code"] != "en" else "Avatar")
    person.press(f"type:{training_type}")
    person.expect("от 10 до 20" if person.user["language_code"] != "en" else "10 to 20")


def avatars_of(database_url: str, telegram_id: int) -> list[Avatar]:
    return owned_by(database_url, telegram_id, Avatar)


def start_training(stack: BotStack, person: Person, name: str, photos: int = 10) -> Any:
    """Create an avatar with `photos` photos and press Start; returns FAL's request."""
    already = len(stack.fal.requests())
    begin_avatar(person, name)
    person.send_photos(photos)
    person.press("photos:done")
    person.expect("Проверим")
    person.press("train:start")
    person.expect("началось")
    return stack.fal.wait_submitted(already + 1)[-1]
