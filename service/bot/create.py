"""The "create an avatar" conversation: name -> training type -> photos -> start or cancel.

Nothing is written to the database until the person presses "Start training": the draft lives
in the conversation (`user_data`), so /cancel at any step leaves nothing behind.
"""

from __future__ import annotations

import warnings
from typing import Any

import structlog
from telegram import Message, Update
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

from service.bot import keyboards, training
from service.bot.menu import show_menu
from service.bot.photos import (
    MAX_FILE_BYTES,
    MAX_NAME_CHARS,
    MAX_PHOTOS,
    MAX_TOTAL_BYTES,
    MIN_PHOTOS,
    MIN_SIDE,
    Draft,
    Photo,
    Refusal,
    check_before_download,
    check_size,
    clean_name,
    image_info,
)
from service.bot.services import lang, services
from service.bot.texts import kind_name, t

log = structlog.get_logger("service.bot.create")

# Conversation states.
NAME, TRAINING_TYPE, PHOTOS, CONFIRM = range(4)
END = ConversationHandler.END

DRAFT_KEY = "draft"


def _draft(context: ContextTypes.DEFAULT_TYPE) -> Draft | None:
    found: Any = context.user_data.get(DRAFT_KEY) if context.user_data is not None else None
    return found if isinstance(found, Draft) else None


def _forget(context: ContextTypes.DEFAULT_TYPE) -> None:
    if context.user_data is not None:
        context.user_data.pop(DRAFT_KEY, None)


async def _say(update: Update, text: str, **kwargs: Any) -> Message:
    chat = update.effective_chat
    assert chat is not None
    return await chat.send_message(text, **kwargs)


async def ask_name(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Begin a new avatar: forget any half-made one and ask for its name."""
    if update.callback_query:
        await update.callback_query.answer()
    _forget(context)
    await _say(update, t(lang(update), "ask_name", max=MAX_NAME_CHARS))
    return NAME


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


async def name_not_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Ask again for the name as text."""
    await _say(update, t(lang(update), "name_not_text"))
    return NAME


async def choose_type(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Record the training type and ask for the photos."""
    query = update.callback_query
    assert query is not None and query.data is not None
    await query.answer()
    draft = _draft(context)
    if draft is None:
        return await ask_name(update, context)
    language = lang(update)
    draft.training_type = query.data.split(":", 1)[1]
    await query.edit_message_text(
        t(language, "type_chosen", name=draft.name, kind=kind_name(language, draft.training_type))
    )
    await _say(update, t(language, "ask_photos", min=MIN_PHOTOS, max=MAX_PHOTOS, px=MIN_SIDE))
    return PHOTOS


async def type_hint(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Point at the type buttons."""
    await _say(update, t(lang(update), "type_hint"))
    return TRAINING_TYPE


async def receive_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Take a photo (Telegram gives its size) or refuse it with the reason."""
    message = update.message
    assert message is not None and message.photo
    draft = _draft(context)
    if draft is None:
        return await ask_name(update, context)
    largest = max(message.photo, key=lambda size: size.width * size.height)
    refusal = check_before_download(draft, largest.file_unique_id, largest.file_size, None)
    refusal = refusal or check_size(largest.width, largest.height)
    photo = Photo(
        largest.file_id,
        largest.file_unique_id,
        "photo",
        largest.width,
        largest.height,
        largest.file_size or 0,
    )
    return await _take(update, context, draft, photo, refusal)


async def receive_document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Take an image sent as a file: check what Telegram says, then the image's own header."""
    message = update.message
    assert message is not None and message.document is not None
    draft = _draft(context)
    if draft is None:
        return await ask_name(update, context)
    document = message.document
    refusal = check_before_download(
        draft, document.file_unique_id, document.file_size, document.mime_type
    )
    width = height = 0
    size = document.file_size or 0
    if refusal is None:
        telegram_file = await document.get_file()
        data = bytes(await telegram_file.download_as_bytearray())
        size = len(data)
        info = image_info(data)
        if info is None:
            refusal = Refusal.NOT_IMAGE
        else:
            width, height = info.width, info.height
            refusal = check_before_download(draft, document.file_unique_id, size, "image/*")
            refusal = refusal or check_size(width, height)
    photo = Photo(document.file_id, document.file_unique_id, "document", width, height, size)
    return await _take(update, context, draft, photo, refusal)


async def _take(
    update: Update,
    context: ContextTypes.DEFAULT_TYPE,
    draft: Draft,
    photo: Photo,
    refusal: Refusal | None,
) -> int:
    message = update.message
    assert message is not None
    language = lang(update)
    if refusal is not None:
        await message.reply_text(
            t(
                language,
                refusal.value,
                width=photo.width,
                height=photo.height,
                px=MIN_SIDE,
                max=MAX_PHOTOS,
                size=round(photo.size / 2**20, 1),
                limit=(MAX_TOTAL_BYTES if refusal is Refusal.TOTAL_TOO_BIG else MAX_FILE_BYTES)
                // 2**20,
            )
        )
        return CONFIRM if len(draft.photos) >= MAX_PHOTOS else PHOTOS
    draft.photos.append(photo)
    count = len(draft.photos)
    if count >= MAX_PHOTOS:
        return await _summary(update, draft)
    if count >= MIN_PHOTOS:
        await message.reply_text(
            t(language, "photo_accepted_enough", count=count, max=MAX_PHOTOS),
            reply_markup=keyboards.photos_done(language),
        )
    else:
        await message.reply_text(
            t(language, "photo_accepted", count=count, max=MAX_PHOTOS, min=MIN_PHOTOS)
        )
    return PHOTOS


async def photos_done(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Finish the photos: show the summary, or say how many are still missing."""
    if update.callback_query:
        await update.callback_query.answer()
    draft = _draft(context)
    if draft is None:
        return await ask_name(update, context)
    count = len(draft.photos)
    if count < MIN_PHOTOS:
        await _say(
            update,
            t(lang(update), "too_few", min=MIN_PHOTOS, count=count, missing=MIN_PHOTOS - count),
        )
        return PHOTOS
    return await _summary(update, draft)


async def _summary(update: Update, draft: Draft) -> int:
    language = lang(update)
    await _say(
        update,
        t(
            language,
            "summary",
            name=draft.name,
            kind=kind_name(language, draft.training_type),
            count=len(draft.photos),
            minutes=training.EXPECTED_MINUTES.get(draft.training_type, 30),
        ),
        reply_markup=keyboards.summary(language),
    )
    return CONFIRM


async def photos_hint(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Remind the person what the bot is waiting for."""
    draft = _draft(context)
    count = len(draft.photos) if draft else 0
    await _say(update, t(lang(update), "photos_hint", count=count, max=MAX_PHOTOS))
    return PHOTOS


async def confirm_hint(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Point at the summary's buttons."""
    await _say(update, t(lang(update), "confirm_hint"))
    return CONFIRM


async def start_training(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Create the avatar (taking the person's one training slot) and launch it in the background."""
    query = update.callback_query
    assert query is not None and update.effective_user is not None
    await query.answer()
    draft = _draft(context)
    if draft is None or len(draft.photos) < MIN_PHOTOS:
        return await photos_done(update, context)
    language = lang(update)
    svc = services(context)
    try:
        avatar = await training.create(svc, update.effective_user, draft)
    except training.AlreadyTraining as exc:
        key = "already_training" if exc.name else "already_training_unnamed"
        await _say(update, t(language, key, name=exc.name or ""))
        # The draft stays: the same button works once the other training has ended.
        return CONFIRM
    _forget(context)
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
    if update.callback_query:
        await update.callback_query.answer()
    _forget(context)
    await _say(update, t(lang(update), "cancelled"))
    return END


async def restart(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """/start in the middle: drop the draft and show the menu."""
    _forget(context)
    await show_menu(update, context)
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
            ],
            allow_reentry=True,
            name="create_avatar",
        )
