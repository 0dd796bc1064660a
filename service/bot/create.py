"""The "create an avatar" conversation: name -> training type -> photos -> start or cancel.

Nothing is written to the database until the person presses "Start training": the draft lives
in the conversation (`user_data`), so /cancel at any step leaves nothing behind.
"""

from __future__ import annotations

import warnings

import structlog
from telegram import Update
from telegram.ext import (
    BaseHandler,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    filters,
)
from telegram.warnings import PTBUserWarning

from service.bot import generate, keyboards, training
from service.bot.collect import photos_done, photos_hint, receive_document, receive_photo
from service.bot.drafts import (
    CONFIRM,
    DRAFT_KEY,
    END,
    NAME,
    PHOTOS,
    TRAINING_TYPE,
    ask_name,
    draft_of,
    forget,
    hint,
    pressed,
)
from service.bot.menu import show_menu
from service.bot.photos import (
    MAX_NAME_CHARS,
    MAX_PHOTOS,
    MIN_PHOTOS,
    MIN_SIDE,
    Draft,
    clean_name,
)
from service.bot.services import answer_tap, lang, say, services
from service.bot.texts import kind_name, t

log = structlog.get_logger("service.bot.create")


async def receive_name(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Check the name; if good, ask for the training type."""
    assert update.message is not None and update.message.text is not None
    language = lang(update)
    name, problem = clean_name(update.message.text)
    if problem is not None:
        await update.message.reply_text(
            t(language, problem.value, length=len(name), max=MAX_NAME_CHARS)
        )
        return NAME
    assert context.user_data is not None
    context.user_data[DRAFT_KEY] = Draft(name=name)
    await update.message.reply_text(
        t(language, "ask_type", name=name), reply_markup=keyboards.training_types(language)
    )
    return TRAINING_TYPE


name_not_text = hint("name_not_text", NAME)


async def choose_type(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Record the training type and ask for the photos."""
    query = await pressed(update)
    assert query.data is not None
    draft = draft_of(context)
    if draft is None:
        return await ask_name(update, context)
    language = lang(update)
    draft.training_type = query.data.split(":", 1)[1]
    await query.edit_message_text(
        t(language, "type_chosen", name=draft.name, kind=kind_name(language, draft.training_type))
    )
    await say(update, t(language, "ask_photos", min=MIN_PHOTOS, max=MAX_PHOTOS, px=MIN_SIDE))
    return PHOTOS


type_hint = hint("type_hint", TRAINING_TYPE)


confirm_hint = hint("confirm_hint", CONFIRM)


async def start_training(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Create the avatar (taking the person's one training slot) and launch it in the background."""
    query = await pressed(update)
    assert update.effective_user is not None
    draft = draft_of(context)
    if draft is None or len(draft.photos) < MIN_PHOTOS:
        return await photos_done(update, context)
    language = lang(update)
    svc = services(context)
    try:
        avatar = await training.create(svc, update.effective_user, draft)
    except training.AlreadyTraining as exc:
        key = "already_training" if exc.name else "already_training_unnamed"
        await say(update, t(language, key, name=exc.name or ""))
        # The draft stays: the same button works once the other training has ended.
        return CONFIRM
    forget(context)
    await query.edit_message_text(t(language, "preparing", name=avatar.name))
    chat = update.effective_chat
    assert chat is not None
    # Downloading 10-20 photos and submitting takes seconds: other people's updates go on.
    context.application.create_task(
        training.launch_and_tell(svc, context.bot, chat.id, language, avatar),
        update=update,
        name=f"launch:{avatar.id}",
    )
    return END


async def cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Leave the conversation and drop the draft."""
    await answer_tap(update)
    forget(context)
    await say(update, t(lang(update), "cancelled"))
    return END


async def restart(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """/start in the middle: drop the draft and show the menu."""
    forget(context)
    await show_menu(update, context)
    return END


async def leave_for_generation(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """A generation begun mid-way: one conversation at a time, so the draft is dropped."""
    forget(context)
    await say(update, t(lang(update), "create_left"))
    if update.callback_query is not None:
        await generate.begin(update, context)
    else:
        await generate.generate_command(update, context)
    return END


def conversation() -> ConversationHandler[ContextTypes.DEFAULT_TYPE]:
    photo_handlers: list[BaseHandler[Update, ContextTypes.DEFAULT_TYPE, object]] = [
        MessageHandler(filters.PHOTO, receive_photo),
        MessageHandler(filters.Document.ALL, receive_document),
    ]
    cancel_button: BaseHandler[Update, ContextTypes.DEFAULT_TYPE, object] = CallbackQueryHandler(
        cancel, pattern=f"^{keyboards.TRAIN_CANCEL}$"
    )
    # The conversation is tracked per chat and user, not per message: the warning PTB gives
    # for CallbackQueryHandlers in that mode describes exactly what is wanted here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*per_message.*", category=PTBUserWarning)
        return ConversationHandler(
            entry_points=[
                CommandHandler("create", ask_name),
                CallbackQueryHandler(ask_name, pattern=f"^{keyboards.CREATE}$"),
            ],
            states={
                NAME: [
                    MessageHandler(filters.TEXT & ~filters.COMMAND, receive_name),
                    MessageHandler(~filters.COMMAND, name_not_text),
                ],
                TRAINING_TYPE: [
                    CallbackQueryHandler(choose_type, pattern=keyboards.TYPE_PATTERN),
                    MessageHandler(~filters.COMMAND, type_hint),
                ],
                PHOTOS: [
                    *photo_handlers,
                    CommandHandler("done", photos_done),
                    CallbackQueryHandler(photos_done, pattern=f"^{keyboards.PHOTOS_DONE}$"),
                    CallbackQueryHandler(start_training, pattern=f"^{keyboards.TRAIN_START}$"),
                    cancel_button,
                    MessageHandler(~filters.COMMAND, photos_hint),
                ],
                CONFIRM: [
                    CallbackQueryHandler(start_training, pattern=f"^{keyboards.TRAIN_START}$"),
                    cancel_button,
                    *photo_handlers,
                    CommandHandler("done", photos_done),
                    MessageHandler(~filters.COMMAND, confirm_hint),
                ],
            },
            fallbacks=[
                CommandHandler("cancel", cancel),
                CommandHandler("start", restart),
                CommandHandler("generate", leave_for_generation),
                CallbackQueryHandler(leave_for_generation, pattern=keyboards.GEN_ENTRY_PATTERN),
            ],
            allow_reentry=True,
            name="create_avatar",
            # Its step survives a restart (service/bot/persistence.py); its timeout is the
            # database's (service/bot/timeouts.py).
            persistent=True,
        )
