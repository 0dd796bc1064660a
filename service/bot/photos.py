"""The photos of a new avatar: what is accepted, and the image header reader that checks it.

Pure functions only; the conversation (service/bot/create.py) feeds them what Telegram says
about a photo and, for documents, the downloaded bytes.
"""

from __future__ import annotations

import enum
import io
import struct
import unicodedata
import zipfile
from dataclasses import dataclass, field

MIN_PHOTOS = 10
MAX_PHOTOS = 20
MIN_SIDE = 512
# Per file (Telegram's bots may download up to 20 MB) and for one avatar altogether: the zip
# lives in the database until FAL has fetched it.
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_TOTAL_BYTES = 64 * 1024 * 1024
MAX_NAME_CHARS = 64

# Bidirectional overrides and isolates: they reorder the text around a name in a message.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class Refusal(enum.StrEnum):
    """Why a photo is not taken; each has a text of the same name in service/bot/texts.py."""

    DUPLICATE = "photo_duplicate"
    TOO_SMALL = "photo_too_small"
    NOT_IMAGE = "not_image"
    TOO_BIG = "file_too_big"
    TOO_MANY = "too_many"
    TOTAL_TOO_BIG = "total_too_big"


@dataclass(frozen=True)
class Photo:
    """One accepted image: where Telegram keeps it, and what we know of it."""

    file_id: str
    file_unique_id: str
    kind: str  # "photo" (compressed by Telegram) or "document" (sent as a file)
    width: int
    height: int
    size: int

    def as_json(self) -> dict[str, str]:
        return {"file_id": self.file_id, "file_unique_id": self.file_unique_id, "kind": self.kind}


@dataclass
class Draft:
    """The avatar being created, kept in the conversation until training starts."""

    name: str
    training_type: str = "portrait"
    photos: list[Photo] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(photo.size for photo in self.photos)

    def has(self, file_unique_id: str) -> bool:
        return any(photo.file_unique_id == file_unique_id for photo in self.photos)


class NameProblem(enum.StrEnum):
    EMPTY = "name_empty"
    TOO_LONG = "name_too_long"
    CONTROL = "name_control"


def clean_name(text: str) -> tuple[str, NameProblem | None]:
    """The name as it will be stored, and what is wrong with it (None: nothing)."""
    name = text.strip()
    if not name:
        return name, NameProblem.EMPTY
    if any(
        unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") or ch in _BIDI_CONTROLS for ch in name
    ):
        return name, NameProblem.CONTROL
    if len(name) > MAX_NAME_CHARS:
        return name, NameProblem.TOO_LONG
    return name, None


def check_before_download(draft: Draft, file_unique_id: str, size: int | None) -> Refusal | None:
    """What can be refused from Telegram's description alone (documents: before fetching).

    Never the MIME type or the name: a phone's file manager sends a JPEG as `scan` with
    `application/octet-stream`. Whether a file is an image is read from its own header, after
    the size limits have kept the download small.
    """
    if len(draft.photos) >= MAX_PHOTOS:
        return Refusal.TOO_MANY
    if draft.has(file_unique_id):
        return Refusal.DUPLICATE
    if size is not None and size > MAX_FILE_BYTES:
        return Refusal.TOO_BIG
    if size is not None and draft.total_bytes + size > MAX_TOTAL_BYTES:
        return Refusal.TOTAL_TOO_BIG
    return None


def check_size(width: int, height: int) -> Refusal | None:
    return Refusal.TOO_SMALL if min(width, height) < MIN_SIDE else None


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "jpeg", "png" or "webp": also the file extension in the zip
    width: int
    height: int


def image_info(data: bytes) -> ImageInfo | None:
    """Format and size from the image's own header, or None if it is not a JPEG/PNG/WebP."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
    except (struct.error, IndexError):
        return None
    return None


def _png(data: bytes) -> ImageInfo | None:
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return _sized("png", width, height)


# Start-of-frame markers carry the size: baseline, progressive, lossless, arithmetic...
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg(data: bytes) -> ImageInfo | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return _sized("jpeg", width, height)
        if length < 2:
            return None
        i += 2 + length
    return None


def _webp(data: bytes) -> ImageInfo | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return _sized("webp", width, height)
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return _sized("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return _sized("webp", width & 0x3FFF, height & 0x3FFF)
    return None


def _sized(fmt: str, width: int, height: int) -> ImageInfo | None:
    return ImageInfo(fmt, width, height) if width > 0 and height > 0 else None


def make_zip(images: list[bytes]) -> bytes:
    """The training zip FAL downloads: the images in order, named by their real format."""
    buffer = io.BytesIO()
    # Stored, not deflated: JPEG/PNG/WebP are compressed already.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for number, data in enumerate(images, start=1):
            info = image_info(data)
            extension = {"jpeg": "jpg"}.get(info.format, info.format) if info else "jpg"
            archive.writestr(f"photo_{number:02d}.{extension}", data)
    return buffer.getvalue()
