"""What a person can ask a photo of: curated styles, a prompt of their own, frames, captions."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from service.fal.flux_lora import Frame

# The caption is rendered by the webhook service with the outcome (the jobs may not import the
# bot): one helper for both.
from service.jobs.generation_texts import MAX_CAPTION_CHARS as MAX_CAPTION_CHARS
from service.jobs.generation_texts import caption as caption

MAX_PROMPT_CHARS = 500


@dataclass(frozen=True)
class Style:
    key: str  # callback data and storage: short, ASCII
    ru: str
    en: str
    # English: the FLUX models follow English prompts best. `{trigger}` is the avatar's word.
    prompt: str

    def label(self, language: str) -> str:
        return self.en if language == "en" else self.ru


STYLES: tuple[Style, ...] = (
    Style(
        "studio",
        "Студийный портрет",
        "Studio portrait",
        "professional studio portrait photo of {trigger}, soft key light, neutral grey "
        "backdrop, 85mm lens, sharp focus, natural skin texture",
    ),
    Style(
        "business",
        "Деловой стиль",
        "Business",
        "corporate headshot of {trigger} in a tailored suit, modern office background, "
        "confident expression, soft daylight, shallow depth of field",
    ),
    Style(
        "outdoors",
        "На природе",
        "Outdoors",
        "candid photo of {trigger} outdoors in a green park at golden hour, warm sunlight, "
        "natural pose, bokeh background",
    ),
    Style(
        "cinematic",
        "Кино",
        "Cinematic",
        "cinematic film still of {trigger}, dramatic lighting, anamorphic lens, teal and "
        "orange color grading, 35mm film grain",
    ),
    Style(
        "city",
        "Город вечером",
        "City at night",
        "street photo of {trigger} in a city at night, neon signs, rain reflections on the "
        "pavement, moody atmosphere",
    ),
    Style(
        "art",
        "Масляная живопись",
        "Oil painting",
        "oil painting portrait of {trigger}, visible brush strokes, rich colors, classical "
        "composition, museum quality",
    ),
)
_BY_KEY = {style.key: style for style in STYLES}

FRAMES: dict[Frame, tuple[str, str]] = {
    Frame.PORTRAIT: ("Портрет (вертикально)", "Portrait"),
    Frame.SQUARE: ("Квадрат", "Square"),
    Frame.LANDSCAPE: ("Пейзаж (горизонтально)", "Landscape"),
}


def style(key: str) -> Style | None:
    return _BY_KEY.get(key)


def frame_label(frame: Frame, language: str) -> str:
    ru, en = FRAMES[frame]
    return en if language == "en" else ru


class PromptProblem(ValueError):
    """Why a prompt of the person's own cannot be used; the message is a text key."""


def clean_prompt(text: str) -> str:
    """The person's prompt, whitespace folded; PromptProblem if it is empty, too long or has
    control, invisible or bidi characters (they would reach FAL and the caption unseen)."""
    folded = " ".join(text.split())
    if not folded:
        raise PromptProblem("prompt_empty")
    if len(folded) > MAX_PROMPT_CHARS:
        raise PromptProblem("prompt_too_long")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs") for ch in folded):
        raise PromptProblem("prompt_control")
    return folded


def compose(trigger: str, *, style_key: str | None = None, own: str | None = None) -> str:
    """The prompt FAL gets: a style's, or the person's own; it always carries the trigger."""
    if style_key is not None:
        chosen = style(style_key)
        if chosen is None:
            raise ValueError(f"unknown style {style_key!r}")
        return chosen.prompt.format(trigger=trigger)
    if own is None:
        raise ValueError("a style or a prompt of one's own is needed")
    if re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", own, flags=re.IGNORECASE):
        return own
    # The LoRA only answers to its trigger word: without it FAL draws a stranger.
    return f"photo of {trigger}, {own}"
