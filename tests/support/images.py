"""Real, small image files built by hand (no imaging library needed)."""

from __future__ import annotations

import struct
import zlib


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of one colour chosen by `seed` (distinct seeds, distinct bytes)."""
    pixel = bytes([seed * 37 % 256, seed * 91 % 256, seed * 13 % 256])
    row = b"\x00" + pixel * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(row * height, 9))
        + _chunk(b"IEND", b"")
    )


def jpeg_header(width: int, height: int, progressive: bool = False) -> bytes:
    """The start of a JPEG as cameras write it: SOI, an APP1 segment, a quantisation table
    and the frame header carrying the size (enough for any header reader)."""
    app1 = b"Exif\x00\x00" + b"\x00" * 40
    dqt = b"\x00" + bytes(range(64))
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    marker = b"\xff\xc2" if progressive else b"\xff\xc0"
    return (
        b"\xff\xd8"
        + b"\xff\xe1"
        + struct.pack(">H", len(app1) + 2)
        + app1
        + b"\xff\xdb"
        + struct.pack(">H", len(dqt) + 2)
        + dqt
        + marker
        + struct.pack(">H", len(sof) + 2)
        + sof
        + b"\xff\xd9"
    )


def webp_vp8x(width: int, height: int) -> bytes:
    payload = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    payload += (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 8
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_vp8(width: int, height: int) -> bytes:
    payload = b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\x00" * 8
    body = b"WEBP" + b"VP8 " + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


# The standard luminance DC table of JPEG's Annex K (code lengths 1..16, then the symbols).
_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
_DC_SYMBOLS = bytes(range(12))
# An AC table with one symbol, end-of-block: every block here is a flat colour.
_AC_BITS = (1,) + (0,) * 15
_AC_SYMBOLS = b"\x00"


def _codes(bits: tuple[int, ...], symbols: bytes) -> dict[int, tuple[int, int]]:
    """Huffman codes as JPEG assigns them: by length, in order (symbol -> (code, length))."""
    codes, code, index = {}, 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[symbols[index]] = (code, length)
            code, index = code + 1, index + 1
        code <<= 1
    return codes


def _segment(marker: int, data: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(data) + 2) + data


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A valid baseline JPEG (any decoder reads it) of one colour chosen by `seed`."""
    rgb = (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)
    r, g, b = rgb
    levels = (
        0.299 * r + 0.587 * g + 0.114 * b,
        128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
        128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
    )
    # A flat 8x8 block's DC coefficient is 8 times its level shifted by 128 (quantiser 1).
    dcs = [round(8 * (level - 128)) for level in levels]
    dc_codes, eob = _codes(_DC_BITS, _DC_SYMBOLS), _codes(_AC_BITS, _AC_SYMBOLS)[0]
    bits: list[tuple[int, int]] = []
    previous = [0, 0, 0]
    for _ in range(((width + 7) // 8) * ((height + 7) // 8)):
        for component, dc in enumerate(dcs):
            diff, previous[component] = dc - previous[component], dc
            size = abs(diff).bit_length()
            bits.append(dc_codes[size])
            if size:
                bits.append((diff if diff > 0 else diff + (1 << size) - 1, size))
            bits.append(eob)
    stream, acc, filled = bytearray(), 0, 0
    for value, length in bits:
        acc, filled = (acc << length) | value, filled + length
        while filled >= 8:
            filled -= 8
            byte = (acc >> filled) & 0xFF
            stream += b"\xff\x00" if byte == 0xFF else bytes([byte])
    if filled:
        byte = ((acc << (8 - filled)) | ((1 << (8 - filled)) - 1)) & 0xFF
        stream += b"\xff\x00" if byte == 0xFF else bytes([byte])
    components = b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    return (
        b"\xff\xd8"
        + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + _segment(0xDB, b"\x00" + b"\x01" * 64)
        + _segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + components)
        + _segment(0xC4, b"\x00" + bytes(_DC_BITS) + _DC_SYMBOLS)
        + _segment(0xC4, b"\x10" + bytes(_AC_BITS) + _AC_SYMBOLS)
        + _segment(0xDA, b"\x03" + b"".join(bytes([i, 0x00]) for i in (1, 2, 3)) + b"\x00\x3f\x00")
        + bytes(stream)
        + b"\xff\xd9"
    )


def padded(data: bytes, size: int) -> bytes:
    """A JPEG grown to exactly `size` bytes by comment (COM) segments after its SOI marker.

    Still the same valid image: decoders skip comments. For tests of byte limits (Telegram
    fetches at most 5 MB by URL) without encoding a large picture.
    """
    missing = size - len(data)
    # A segment is its marker and length (4 bytes) and up to 65533 bytes of comment.
    assert data.startswith(b"\xff\xd8") and (missing == 0 or missing >= 4), missing
    segments = []
    while missing:
        body = min(65533, missing - 4)
        if 0 < missing - 4 - body < 4:
            body -= 4  # leave enough for one more (empty) segment
        segments.append(b"\xff\xfe" + struct.pack(">H", body + 2) + b"\x00" * body)
        missing -= body + 4
    return data[:2] + b"".join(segments) + data[2:]
