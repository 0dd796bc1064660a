"""The Telegram bot (issue 5). Until it lands, `python -m service bot` says so and exits 0."""

from __future__ import annotations

import structlog

from service.settings import Settings

log = structlog.get_logger(__name__)


def run(settings: Settings) -> int:
    log.warning("bot_not_built_yet", detail="the Telegram bot is not part of this release yet")
    return 0
