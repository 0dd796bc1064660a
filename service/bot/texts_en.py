"""What the bot says in English: every text by key, HTML with placeholders for t()."""

from __future__ import annotations

EN: dict[str, str] = {
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
    "One avatar trains at a time. Once it is ready, /generate makes photos with it: a "
    "style or your own prompt, a frame, 1 to 4 photos ({per_day} a day).\n"
    "/avatars lists your avatars, /photos your photos, /cancel stops what you are making.\n\n"
    "Commands: /start the menu, /create a new avatar, /done the photos are sent, "
    "/generate make photos, /avatars, /photos, /cancel, /help this help.",
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
    "photo_duplicate": "You already sent this photo — skipping it. Send a different one.",
    "photo_too_small": "This photo is too small: {width}×{height}. At least {px} pixels "
    "on the short side are needed — send a larger one, or the original as a file.",
    "not_image": "This is not an image. Send a photo, or a JPEG, PNG or WebP file.",
    "file_too_big": "This file is too big: {size} MB; at most {limit} MB are allowed. "
    "Send it as an ordinary photo (Telegram makes it smaller) or a smaller file.",
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
    "generation_timed_out": "⏳ No reply for {minutes} min, so I set aside the photos you were "
    "choosing. Start again with /generate whenever you like.",
    "conversation_timed_out": "⏳ No reply for {minutes} min, so I stopped creating the avatar "
    "(the photos sent so far are not kept). Start again with /create whenever you like.",
    "nothing_to_cancel": "There is nothing to cancel. The menu: /start",
    "preparing": "⏳ Fetching the photos and starting the training of <b>{name}</b>…",
    "started": "🚀 Training of <b>{name}</b> has started. It usually takes about {minutes} "
    "minutes — I will write as soon as it is ready.",
    "already_training": "Your avatar <b>{name}</b> is training right now. Only one avatar "
    "trains at a time — please wait until it is ready (/avatars shows how it is going).",
    "already_training_unnamed": "One of your avatars is training right now. Only one "
    "avatar trains at a time — please wait until it is ready (/avatars shows how it is going).",
    "fal_auth": "The training service is not accepting our requests — a configuration "
    "problem on our side, and we are on it.",
    "fal_rejected": "The training service refused the request: {detail}",
    "fal_unavailable": "The training service is unavailable right now.",
    "photos_unavailable": "The photos could not be fetched from Telegram.",
    "kept_draft": "Avatar <b>{name}</b> is kept as a draft — please try again a little later.",
    "unconfirmed": "The training service did not confirm that it received <b>{name}</b>. "
    "If it did, the training goes on and I will write when it is ready. If nothing comes "
    "within {minutes} minutes, I will offer to start it again.",
    "unconfirmed_expired": "The training service never confirmed <b>{name}</b>, and no result "
    "has come. It is back among your drafts — you can start it again.",
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
    "not_found": "This avatar was not found. Your avatars: /avatars",
    "outdated": "This button is outdated. The menu: /start",
    "photo_outside": "To create an avatar, press “Create avatar” or send /create.",
    "apology": "😔 Sorry, something went wrong. Please try again a little later.",
    # Generation (service/bot/generate.py, gallery.py).
    "gen_no_avatars": "You have no ready avatar yet. Create one: /create",
    "gen_choose_avatar": "Which avatar shall make the photos?",
    "gen_ask_style": "Photos with <b>{name}</b>. Choose a style, or write a prompt of your "
    "own.\n\nLeft today: {left} of {per_day} photos.",
    "gen_ask_prompt": "Describe the photo in a few words, up to {max} characters — for "
    "example: <i>in a leather jacket on a rainy street at night</i>. I add the avatar to it "
    "myself. To cancel, send /cancel.",
    "prompt_empty": "The prompt cannot be empty. Describe the photo in a few words.",
    "prompt_too_long": "That prompt is {length} characters long; at most {max} are allowed. "
    "Send a shorter one.",
    "prompt_control": "The prompt contains invisible or control characters. Send it as plain text.",
    "gen_prompt_not_text": "Send the prompt as text, or /cancel.",
    "gen_ask_frame": "<b>{label}</b>\n\nWhich frame?",
    "gen_ask_count": "<b>{label}</b>, {frame}.\n\nHow many photos? Left today: {left}.",
    "gen_queued": "🎨 On its way: {photos} with <b>{name}</b> — {label}. It usually takes "
    "a minute; they will arrive here.\n\nLeft today: {left} of {per_day} photos.",
    "gen_too_many_running": "Generations of yours still being made: {running}, and at most "
    "{limit} can run at a time. Please wait until one of them arrives.",
    "gen_over_quota": "Not enough photos left today: you asked for {photos}, {left} of "
    "{per_day} are left.",
    "gen_fewer": "Choose {left} or fewer with the buttons above.",
    "gen_free_in": "Enough will be free again in {wait}.",
    "gen_avatar_not_ready": "Avatar <b>{name}</b> is not ready ({status}): photos can only "
    "be made with a trained avatar.",
    "gen_fal_auth": "The image service is not accepting our requests — a configuration "
    "problem on our side, and we are on it.",
    "gen_fal_rejected": "The image service refused the request: {detail}",
    "gen_fal_unavailable": "The image service is unavailable right now.",
    "gen_not_counted": "Nothing was counted against today's photos. Please try again in a "
    "few minutes.",
    "gen_outdated": "This choice is outdated. Start again: /generate",
    "gen_not_found": "These photos were not found.",
    "gen_cancelled": "Generation cancelled.",
    "create_left": "Avatar creation cancelled; nothing was kept.",
    "gen_mine_empty": "You have not made any photos yet: /generate",
    "gen_mine_title": "<b>Your photos</b>",
    "gen_line": "{number}. {icon} {label} — {photos}, {frame}, {status}, {age}",
    "gen_line_error": "\n      reason: {error}",
    "gen_send_gone": "These photos can no longer be sent again: Telegram has no copy of "
    "them on record.",
    "gen_status_submitting": "starting",
    "gen_status_queued": "queued",
    "gen_status_running": "in progress",
    "gen_status_completed": "done",
    "gen_status_failed": "failed",
    "btn_gen_own": "✍️ My own prompt",
    "btn_gen_again": "🔁 Try again",
    "btn_gen_mine": "🖼 My photos",
    "btn_gen_send": "📤 Send again #{name}",
    "btn_generate": "🎨 Photos with “{name}”",
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
