"""Telegram's limits as send times: a global rate, one message per interval per chat, 429 pauses."""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    """Hands out send times: at most `rate` per second overall and one per `interval` per chat.

    It holds no lock and no task: one dispatcher (the elected one) owns it, and the clock is a
    parameter so that tests can drive it.
    """

    def __init__(
        self, rate: float, chat_interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._gap = 1.0 / rate
        self._chat_interval = chat_interval
        self._clock = clock
        self._next_any = 0.0
        self._next_for_chat: dict[int, float] = {}
        self._paused_until = 0.0

    def reserve(self, chat_id: int, messages: int = 1) -> float:
        """Reserve the earliest allowed slot for this chat; returns seconds to wait for it.

        `messages` is how many Telegram messages the send makes (an album of four and its
        follow-up: five); they go out together and the slots after them move back by as many.
        """
        now = self._clock()
        slot = max(now, self._next_any, self._next_for_chat.get(chat_id, 0.0))
        self._next_any = slot + self._gap * messages
        self._next_for_chat[chat_id] = slot + self._chat_interval * messages
        if len(self._next_for_chat) > 10_000:
            self._next_for_chat = {c: t for c, t in self._next_for_chat.items() if t > now}
        return slot - now

    def pause(self, seconds: float) -> None:
        """Telegram said 429: nobody sends until it allows again."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._next_any = max(self._next_any, self._paused_until)

    def paused_for(self) -> float:
        """Seconds left of a 429 pause; sends that reserved their slot before it must wait too."""
        return max(0.0, self._paused_until - self._clock())
