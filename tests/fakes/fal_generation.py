"""FAL's `fal-ai/flux-lora` app for the local FAL queue: what it accepts and what it answers.

The queue machinery, the signer and the callbacks are the queue's (tests/fakes/fal_queue.py);
this module only knows the app: its input checks (`loras[0].path` must be a LoRA the queue
knows, from a finished training or `FalQueueServer.add_lora`, and the prompt must carry that
LoRA's trigger word, as the real LoRA only answers to it) and its output, whose images are
real JPEGs served by the queue under `/media/` without a key, as FAL's CDN serves them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tests.support.images import jpeg

FLUX_LORA = "fal-ai/flux-lora"
# flux-lora's named sizes (width, height), as it reports them in the output.
IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}

JsonDict = dict[str, Any]


def _invalid(field: str, message: str) -> tuple[int, JsonDict]:
    return 422, {"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}


def refusal(arguments: Mapping[str, Any], loras: Mapping[str, str]) -> tuple[int, JsonDict] | None:
    """FAL's 422 for arguments flux-lora would not run as asked, or None when they are fine.

    `loras` maps every LoRA URL the queue knows to its trigger word.
    """
    prompt = arguments.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _invalid("prompt", "field required")
    given = arguments.get("loras")
    if not isinstance(given, list) or not given or not isinstance(given[0], Mapping):
        return _invalid("loras", "the avatar's LoRA is missing")
    path = given[0].get("path")
    trigger = loras.get(path) if isinstance(path, str) else None
    if trigger is None:
        return _invalid("loras.0.path", f"no LoRA weights at {path!r}")
    if not isinstance(given[0].get("scale", 1.0), int | float):
        return _invalid("loras.0.scale", "value is not a valid float")
    if not re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", prompt, flags=re.IGNORECASE):
        return _invalid("prompt", f"the prompt lacks the LoRA's trigger word {trigger!r}")
    count = arguments.get("num_images", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 4:
        return _invalid("num_images", "ensure this value is between 1 and 4")
    if arguments.get("image_size", "landscape_4_3") not in IMAGE_SIZES:
        return _invalid("image_size", "not a known image size")
    if arguments.get("output_format", "jpeg") not in FORMATS:
        return _invalid("output_format", "unexpected value; permitted: 'jpeg', 'png'")
    return None


def generate(
    media_url: str,
    request_id: str,
    arguments: Mapping[str, Any],
    *,
    nsfw: Sequence[bool] | None = None,
    seed: int = 2**53 + 1,
    sizes: Sequence[int] | None = None,
) -> tuple[JsonDict, dict[str, bytes]]:
    """flux-lora's output for an accepted request, and its image files by path.

    `nsfw` gives the safety checker's flag per image (default: all clean); `sizes` at least
    how many bytes each image has (JPEG comment segments, for a test of Telegram's 5 MB limit).
    The default seed is beyond 2**53, as FAL's can be.
    """
    count = int(arguments.get("num_images", 1))
    flags = list(nsfw) if nsfw is not None else [False] * count
    assert len(flags) == count, f"{count} images asked, {len(flags)} flags given"
    width, height = IMAGE_SIZES[str(arguments.get("image_size", "landscape_4_3"))]
    # The bytes are a real JPEG of a small size: the reported size is what FAL says it drew.
    files: dict[str, bytes] = {}
    images = []
    for index in range(count):
        data = jpeg(64, 48, seed=index + 1)
        if sizes is not None:
            data = _padded(data, sizes[index])
        path = f"/media/{request_id}/{index}.jpeg"
        files[path] = data
        images.append(
            {
                "url": f"{media_url}{path}",
                "width": width,
                "height": height,
                "content_type": "image/jpeg",
            }
        )
    output = {
        "images": images,
        "timings": {"inference": 1.25},
        "seed": seed,
        "has_nsfw_concepts": flags,
        "prompt": arguments.get("prompt"),
    }
    return output, files


def _padded(data: bytes, size: int) -> bytes:
    """The JPEG grown to at least `size` bytes by COM segments after its SOI (still valid)."""
    head, rest = data[:2], data[2:]
    missing, comments = size - len(data), b""
    while missing > 0:
        chunk = min(65533, max(missing - 4, 0))
        comments += b"\xff\xfe" + (chunk + 2).to_bytes(2, "big") + b"\x00" * chunk
        missing = size - len(data) - len(comments)
    return head + comments + rest
