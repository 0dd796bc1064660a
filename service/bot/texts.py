"""What the bot says: Russian by default, English for English-language Telegram users.

Every text is HTML (the bot's parse mode). `t()` escapes every value it fills in, so a name
like `<b>Ann_2</b> & Co` shows literally and can never break the markup; button labels are
plain text and go through `label()` instead, which does not escape.
"""

from __future__ import annotations

import html
from typing import Any

from service.jobs.outcomes import language, shorten

Lang = str

_RU: dict[str, str] = {
    "start": "👋 Здравствуйте, {name}!\n\n"
    "Я создаю персональные ИИ-аватары. Пришлите мне от {min} до {max} фотографий — "
    "я обучу на них модель FLUX LoRA, и аватар сможет рисовать вас в любых образах.\n\n"
    "Что делаем?",
    "help": "<b>Как это работает</b>\n\n"
    "1. Нажмите «Создать аватар» (или /create) и придумайте ему имя.\n"
    "2. Выберите тип: <b>портрет</b> — учится на вашем лице, <b>стиль</b> — "
    "на художественном стиле.\n"
    "3. Пришлите от {min} до {max} фотографий — как фото или как файлы (JPEG, PNG, WebP), "
    "не меньше {px} пикселей по короткой стороне.\n"
    "4. Нажмите «Начать обучение». Обычно это занимает 15–30 минут; я напишу, "
    "когда аватар будет готов.\n\n"
    "Одновременно обучается только один аватар.\n"
    "/avatars — ваши аватары, /cancel — прервать создание.",
    "menu_hint": "Выберите действие в меню: /start",
    "ask_name": "Как назовём аватар? Пришлите имя — до {max} символов.",
    "name_empty": "Имя не может быть пустым. Пришлите имя аватара.",
    "name_too_long": "Слишком длинное имя: {length} символов, можно не больше {max}. "
    "Пришлите имя покороче.",
    "name_control": "В имени есть переводы строк, невидимые или управляющие символы. "
    "Пришлите имя обычным текстом в одну строку.",
    "name_not_text": "Пришлите имя аватара текстом.",
    "ask_type": "Аватар <b>{name}</b>. Какой тип выбираем?\n\n"
    "<b>Портрет</b> — учится на вашем лице: фотографии одного человека.\n"
    "<b>Стиль</b> — учится на художественном стиле: изображения в одном стиле.",
    "type_hint": "Выберите тип кнопкой под сообщением выше или отправьте /cancel.",
    "type_chosen": "Аватар <b>{name}</b>, тип: {kind}.",
    "ask_photos": "Теперь пришлите от {min} до {max} фотографий — можно альбомом, "
    "как фото или как файлы (JPEG, PNG, WebP), не меньше {px} пикселей "
    "по короткой стороне.\n\n"
    "Когда закончите, нажмите «Готово» или отправьте /done. Отменить — /cancel.",
    "photo_accepted": "✅ Фото {count} принято. Всего {count} из {max}, нужно не меньше {min}.",
    "photo_accepted_enough": "✅ Фото {count} принято. Всего {count} из {max}: "
    "можно прислать ещё или нажать «Готово».",
    "photo_duplicate": "Это фото уже есть среди присланных — пропускаю.",
    "photo_too_small": "Фото слишком маленькое: {width}×{height}. Нужно не меньше {px} "
    "пикселей по короткой стороне.",
    "not_image": "Это не изображение. Пришлите фотографию или файл JPEG, PNG или WebP.",
    "file_too_big": "Файл слишком большой: {size} МБ, можно не больше {limit} МБ.",
    "too_many": "Уже {max} фотографий — это максимум. Нажмите «Начать обучение» "
    "или отправьте /cancel.",
    "total_too_big": "Все файлы вместе больше {limit} МБ. Пришлите остальные "
    "как обычные фото, а не файлы.",
    "too_few": "Нужно не меньше {min} фотографий, сейчас {count}. Пришлите ещё {missing}.",
    "photos_hint": "Жду фотографии: сейчас {count} из {max}. Когда закончите — /done, "
    "отменить — /cancel.",
    "confirm_hint": "Нажмите «Начать обучение» под сводкой или отправьте /cancel.",
    "summary": "<b>Проверим</b>\n\nИмя: <b>{name}</b>\nТип: {kind}\nФотографий: {count}\n\n"
    "Начинаем обучение? Оно займёт около {minutes} минут.",
    "cancelled": "Создание аватара отменено, ничего не сохранено.",
    "nothing_to_cancel": "Сейчас нечего отменять.",
    "preparing": "⏳ Загружаю фотографии и запускаю обучение аватара <b>{name}</b>…",
    "started": "🚀 Обучение аватара <b>{name}</b> началось. Обычно это занимает около "
    "{minutes} минут — я напишу, как только всё будет готово.",
    "already_training": "Сейчас уже обучается аватар <b>{name}</b>. Одновременно можно "
    "обучать только один — дождитесь, пока он будет готов.",
    "already_training_unnamed": "Сейчас у вас уже идёт обучение. Одновременно можно "
    "обучать только один аватар — дождитесь, пока он будет готов.",
    "fal_auth": "Сервис обучения сейчас не принимает наши запросы — это ошибка настройки "
    "на нашей стороне, мы уже разбираемся.",
    "fal_rejected": "Сервис обучения отклонил запрос: {detail}",
    "fal_unavailable": "Сервис обучения сейчас недоступен.",
    "photos_unavailable": "Не удалось загрузить фотографии из Telegram.",
    "kept_draft": "Аватар <b>{name}</b> сохранён как черновик — попробуйте ещё раз чуть позже.",
    "photos_gone": "Фотографии этого черновика больше недоступны. Создайте аватар заново: /create",
    "discarded": "Черновик <b>{name}</b> удалён.",
    "avatars_empty": "У вас пока нет аватаров. Создать: /create",
    "avatars_title": "<b>Ваши аватары</b>",
    "avatar_line": "{icon} <b>{name}</b> — {kind}, {status}, {age}",
    "avatar_progress": " ({progress}%)",
    "avatar_trigger": "\n      слово-триггер: <code>{trigger}</code>",
    "avatar_error": "\n      причина: {error}",
    "refresh_queue": "Аватар <b>{name}</b> ждёт в очереди на обучение.",
    "refresh_progress": "Аватар <b>{name}</b> обучается, осталось недолго.",
    "refresh_done": "Обучение аватара <b>{name}</b> закончилось — сообщение с результатом "
    "придёт через несколько секунд.",
    "refresh_failed": "Не удалось узнать, как идёт обучение. {reason} Попробуйте позже.",
    "not_training": "Аватар <b>{name}</b> сейчас не обучается ({status}).",
    "not_draft": "Аватар <b>{name}</b> уже не черновик ({status}).",
    "not_submitted": "Обучение аватара <b>{name}</b> ещё запускается. Попробуйте через минуту.",
    "cancel_requested": "Отменяю обучение аватара <b>{name}</b>…",
    "cancel_too_late": "Обучение аватара <b>{name}</b> уже закончилось — результат придёт "
    "отдельным сообщением.",
    "cancel_signalled": "Обучение аватара <b>{name}</b> уже идёт: FAL получил просьбу "
    "остановиться, но может и закончить. Я напишу, чем всё кончится — если аватар всё же "
    "обучится, он будет вашим.",
    "cancel_unknown": "FAL не знает обучение аватара <b>{name}</b> — оно уже не продолжится, "
    "отмечаю его отменённым.",
    "cancel_unknown_running": "FAL не нашёл, что отменять, но обучение аватара <b>{name}</b> "
    "ещё идёт. Я напишу, когда оно закончится.",
    "generate_soon": "Создание изображений скоро появится прямо в боте. "
    "Слово-триггер аватара <b>{name}</b>: <code>{trigger}</code>.",
    "not_found": "Этот аватар не найден.",
    "outdated": "Эта кнопка устарела.",
    "photo_outside": "Чтобы создать аватар, нажмите «Создать аватар» или отправьте /create.",
    "apology": "😔 Извините, что-то пошло не так. Попробуйте ещё раз чуть позже.",
    # Button labels (plain text).
    "btn_create": "✨ Создать аватар",
    "btn_avatars": "🗂 Мои аватары",
    "btn_help": "❓ Помощь",
    "btn_portrait": "👤 Портрет",
    "btn_style": "🎨 Стиль",
    "btn_done": "Готово",
    "btn_start": "🚀 Начать обучение",
    "btn_cancel": "Отмена",
    "btn_retry": "🔁 Повторить «{name}»",
    "btn_discard": "🗑 Удалить «{name}»",
    "btn_refresh": "🔄 Обновить «{name}»",
    "btn_stop": "✖️ Отменить «{name}»",
    # Words.
    "type_portrait": "портрет",
    "type_style": "стиль",
    "status_draft": "черновик",
    "status_training": "обучается",
    "status_completed": "готов",
    "status_failed": "ошибка",
    "status_cancelled": "отменён",
    "status_cancelling": "отменяется",
    "age_now": "только что",
    "age_minutes": "{n} мин назад",
    "age_hours": "{n} ч назад",
    "age_days": "{n} дн назад",
}

_EN: dict[str, str] = {
    "start": "👋 Hello, {name}!\n\n"
    "I create personal AI avatars. Send me {min} to {max} photos and I will train a "
    "FLUX LoRA model on them, so your avatar can picture you in any setting.\n\n"
    "What shall we do?",
    "help": "<b>How it works</b>\n\n"
    "1. Press “Create avatar” (or /create) and give it a name.\n"
    "2. Choose a type: <b>portrait</b> learns your face, <b>style</b> learns an art style.\n"
    "3. Send {min} to {max} photos, as photos or as files (JPEG, PNG, WebP), at least "
    "{px} pixels on the short side.\n"
    "4. Press “Start training”. It usually takes 15–30 minutes; I will write when your "
    "avatar is ready.\n\n"
    "One avatar trains at a time.\n"
    "/avatars lists your avatars, /cancel stops creating one.",
    "menu_hint": "Choose an action from the menu: /start",
    "ask_name": "What shall we call the avatar? Send a name of up to {max} characters.",
    "name_empty": "The name cannot be empty. Send the avatar's name.",
    "name_too_long": "That name is {length} characters long; at most {max} are allowed. "
    "Send a shorter one.",
    "name_control": "The name contains line breaks, invisible or control characters. "
    "Send it as plain text on one line.",
    "name_not_text": "Send the avatar's name as text.",
    "ask_type": "Avatar <b>{name}</b>. Which type?\n\n"
    "<b>Portrait</b> learns your face: photos of one person.\n"
    "<b>Style</b> learns an art style: images in one style.",
    "type_hint": "Choose the type with a button under the message above, or send /cancel.",
    "type_chosen": "Avatar <b>{name}</b>, type: {kind}.",
    "ask_photos": "Now send {min} to {max} photos — an album is fine, as photos or as "
    "files (JPEG, PNG, WebP), at least {px} pixels on the short side.\n\n"
    "When you are done, press “Done” or send /done. To cancel, send /cancel.",
    "photo_accepted": "✅ Photo {count} accepted. {count} of {max} so far, at least {min} needed.",
    "photo_accepted_enough": "✅ Photo {count} accepted. {count} of {max} so far: send "
    "more or press “Done”.",
    "photo_duplicate": "You already sent this photo — skipping it.",
    "photo_too_small": "This photo is too small: {width}×{height}. At least {px} pixels "
    "on the short side are needed.",
    "not_image": "This is not an image. Send a photo, or a JPEG, PNG or WebP file.",
    "file_too_big": "This file is too big: {size} MB; at most {limit} MB are allowed.",
    "too_many": "That makes {max} photos, the maximum. Press “Start training” or send /cancel.",
    "total_too_big": "All files together exceed {limit} MB. Send the rest as ordinary "
    "photos rather than files.",
    "too_few": "At least {min} photos are needed; you have sent {count}. Send {missing} more.",
    "photos_hint": "Waiting for photos: {count} of {max} so far. Send /done when you are "
    "done, /cancel to cancel.",
    "confirm_hint": "Press “Start training” under the summary, or send /cancel.",
    "summary": "<b>Let's check</b>\n\nName: <b>{name}</b>\nType: {kind}\nPhotos: {count}\n\n"
    "Start training? It takes about {minutes} minutes.",
    "cancelled": "Avatar creation cancelled; nothing was kept.",
    "nothing_to_cancel": "There is nothing to cancel.",
    "preparing": "⏳ Fetching the photos and starting the training of <b>{name}</b>…",
    "started": "🚀 Training of <b>{name}</b> has started. It usually takes about {minutes} "
    "minutes — I will write as soon as it is ready.",
    "already_training": "Your avatar <b>{name}</b> is training right now. Only one avatar "
    "trains at a time — please wait until it is ready.",
    "already_training_unnamed": "One of your avatars is training right now. Only one "
    "avatar trains at a time — please wait until it is ready.",
    "fal_auth": "The training service is not accepting our requests — a configuration "
    "problem on our side, and we are on it.",
    "fal_rejected": "The training service refused the request: {detail}",
    "fal_unavailable": "The training service is unavailable right now.",
    "photos_unavailable": "The photos could not be fetched from Telegram.",
    "kept_draft": "Avatar <b>{name}</b> is kept as a draft — please try again a little later.",
    "photos_gone": "This draft's photos are no longer available. Please create the avatar "
    "again: /create",
    "discarded": "Draft <b>{name}</b> deleted.",
    "avatars_empty": "You have no avatars yet. Create one: /create",
    "avatars_title": "<b>Your avatars</b>",
    "avatar_line": "{icon} <b>{name}</b> — {kind}, {status}, {age}",
    "avatar_progress": " ({progress}%)",
    "avatar_trigger": "\n      trigger word: <code>{trigger}</code>",
    "avatar_error": "\n      reason: {error}",
    "refresh_queue": "Avatar <b>{name}</b> is waiting in the training queue.",
    "refresh_progress": "Avatar <b>{name}</b> is training; it will not be long now.",
    "refresh_done": "Training of <b>{name}</b> has finished — the result will arrive in a "
    "few seconds.",
    "refresh_failed": "Could not find out how the training is going. {reason} Please try "
    "again later.",
    "not_training": "Avatar <b>{name}</b> is not training ({status}).",
    "not_draft": "Avatar <b>{name}</b> is no longer a draft ({status}).",
    "not_submitted": "Training of <b>{name}</b> is still starting. Please try again in a minute.",
    "cancel_requested": "Cancelling the training of <b>{name}</b>…",
    "cancel_too_late": "Training of <b>{name}</b> has already finished — the result will "
    "arrive in a separate message.",
    "cancel_signalled": "Training of <b>{name}</b> is already running: FAL was asked to stop, "
    "but it may still finish. I will tell you how it ends — if the avatar is trained after "
    "all, it is yours.",
    "cancel_unknown": "FAL does not know the training of <b>{name}</b>: it will not go on, so "
    "I mark it cancelled.",
    "cancel_unknown_running": "FAL found nothing to cancel, but the training of <b>{name}</b> "
    "is still running. I will tell you when it ends.",
    "generate_soon": "Image generation is coming to the bot soon. The trigger word of "
    "<b>{name}</b> is <code>{trigger}</code>.",
    "not_found": "This avatar was not found.",
    "outdated": "This button is outdated.",
    "photo_outside": "To create an avatar, press “Create avatar” or send /create.",
    "apology": "😔 Sorry, something went wrong. Please try again a little later.",
    "btn_create": "✨ Create avatar",
    "btn_avatars": "🗂 My avatars",
    "btn_help": "❓ Help",
    "btn_portrait": "👤 Portrait",
    "btn_style": "🎨 Style",
    "btn_done": "Done",
    "btn_start": "🚀 Start training",
    "btn_cancel": "Cancel",
    "btn_retry": "🔁 Retry “{name}”",
    "btn_discard": "🗑 Delete “{name}”",
    "btn_refresh": "🔄 Refresh “{name}”",
    "btn_stop": "✖️ Cancel “{name}”",
    "type_portrait": "portrait",
    "type_style": "style",
    "status_draft": "draft",
    "status_training": "training",
    "status_completed": "ready",
    "status_failed": "failed",
    "status_cancelled": "cancelled",
    "status_cancelling": "cancelling",
    "age_now": "just now",
    "age_minutes": "{n} min ago",
    "age_hours": "{n} h ago",
    "age_days": "{n} d ago",
}

_TEXTS = {"ru": _RU, "en": _EN}
# Button labels carry names too; Telegram shows about 30 characters of a button.
BUTTON_NAME_CHARS = 20


def lang_of(language_code: str | None) -> Lang:
    return language(language_code)


def t(lang: Lang, key: str, **values: Any) -> str:
    """The HTML text `key` in `lang`, with every value HTML-escaped."""
    escaped = {name: html.escape(str(value), quote=False) for name, value in values.items()}
    return _TEXTS[lang][key].format(**escaped)


def label(lang: Lang, key: str, name: str | None = None) -> str:
    """A button label (plain text: Telegram does not parse markup in buttons)."""
    text = _TEXTS[lang][key]
    return text.format(name=shorten(name, BUTTON_NAME_CHARS)) if name is not None else text


def word(lang: Lang, key: str) -> str:
    return _TEXTS[lang][key]


def kind_name(lang: Lang, training_type: str) -> str:
    return _TEXTS[lang].get(f"type_{training_type}", training_type)


def status_name(lang: Lang, status: str) -> str:
    return _TEXTS[lang].get(f"status_{status}", status)


def age(lang: Lang, seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return word(lang, "age_now")
    if minutes < 60:
        return word(lang, "age_minutes").format(n=minutes)
    if minutes < 48 * 60:
        return word(lang, "age_hours").format(n=minutes // 60)
    return word(lang, "age_days").format(n=minutes // (24 * 60))
