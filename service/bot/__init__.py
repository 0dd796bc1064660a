"""The Telegram bot: create an avatar, train it on FAL, follow it to the end.

`python -m service bot` calls `run(settings)`; the wiring is in service/bot/app.py.
"""

from __future__ import annotations

from service.bot.app import run

__all__ = ["run"]
