"""FAL's `fal-ai/flux-lora` generation app: its input for one avatar, and its output read back."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_APP = "fal-ai/flux-lora"
MIN_IMAGES, MAX_IMAGES = 1, 4


class Frame(enum.StrEnum):
    """The frames a person can choose, as FAL's `image_size` names them."""

    PORTRAIT = "portrait_4_3"
    SQUARE = "square_hd"
    LANDSCAPE = "landscape_4_3"


def arguments(
    prompt: str, lora_url: str, *, scale: float, frame: Frame, num_images: int
) -> dict[str, Any]:
    """The request body for one generation with the avatar's LoRA.

    `sync_mode` stays unset: with it FAL answers with data URIs and keeps no history.
    """
    if not MIN_IMAGES <= num_images <= MAX_IMAGES:
        raise ValueError(f"num_images must be {MIN_IMAGES} to {MAX_IMAGES}, got {num_images}")
    return {
        "prompt": prompt,
        "loras": [{"path": lora_url, "scale": scale}],
        "image_size": frame.value,
        "num_images": num_images,
        "output_format": "jpeg",
        "enable_safety_checker": True,
    }


@dataclass(frozen=True)
class Image:
    url: str
    width: int | None
    height: int | None
    content_type: str | None
    # FAL's safety checker flagged it: it is held back, never sent.
    nsfw: bool


@dataclass(frozen=True)
class Result:
    images: tuple[Image, ...]
    # FAL's seed may exceed 2**53: kept as JSON gave it, never through a float.
    seed: int | None

    @property
    def deliverable(self) -> tuple[Image, ...]:
        return tuple(image for image in self.images if not image.nsfw)

    @property
    def held_back(self) -> int:
        return sum(1 for image in self.images if image.nsfw)


class OutputError(ValueError):
    """The output is not what flux-lora answers (no images, or images without a URL)."""


def read_output(output: Mapping[str, Any]) -> Result:
    """The images of a finished generation, each with its safety flag."""
    raw_images = output.get("images")
    if not isinstance(raw_images, list) or not raw_images:
        raise OutputError("the output has no images")
    reported = output.get("has_nsfw_concepts")
    flags: list[Any] | None = reported if isinstance(reported, list) else None
    images = []
    for index, raw in enumerate(raw_images):
        if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) or not raw["url"]:
            raise OutputError(f"image {index} has no url")
        images.append(
            Image(
                url=raw["url"],
                width=_int(raw.get("width")),
                height=_int(raw.get("height")),
                content_type=_text(raw.get("content_type")),
                nsfw=_flagged(flags, index) if flags is not None else False,
            )
        )
    return Result(tuple(images), _int(output.get("seed")))


def _flagged(flags: list[Any], index: int) -> bool:
    # Once the checker reported, a missing or unreadable flag is no clean bill: only an
    # explicit False lets the image through.
    return index >= len(flags) or flags[index] is not False


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
