"""A notification's states and every move between them, in one table.

pending --claim--> sending --sent--> sent
   ^                 |  \\--(403, 400, a message kind not sent yet)--> undeliverable
   |                 |   \\--(read timeout)--> uncertain   (never resent on its own)
   +---(429, 5xx)----+    \\--(too many attempts or too old)--> failed
sending with an expired lease (its process died) is claimed again like pending.
failed, undeliverable, uncertain --operator retry--> pending; sent is final.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class NotificationState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    # The request went out and no answer came back: Telegram may have delivered it.
    UNCERTAIN = "uncertain"
    # Telegram will never accept it (blocked, chat not found, malformed).
    UNDELIVERABLE = "undeliverable"
    # Gave up: too many attempts, or too old to be worth sending.
    FAILED = "failed"


class SendOutcome(enum.StrEnum):
    """What one send attempt did, as a sender reports it (the values label metrics and logs)."""

    SENT = "sent"
    # Telegram said "too many requests": try again after retry_after, nothing was sent.
    RATE_LIMITED = "rate_limited"
    # Not delivered and worth another try later (5xx, connection refused, connect timeout).
    RETRY = "retry"
    # Will never be delivered as it is: stop now.
    UNDELIVERABLE = "undeliverable"
    # The request went out and no answer came back.
    UNCERTAIN = "uncertain"


_S = NotificationState

# Every allowed move. claim: pending -> sending, and sending -> sending when the previous
# claim's lease ran out; record: sending -> the state after_send() gives; operator retry: a
# final state other than sent -> pending (re-sending a sent message would be a duplicate).
TRANSITIONS: Mapping[NotificationState, frozenset[NotificationState]] = {
    _S.PENDING: frozenset({_S.SENDING}),
    _S.SENDING: frozenset(
        {_S.SENDING, _S.PENDING, _S.SENT, _S.UNDELIVERABLE, _S.UNCERTAIN, _S.FAILED}
    ),
    _S.SENT: frozenset(),
    _S.UNCERTAIN: frozenset({_S.PENDING}),
    _S.UNDELIVERABLE: frozenset({_S.PENDING}),
    _S.FAILED: frozenset({_S.PENDING}),
}

# Claimed and not yet recorded, or waiting for a claim: what "not sent yet" means to monitoring.
UNSENT = (_S.PENDING, _S.SENDING)
# What `notifications retry ID` may put back in the queue, in the order its error names them.
REQUEUEABLE = (_S.FAILED, _S.UNDELIVERABLE, _S.UNCERTAIN)

# Outcomes that end the notification whatever its age; the others mean "try again".
_FINAL_AFTER: Mapping[SendOutcome, NotificationState] = {
    SendOutcome.SENT: _S.SENT,
    SendOutcome.UNDELIVERABLE: _S.UNDELIVERABLE,
    SendOutcome.UNCERTAIN: _S.UNCERTAIN,
}


def after_send(outcome: SendOutcome, *, gave_up: bool) -> NotificationState:
    """The state a claimed notification moves to; `gave_up`: no attempt is left for a retry."""
    final = _FINAL_AFTER.get(outcome)
    if final is not None:
        return final
    return _S.FAILED if gave_up else _S.PENDING


def can_move(source: NotificationState, target: NotificationState) -> bool:
    return target in TRANSITIONS[source]
