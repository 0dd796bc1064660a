"""The bot's pure parts: image headers, names, photo checks, the zip, texts, the webhook URL."""

from __future__ import annotations

import io
import string
import zipfile
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.bot import texts
from service.bot.photos import (
    MAX_FILE_BYTES,
    MAX_PHOTOS,
    Draft,
    NameProblem,
    Photo,
    Refusal,
    check_before_download,
    check_size,
    clean_name,
    image_info,
    make_zip,
)
from service.bot.training import fal_arguments, trigger_word, webhook_url
from tests.support.images import jpeg_header, png, webp_vp8, webp_vp8l, webp_vp8x

sides = st.integers(min_value=1, max_value=16383)


@given(sides, sides, st.booleans())
def test_jpeg_size_comes_from_the_frame_header(width: int, height: int, progressive: bool) -> None:
    info = image_info(jpeg_header(width, height, progressive))
    assert info is not None and (info.format, info.width, info.height) == ("jpeg", width, height)


@given(sides, sides)
def test_webp_sizes_in_all_three_encodings(width: int, height: int) -> None:
    for build in (webp_vp8x, webp_vp8l, webp_vp8):
        info = image_info(build(width, height))
        assert info is not None and (info.format, info.width, info.height) == (
            "webp",
            width,
            height,
        ), build.__name__


@pytest.mark.parametrize(("width", "height"), [(1, 1), (512, 511), (640, 512), (1500, 900)])
def test_png_size_comes_from_ihdr(width: int, height: int) -> None:
    info = image_info(png(width, height))
    assert info is not None and (info.format, info.width, info.height) == ("png", width, height)


@given(st.binary(max_size=200))
def test_any_bytes_give_a_size_or_none_never_an_error(data: bytes) -> None:
    info = image_info(data)
    assert info is None or (info.width > 0 and info.height > 0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a\x01\x00\x01\x00",
        b"%PDF-1.7",
        png(600, 600)[:20],  # cut inside IHDR
        jpeg_header(600, 600)[:30],  # cut before the frame header
        b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20,  # scan data before any frame
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    ],
)
def test_what_is_not_a_readable_image_is_none(data: bytes) -> None:
    assert image_info(data) is None


def test_size_check_is_on_the_short_side() -> None:
    assert check_size(512, 4000) is None
    assert check_size(4000, 511) is Refusal.TOO_SMALL


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("  Ann  ", None),
        ("<b>Ann_2*[x]</b> & Co", None),
        ("👨‍👩‍👧 семья", None),
        ("x" * 64, None),
        ("x" * 65, NameProblem.TOO_LONG),
        ("   ", NameProblem.EMPTY),
        ("two\nlines", NameProblem.CONTROL),
        ("tab\there", NameProblem.CONTROL),
        ("abc\u202edcba", NameProblem.CONTROL),
        ("bell\x07", NameProblem.CONTROL),
    ],
)
def test_names(text: str, problem: NameProblem | None) -> None:
    name, found = clean_name(text)
    assert found is problem
    assert name == text.strip()


def photo(number: int, size: int = 100_000) -> Photo:
    return Photo(f"f{number}", f"u{number}", "photo", 800, 600, size)


def test_photo_checks_before_download() -> None:
    draft = Draft("Ann", photos=[photo(1)])
    assert check_before_download(draft, "u2", 100_000) is None
    assert check_before_download(draft, "u2", None) is None
    assert check_before_download(draft, "u1", 100_000) is Refusal.DUPLICATE
    assert check_before_download(draft, "u2", MAX_FILE_BYTES + 1) is Refusal.TOO_BIG
    heavy = Draft("Ann", photos=[photo(n, MAX_FILE_BYTES) for n in range(6)])
    assert check_before_download(heavy, "u9", MAX_FILE_BYTES) is Refusal.TOTAL_TOO_BIG
    full = Draft("Ann", photos=[photo(n) for n in range(MAX_PHOTOS)])
    assert check_before_download(full, "new", 1) is Refusal.TOO_MANY


def test_the_zip_holds_the_images_in_order_named_by_their_format() -> None:
    images = [png(600, 600, 1), jpeg_header(800, 600), webp_vp8x(700, 700), b"???"]
    with zipfile.ZipFile(io.BytesIO(make_zip(images))) as archive:
        names = archive.namelist()
        assert names == ["photo_01.png", "photo_02.jpg", "photo_03.webp", "photo_04.jpg"]
        assert [archive.read(name) for name in names] == images
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_every_text_exists_in_both_languages_with_the_same_placeholders() -> None:
    def fields(template: str) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}

    russian, english = texts._TEXTS["ru"], texts._TEXTS["en"]
    assert russian.keys() == english.keys()
    for key in russian:
        assert fields(russian[key]) == fields(english[key]), key


def test_values_are_escaped_and_the_markup_is_not() -> None:
    text = texts.t("en", "summary", name="<b>x</b> & y", kind="portrait", count=10, minutes=30)
    assert "<b>Let's check</b>" in text
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in text
    assert texts.label("ru", "btn_retry", "<i>Ann</i>") == "🔁 Повторить «<i>Ann</i>»"
    assert texts.lang_of("en-US") == "en" and texts.lang_of("kk") == "ru"
    assert texts.lang_of(None) == "ru"


def test_the_webhook_url_carries_the_avatar_and_keeps_its_own_query() -> None:
    url = webhook_url("https://aibots.kz:8443/api/v1/avatar/status_update?x=1", "ab12", "style")
    parts = urlsplit(url)
    assert parts.netloc == "aibots.kz:8443" and parts.path == "/api/v1/avatar/status_update"
    assert parse_qs(parts.query) == {"x": ["1"], "avatar_id": ["ab12"], "training_type": ["style"]}


def test_trainer_inputs() -> None:
    style = fal_arguments("style", "https://h/z.zip", "aibotsab12")
    assert style == {
        "images_data_url": "https://h/z.zip",
        "trigger_word": "aibotsab12",
        "is_style": True,
    }
    portrait = fal_arguments("portrait", "https://h/z.zip", "aibotsab12")
    assert portrait["trigger_phrase"] == "aibotsab12" and "is_style" not in portrait
    assert trigger_word("0123456789abcdef") == "aibots012345"
