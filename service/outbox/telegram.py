"""The Telegram seam: texts, photos and albums through python-telegram-bot, sorted into outcomes."""

from __future__ import annotations

from typing import Any

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import ParseMode
from telegram.error import TelegramError
from telegram.request import HTTPXRequest

from service.outbox.answers import failed
from service.outbox.messages import Message, MessageType
from service.outbox.photos import send_album, send_photo
from service.outbox.sender import Checkpoint, SendResult, not_supported
from service.outbox.states import SendOutcome
from service.settings import Settings


def bot_for(
    token: str,
    api_url: str,
    *,
    read_timeout: float,
    connect_timeout: float,
    pool_size: int = 32,
) -> Bot:
    """A Bot pointed at `api_url` (Telegram, a self-hosted Bot API server, or a test server)."""
    api_url = api_url.rstrip("/")
    request = HTTPXRequest(
        connection_pool_size=pool_size,
        read_timeout=read_timeout,
        write_timeout=read_timeout,
        connect_timeout=connect_timeout,
        pool_timeout=read_timeout,
    )
    return Bot(
        token,
        base_url=f"{api_url}/bot",
        base_file_url=f"{api_url}/file/bot",
        request=request,
    )


def keyboard(markup: dict[str, Any] | None) -> InlineKeyboardMarkup | None:
    if not markup:
        return None
    rows = [
        [
            InlineKeyboardButton(b["text"], callback_data=b.get("callback_data"), url=b.get("url"))
            for b in row
        ]
        for row in markup.get("inline_keyboard", [])
    ]
    return InlineKeyboardMarkup(rows)


def sender_for(settings: Settings) -> TelegramSender:
    """The sender the dispatcher uses: TELEGRAM_TOKEN at TELEGRAM_API_URL, with its timeouts."""
    bot = bot_for(
        settings.telegram_token,
        settings.telegram_api_url,
        read_timeout=settings.telegram_read_timeout_seconds,
        connect_timeout=settings.telegram_connect_timeout_seconds,
    )
    return TelegramSender(bot)


class TelegramSender:
    """Sends HTML texts, photos and albums; never raises for Telegram's answers, returns an
    outcome instead (photos.py has the fallbacks when Telegram will not fetch a photo)."""

    message_types = frozenset(MessageType)

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def start(self) -> None:
        # Calls getMe: a wrong token or an unreachable server shows up here, not mid-send.
        await self.bot.initialize()

    async def stop(self) -> None:
        await self.bot.shutdown()

    async def send(self, message: Message, checkpoint: Checkpoint | None = None) -> SendResult:
        if message.message_type not in self.message_types:
            return not_supported(message)
        markup = keyboard(message.reply_markup)
        try:
            if message.message_type is MessageType.PHOTO:
                return await send_photo(self.bot, message, markup)
            if message.message_type is MessageType.ALBUM:
                return await send_album(self.bot, message, markup, checkpoint)
            sent = await self.bot.send_message(
                chat_id=message.chat_id,
                text=message.text,
                parse_mode=ParseMode.HTML,
                reply_markup=markup,
                disable_notification=False,
            )
        except TelegramError as exc:
            return failed(exc)
        return SendResult(SendOutcome.SENT, message_id=sent.message_id)
