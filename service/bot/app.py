"""The bot application: all wiring in `build_application`, and `run` for `python -m service bot`."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import structlog
from telegram import BotCommand, Update
from telegram.constants import ParseMode
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    Defaults,
    MessageHandler,
    TypeHandler,
    filters,
)

from service.bot import (
    avatars,
    create,
    gallery,
    generate,
    keyboards,
    menu,
    reconciler,
    timeouts,
    webhook,
)
from service.bot.persistence import StorePersistence
from service.bot.services import SERVICES_KEY, Services, lang
from service.bot.texts import t
from service.settings import Settings
from service.store import migrate

log = structlog.get_logger("service.bot")

SETTINGS_KEY = "settings"
RECONCILER_KEY = "reconciler"
SWEEP_KEY = "conversation_sweep"
BotApplication = Application[Any, Any, Any, Any, Any, Any]
# What the handlers below take; Telegram sends nothing else (polling and webhook alike).
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]

COMMANDS = {
    "ru": [
        ("start", "Главное меню"),
        ("create", "Создать аватар"),
        ("avatars", "Мои аватары"),
        ("generate", "Сделать фото с аватаром"),
        ("photos", "Мои фото"),
        ("help", "Как это работает"),
        ("cancel", "Отменить создание аватара или фото"),
    ],
    "en": [
        ("start", "Main menu"),
        ("create", "Create an avatar"),
        ("avatars", "My avatars"),
        ("generate", "Make photos with an avatar"),
        ("photos", "My photos"),
        ("help", "How it works"),
        ("cancel", "Cancel creating an avatar or photos"),
    ],
}


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the failure with its update id first, then apologise to the person."""
    update_id = update.update_id if isinstance(update, Update) else None
    log.error(
        "bot_handler_failed",
        update_id=update_id,
        error=f"{type(context.error).__name__}: {context.error}",
        exc_info=context.error,
    )
    if not isinstance(update, Update) or update.effective_chat is None:
        return
    try:
        if update.callback_query is not None:
            with contextlib.suppress(TelegramError):
                await update.callback_query.answer()
        await update.effective_chat.send_message(t(lang(update), "apology"))
    except TelegramError as exc:
        log.warning("bot_apology_failed", update_id=update_id, error=str(exc))


async def _post_init(application: BotApplication) -> None:
    settings: Settings = application.bot_data[SETTINGS_KEY]
    svc = Services.open(settings)
    application.bot_data[SERVICES_KEY] = svc
    for language, commands in COMMANDS.items():
        await application.bot.set_my_commands(
            [BotCommand(name, description) for name, description in commands],
            language_code=None if language == "ru" else language,
        )
    policy = reconciler.Policy.from_settings(settings)
    application.bot_data[RECONCILER_KEY] = asyncio.create_task(
        reconciler.run_forever(svc, policy), name="reconciler"
    )
    application.bot_data[SWEEP_KEY] = asyncio.create_task(
        timeouts.run_forever(application, svc, settings.conversation_timeout_seconds),
        name="conversation_sweep",
    )
    me = application.bot
    log.info(
        "bot_started",
        username=me.username,
        api=settings.telegram_api_url,
        fal_configured=bool(settings.fal_key),
        reconcile_interval=policy.interval,
    )


async def _post_stop(application: BotApplication) -> None:
    for key in (RECONCILER_KEY, SWEEP_KEY):
        task = application.bot_data.pop(key, None)
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _post_shutdown(application: BotApplication) -> None:
    svc = application.bot_data.pop(SERVICES_KEY, None)
    if isinstance(svc, Services):
        await svc.close()
    log.info("bot_stopped")


def build_application(settings: Settings) -> BotApplication:
    """The whole bot: Bot API server from TELEGRAM_API_URL, handlers, error handler."""
    api = settings.telegram_api_url.rstrip("/")
    application: BotApplication = (
        ApplicationBuilder()
        .token(settings.telegram_token)
        .base_url(f"{api}/bot")
        .base_file_url(f"{api}/file/bot")
        .defaults(Defaults(parse_mode=ParseMode.HTML))
        # Photos sent as files may be up to 10 MB: downloads need more than the 5 s default.
        .read_timeout(30)
        .write_timeout(30)
        .connect_timeout(10)
        # Waits out a 429 for the bot's own replies; the outbox paces notifications itself.
        .rate_limiter(AIORateLimiter(max_retries=2))
        # Conversations and their drafts in the shared database: a restart continues them.
        .persistence(StorePersistence(settings.database_url))
        .post_init(_post_init)
        .post_stop(_post_stop)
        .post_shutdown(_post_shutdown)
        .build()
    )
    application.bot_data[SETTINGS_KEY] = settings
    application.add_handlers(
        [
            # The conversation first: while it runs, its states decide what a message means.
            timeouts.expiring(create.conversation(), menu.show_menu),
            CommandHandler("start", menu.show_menu),
            CommandHandler("help", menu.show_help),
            CallbackQueryHandler(menu.show_help, pattern=f"^{keyboards.HELP}$"),
            CommandHandler("avatars", avatars.list_avatars),
            CallbackQueryHandler(avatars.list_avatars, pattern=f"^{keyboards.AVATARS}$"),
            CallbackQueryHandler(avatars.avatar_action, pattern=keyboards.AVATAR_ACTION_PATTERN),
            CommandHandler("generate", generate.generate_command),
            CallbackQueryHandler(generate.begin, pattern=keyboards.GEN_ENTRY_PATTERN),
            CallbackQueryHandler(generate.choose_style, pattern=keyboards.GEN_STYLE_PATTERN),
            CallbackQueryHandler(generate.choose_own, pattern=keyboards.GEN_OWN_PATTERN),
            CallbackQueryHandler(generate.choose_frame, pattern=keyboards.GEN_FRAME_PATTERN),
            CallbackQueryHandler(generate.choose_count, pattern=keyboards.GEN_COUNT_PATTERN),
            CallbackQueryHandler(gallery.again, pattern=keyboards.GEN_AGAIN_PATTERN),
            CommandHandler("photos", gallery.my_photos),
            CallbackQueryHandler(gallery.my_photos, pattern=keyboards.GEN_MINE_PATTERN),
            CallbackQueryHandler(gallery.send_again, pattern=keyboards.GEN_SEND_PATTERN),
            CommandHandler("cancel", generate.cancel),
            MessageHandler(filters.PHOTO | filters.Document.ALL, menu.photo_outside),
            # The typed prompt, when one is awaited; otherwise a pointer to the menu.
            MessageHandler(filters.ChatType.PRIVATE & ~filters.COMMAND, generate.text),
            CallbackQueryHandler(menu.outdated_button),
        ]
    )
    # The last group: after every update's own handler, its conversation state to the store.
    application.add_handler(TypeHandler(Update, timeouts.persist_now), group=1)
    application.add_error_handler(on_error)
    return application


def run(settings: Settings) -> int:
    """Run the bot (BOT_UPDATES: long polling, or a webhook) until SIGTERM/SIGINT; the exit
    code for the CLI."""
    if not settings.telegram_token:
        print("cannot start the bot: TELEGRAM_TOKEN is empty", file=sys.stderr)
        return 2
    problem = migrate.schema_problem(settings.database_url)
    if problem:
        print(f"cannot start the bot: {problem}", file=sys.stderr)
        return 3
    if not settings.fal_key:
        log.warning(
            "fal_key_missing",
            detail="FAL_KEY is empty: trainings and generations cannot be submitted",
        )
    application = build_application(settings)
    try:
        if settings.bot_updates == "webhook":
            return _serve_webhook(application, settings)
        # PTB's polling starts with deleteWebhook: the way back from webhook mode.
        application.run_polling(allowed_updates=ALLOWED_UPDATES)
    except InvalidToken:
        print("cannot start the bot: Telegram refused TELEGRAM_TOKEN", file=sys.stderr)
        return 2
    except TelegramError as exc:
        print(f"cannot start the bot: Telegram: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_webhook(application: BotApplication, settings: Settings) -> int:
    try:
        asyncio.run(webhook.serve(application, settings, ALLOWED_UPDATES))
    except OSError as exc:
        print(f"cannot start the bot: BOT_BIND {settings.bot_bind}: {exc}", file=sys.stderr)
        return 1
    return 0
