"""The photo step of creating an avatar: take photos and image files, count them, sum up."""

from __future__ import annotations

from telegram import Update
from telegram.ext import ContextTypes

from service.bot import keyboards, training
from service.bot.drafts import CONFIRM, PHOTOS, ask_name, draft_of
from service.bot.photos import (
    MAX_FILE_BYTES,
    MAX_PHOTOS,
    MAX_TOTAL_BYTES,
    MIN_PHOTOS,
    MIN_SIDE,
    Draft,
    Photo,
    Refusal,
    check_before_download,
    check_size,
    image_info,
)
from service.bot.services import answer_tap, lang, say
from service.bot.texts import kind_name, t


async def receive_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    """Take a photo (Telegram gives its size) or refuse it with the reason."""
    message = update.message
    assert message is not None and message.photo
    draft = draft_of(context)
    if draft is None:
        return await ask_name(update, context)
    largest = max(message.photo, key=lambda size: size.width * size.height)
    refusal = check_before_download(draft, largest.file_unique_id, largest.file_size)
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
    draft = draft_of(context)
    if draft is None:
        return await ask_name(update, context)
    document = message.document
    refusal = check_before_download(draft, document.file_unique_id, document.file_size)
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
            refusal = check_before_download(draft, document.file_unique_id, size)
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
    await answer_tap(update)
    draft = draft_of(context)
    if draft is None:
        return await ask_name(update, context)
    count = len(draft.photos)
    if count < MIN_PHOTOS:
        await say(
            update,
            t(lang(update), "too_few", min=MIN_PHOTOS, count=count, missing=MIN_PHOTOS - count),
        )
        return PHOTOS
    return await _summary(update, draft)


async def _summary(update: Update, draft: Draft) -> int:
    language = lang(update)
    await say(
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
    draft = draft_of(context)
    count = len(draft.photos) if draft else 0
    await say(update, t(lang(update), "photos_hint", count=count, max=MAX_PHOTOS))
    return PHOTOS
