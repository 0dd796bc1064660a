"""What a generation asks FAL for, and how its answer is read: styles, prompts, output, captions."""

from __future__ import annotations

import html
from typing import Any

import pytest

from service.bot.styles import (
    MAX_CAPTION_CHARS,
    MAX_PROMPT_CHARS,
    STYLES,
    PromptProblem,
    caption,
    clean_prompt,
    compose,
)
from service.fal.flux_lora import Frame, OutputError, arguments, read_output

TRIGGER = "ohwx_ab12cd"
LORA = "https://v3.fal.media/files/lion/abc_pytorch_lora_weights.safetensors"


def test_the_body_carries_the_lora_and_asks_for_jpeg_with_the_safety_checker() -> None:
    body = arguments("a prompt", LORA, scale=1.0, frame=Frame.PORTRAIT, num_images=4)
    assert body == {
        "prompt": "a prompt",
        "loras": [{"path": LORA, "scale": 1.0}],
        "image_size": "portrait_4_3",
        "num_images": 4,
        "output_format": "jpeg",
        "enable_safety_checker": True,
    }
    assert "sync_mode" not in body


@pytest.mark.parametrize("count", [0, 5, -1])
def test_one_to_four_images_only(count: int) -> None:
    with pytest.raises(ValueError, match="num_images"):
        arguments("p", LORA, scale=1.0, frame=Frame.SQUARE, num_images=count)


@pytest.mark.parametrize("style", STYLES, ids=[s.key for s in STYLES])
def test_every_style_prompt_carries_the_trigger_word(style: Any) -> None:
    prompt = compose(TRIGGER, style_key=style.key)
    assert TRIGGER in prompt and "{" not in prompt
    assert style.label("ru") and style.label("en") and style.label("ru") != style.label("en")


def test_an_own_prompt_gets_the_trigger_word_unless_it_has_it() -> None:
    assert compose(TRIGGER, own="me as an astronaut") == f"photo of {TRIGGER}, me as an astronaut"
    assert compose(TRIGGER, own=f"{TRIGGER.upper()} on a horse") == f"{TRIGGER.upper()} on a horse"
    # A longer word that merely contains the trigger does not count.
    assert compose(TRIGGER, own=f"x{TRIGGER}y").startswith(f"photo of {TRIGGER}, ")
    with pytest.raises(ValueError, match="unknown style"):
        compose(TRIGGER, style_key="nope")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("   ", "prompt_empty"),
        ("x" * (MAX_PROMPT_CHARS + 1), "prompt_too_long"),
        ("a\x00b", "prompt_control"),
        ("left\u202eright", "prompt_control"),
        ("zero\u200bwidth", "prompt_control"),
    ],
)
def test_bad_own_prompts_are_refused(text: str, problem: str) -> None:
    with pytest.raises(PromptProblem) as refused:
        clean_prompt(text)
    assert str(refused.value) == problem


def test_a_good_own_prompt_is_folded() -> None:
    assert clean_prompt("  in   a\n\tcafé  ") == "in a café"
    assert clean_prompt("x" * MAX_PROMPT_CHARS) == "x" * MAX_PROMPT_CHARS


def output(images: int, flags: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "images": [
            {
                "url": f"https://fal.media/{n}.jpg",
                "width": 896,
                "height": 1152,
                "content_type": "image/jpeg",
            }
            for n in range(images)
        ],
        "seed": 2**60 + 7,
        "prompt": "p",
        **extra,
    }
    if flags is not None:
        body["has_nsfw_concepts"] = flags
    return body


def test_the_output_is_read_with_its_safety_flags_and_a_big_seed() -> None:
    result = read_output(output(4, [False, True, False, False]))
    assert [image.url for image in result.deliverable] == [
        "https://fal.media/0.jpg",
        "https://fal.media/2.jpg",
        "https://fal.media/3.jpg",
    ]
    assert result.held_back == 1
    assert result.seed == 2**60 + 7
    assert result.images[0].width == 896 and result.images[0].content_type == "image/jpeg"


def test_a_missing_or_unreadable_flag_holds_the_image_back() -> None:
    result = read_output(output(3, [False, None]))
    assert [image.nsfw for image in result.images] == [False, True, True]
    assert read_output(output(2)).held_back == 0  # no checker report at all


@pytest.mark.parametrize(
    "bad",
    [{}, {"images": []}, {"images": "x"}, {"images": [{"width": 1}]}, {"images": [{"url": ""}]}],
)
def test_an_output_without_images_is_an_error(bad: dict[str, Any]) -> None:
    with pytest.raises(OutputError):
        read_output(bad)


def test_a_caption_is_escaped_and_fits_telegrams_limit() -> None:
    assert caption("<b>me</b> & co", 0, "en") == "&lt;b&gt;me&lt;/b&gt; &amp; co"
    long = caption("&" * 2000, 2, "ru")
    shown = html.unescape(long)
    assert len(shown) == MAX_CAPTION_CHARS
    assert shown.endswith("Скрыто фильтром безопасности: 2.")
    assert "held back" in caption("p", 1, "en")
