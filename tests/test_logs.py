"""Log lines never carry a secret: the bot token (in every Bot API URL), FAL's key, signatures."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from service import logs

BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
URL = f"https://api.telegram.org/bot{BOT_TOKEN}/sendMessage"
# FAL's keys are "<key id>:<key secret>": a UUID, a colon, 32 hex digits.
FAL_KEY = "5c9c3bd4-7a1e-4c2f-9d0b-e2f1a3b4c5d6:0f1e2d3c4b5a69788796a5b4c3d2e1f0"


class JsonLogs:
    """Logging as `serve` configures it (JSON on stderr), and the lines it wrote."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def start(self) -> Any:
        # Configured in the test itself: pytest gives each phase of a test a new stderr.
        logs.configure("INFO", "json")
        return structlog.get_logger("test")

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.capsys.readouterr().err.splitlines() if line]


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[JsonLogs]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configured = structlog.get_config()
    try:
        yield JsonLogs(capsys)
    finally:
        structlog.configure(**configured)
        root.handlers, root.level = handlers, level
        for name in ("httpx", "httpcore", "telegram.ext", "apscheduler"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_secret_fields_are_redacted_by_name(json_logs: JsonLogs) -> None:
    log = json_logs.start()
    log.info(
        "calling", token=BOT_TOKEN, fal_key=FAL_KEY, Authorization=f"Key {FAL_KEY}",
        signature="ab" * 64, webhook_secret_token="s3cret", chat_id=42,
    )  # fmt: skip
    (line,) = json_logs.lines()
    assert line["event"] == "calling" and line["chat_id"] == 42
    for name in ("token", "fal_key", "Authorization", "signature", "webhook_secret_token"):
        assert line[name] == "[redacted]", name


def test_a_bot_token_inside_any_text_is_redacted(json_logs: JsonLogs) -> None:
    log = json_logs.start()
    log.warning("send_failed", url=URL, detail=f"POST {URL} timed out")
    (line,) = json_logs.lines()
    text = json.dumps(line)
    assert BOT_TOKEN not in text and "123456789:" not in text
    assert line["url"] == "https://api.telegram.org/bot[redacted]/sendMessage"
    assert line["detail"].startswith("POST https://api.telegram.org/bot[redacted]/")


def test_the_event_name_is_kept_even_when_it_mentions_a_token(json_logs: JsonLogs) -> None:
    log = json_logs.start()
    log.info("token_missing", hint="set TELEGRAM_TOKEN")
    (line,) = json_logs.lines()
    assert (line["event"], line["hint"]) == ("token_missing", "set TELEGRAM_TOKEN")


def test_a_library_warning_through_the_standard_library_is_redacted_too(
    json_logs: JsonLogs,
) -> None:
    json_logs.start()
    # httpx logs every request URL; at WARNING (what reaches the log) it must hold no token.
    logging.getLogger("httpx").warning("HTTP Request: POST %s 502", URL)
    logging.getLogger("httpx").info("HTTP Request: POST %s 200", URL)
    (line,) = json_logs.lines()
    assert BOT_TOKEN not in json.dumps(line)
    assert "bot[redacted]/sendMessage" in line["event"]


def test_a_fal_key_inside_text_is_redacted(json_logs: JsonLogs) -> None:
    log = json_logs.start()
    log.warning("fal_refused", detail=f"Authorization: Key {FAL_KEY}")
    assert FAL_KEY.split(":")[1] not in json.dumps(json_logs.lines())


def test_a_token_inside_a_nested_value_is_redacted(json_logs: JsonLogs) -> None:
    log = json_logs.start()
    log.info("request", request={"url": URL, "headers": [URL]})
    assert BOT_TOKEN not in json.dumps(json_logs.lines())


def test_a_token_in_an_exception_traceback_is_redacted(json_logs: JsonLogs) -> None:
    log = json_logs.start()
    try:
        raise ConnectionError(f"cannot reach {URL}")
    except ConnectionError:
        log.exception("send_crashed")
    (line,) = json_logs.lines()
    assert "cannot reach" in line["exception"]
    assert BOT_TOKEN not in json.dumps(line)


def test_ids_and_times_that_merely_look_alike_are_kept(json_logs: JsonLogs) -> None:
    log = json_logs.start()
    kept = {
        "dedupe_key": "avatar:0123456789abcdef:outcome",
        "at": "2026-12-01T08:27:11+00:00",
        "worker": "host-1:12345",
        "client": "2001:db8::1",
    }
    log.info("ordinary", **kept)
    (line,) = json_logs.lines()
    assert {key: line[key] for key in kept} == kept
