"""The bot's persistence: conversations and their drafts in the shared database, as JSON.

python-telegram-bot asks a persistence for each person's `user_data` and each conversation's
step when the bot starts, and hands it the changed ones after updates. Keeping them in the
database the service shares (rather than a pickle beside the process) means a restart, a
crash or a move to another host continues every conversation where it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from telegram.ext import BasePersistence, PersistenceInput

from service.bot.photos import Draft, Photo
from service.store import bot_state
from service.store.bot_state import Scope
from service.store.engine import create_engine, run_transaction, sessionmaker
from service.store.models import utcnow

log = structlog.get_logger("service.bot.persistence")

JsonDict = dict[str, Any]
# python-telegram-bot's shapes (its aliases are private): a conversation's key is its chat and
# user ids; callback data is not kept.
ConversationKey = tuple[int | str, ...]
ConversationDict = dict[ConversationKey, object]
CDCData = tuple[list[tuple[str, float, dict[str, Any]]], dict[str, str]]


def _draft_out(draft: Draft) -> JsonDict:
    return {
        "name": draft.name,
        "training_type": draft.training_type,
        "photos": [
            {
                "file_id": p.file_id,
                "file_unique_id": p.file_unique_id,
                "kind": p.kind,
                "width": p.width,
                "height": p.height,
                "size": p.size,
            }
            for p in draft.photos
        ],
    }


def _draft_in(data: JsonDict) -> Draft:
    photos = [Photo(**photo) for photo in data["photos"]]
    return Draft(name=data["name"], training_type=data["training_type"], photos=photos)


# The objects a conversation keeps besides plain JSON values: a tag, its type, and both ways.
CODECS: dict[str, tuple[type, Callable[[Any], JsonDict], Callable[[JsonDict], Any]]] = {
    "draft": (Draft, _draft_out, _draft_in),
}


def encode(user_data: dict[Any, Any]) -> JsonDict:
    """`user_data` as JSON: each value tagged with its codec, or `json` when it is plain."""
    out: JsonDict = {}
    for key, value in user_data.items():
        tagged = _tagged(value)
        if tagged is None:
            # Kept in memory until the next restart; a new kind of value needs its codec.
            log.warning("bot_state_not_kept", key=str(key), type=type(value).__name__)
            continue
        out[str(key)] = tagged
    return out


def _tagged(value: Any) -> JsonDict | None:
    for tag, (kind, to_json, _) in CODECS.items():
        if isinstance(value, kind):
            return {"type": tag, "value": to_json(value)}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return {"type": "json", "value": value}


def decode(stored: JsonDict) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, tagged in stored.items():
        tag, value = tagged.get("type"), tagged.get("value")
        if tag == "json":
            out[key] = value
        elif tag in CODECS:
            try:
                out[key] = CODECS[tag][2](value)
            except (KeyError, TypeError, ValueError):
                log.warning("bot_state_unreadable", key=key, type=tag)
        else:
            log.warning("bot_state_unknown_type", key=key, type=tag)
    return out


def conversation_key(name: str, key: ConversationKey) -> str:
    return json.dumps([name, *key], separators=(",", ":"))


def conversation_of(stored_key: str) -> tuple[str, ConversationKey]:
    name, *key = json.loads(stored_key)
    return name, tuple(key)


class StorePersistence(BasePersistence[dict[Any, Any], dict[Any, Any], dict[Any, Any]]):
    """`user_data` and conversation steps in `bot_state`; chat and bot data are not kept."""

    def __init__(self, database_url: str) -> None:
        # The bot flushes after every update (service/bot/app.py), so the timer is a backstop.
        super().__init__(
            store_data=PersistenceInput(
                bot_data=False, chat_data=False, user_data=True, callback_data=False
            ),
            update_interval=30,
        )
        self._database_url = database_url
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    async def _run(self, work: Callable[[AsyncSession], Any]) -> Any:
        if self._sessions is None:
            # Opened on first use: the persistence is built before the event loop runs.
            self._engine = create_engine(self._database_url, pool_size=2)
            self._sessions = sessionmaker(self._engine)
        return await run_transaction(self._sessions, work)

    async def _save(self, scope: Scope, key: str, data: Any | None) -> None:
        async def work(session: AsyncSession) -> None:
            await bot_state.save(session, scope, key, data, utcnow())

        await self._run(work)

    # -- user_data ----------------------------------------------------------------------------

    async def get_user_data(self) -> dict[int, dict[Any, Any]]:
        async def work(session: AsyncSession) -> dict[str, Any]:
            return await bot_state.load(session, Scope.USER)

        rows = await self._run(work)
        return {int(key): decode(data) for key, (data, _) in rows.items()}

    async def update_user_data(self, user_id: int, data: dict[Any, Any]) -> None:
        await self._save(Scope.USER, str(user_id), encode(data) or None)

    async def drop_user_data(self, user_id: int) -> None:
        await self._save(Scope.USER, str(user_id), None)

    async def refresh_user_data(self, user_id: int, user_data: dict[Any, Any]) -> None:
        # This process is the only writer of its people's data: memory is never behind.
        return None

    # -- conversations ------------------------------------------------------------------------

    async def get_conversations(self, name: str) -> ConversationDict:
        async def work(session: AsyncSession) -> dict[str, Any]:
            return await bot_state.load(session, Scope.CONVERSATION)

        rows = await self._run(work)
        found: ConversationDict = {}
        for stored_key, (step, _) in rows.items():
            conversation, key = conversation_of(stored_key)
            if conversation == name:
                found[key] = step
        return found

    async def update_conversation(
        self, name: str, key: ConversationKey, new_state: object | None
    ) -> None:
        await self._save(Scope.CONVERSATION, conversation_key(name, key), new_state)

    # -- not kept -----------------------------------------------------------------------------

    async def get_chat_data(self) -> dict[int, dict[Any, Any]]:
        return {}

    async def update_chat_data(self, chat_id: int, data: dict[Any, Any]) -> None:
        return None

    async def drop_chat_data(self, chat_id: int) -> None:
        return None

    async def refresh_chat_data(self, chat_id: int, chat_data: dict[Any, Any]) -> None:
        return None

    async def get_bot_data(self) -> dict[Any, Any]:
        return {}

    async def update_bot_data(self, data: dict[Any, Any]) -> None:
        return None

    async def refresh_bot_data(self, bot_data: dict[Any, Any]) -> None:
        return None

    async def get_callback_data(self) -> CDCData | None:
        return None

    async def update_callback_data(self, data: CDCData) -> None:
        return None

    async def flush(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = self._sessions = None
