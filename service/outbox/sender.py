"""The sending seam: what the dispatcher asks of a sender, and what a send did, in its terms."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from service.outbox.messages import Message, MessageType
from service.outbox.states import SendOutcome


@dataclass(frozen=True)
class SendResult:
    outcome: SendOutcome
    message_id: int | None = None
    retry_after: float = 0.0
    error: str | None = None
    # The group became a supergroup: the retry goes to the new chat.
    migrate_to_chat_id: int | None = None
    # Photos and albums: the row's media as sent, each entry with its Telegram "file_id" (and,
    # in an album, the "message_id" that marks it sent); None when nothing went out.
    media: tuple[dict[str, Any], ...] | None = None


# Called once an album went out and before its follow-up is sent, with the album's result
# (SENT, its media, its first message id): the dispatcher stores it, so that no later failure
# or crash sends the album again.
Checkpoint = Callable[[SendResult], Awaitable[None]]


def not_supported(message: Message) -> SendResult:
    """A message of a kind the sender cannot send yet: final, with an error that says so."""
    return SendResult(
        SendOutcome.UNDELIVERABLE,
        error=f"{message.message_type.value} messages are not supported yet",
    )


class Sender(Protocol):
    # The message kinds this sender can send; the dispatcher gives up on the others at once.
    message_types: frozenset[MessageType]

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(self, message: Message, checkpoint: Checkpoint | None = None) -> SendResult: ...
