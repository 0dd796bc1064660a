"""structlog set-up: one JSON object per line on stderr (journald keeps it), or console text."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Telegram puts the bot token in every URL path, and a FAL key (`<key id>:<secret>`) travels
# in an Authorization header; nothing that might hold one is logged as is.
_TOKEN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{20,}")
_FAL_KEY = re.compile(r"[0-9a-fA-F-]{8,}:[0-9a-fA-F]{16,}")
_SECRET_KEYS = ("token", "signature", "fal_key", "authorization", "password")


def _clean(value: Any) -> Any:
    """The value with every secret-shaped string in it replaced, at any depth."""
    if isinstance(value, str):
        # Both shapes hold a colon; most values (ids, statuses, paths) have none, and the
        # webhook's log line has a dozen of them.
        if ":" not in value:
            return value
        return _FAL_KEY.sub("[redacted]", _TOKEN.sub("[redacted]", value))
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


@functools.lru_cache(maxsize=1024)
def _names_a_secret(key: str) -> bool:
    # Log lines reuse a few dozen keys: decided once per key, not per line.
    return key != "event" and any(secret in key.lower() for secret in _SECRET_KEYS)


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if _names_a_secret(key):
            event[key] = "[redacted]"
        else:
            event[key] = _clean(value)
    return event


def configure(level: str = "INFO", fmt: str = "json") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # Redacted after the traceback is rendered: an exception's text can carry a URL.
        processors=[*shared, structlog.processors.format_exc_info, _redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (gunicorn, uvicorn, alembic, python-telegram-bot) log through the standard
    # library; give their lines the same shape so journald holds one format.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO, and Telegram's URLs carry the bot token.
    for name in ("httpx", "httpcore", "telegram.ext", "apscheduler"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
