"""Avatar and generation statuses, and the table that says how an event may change an avatar."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from service.fal.payload import EventStatus


class AvatarStatus(enum.StrEnum):
    DRAFT = "draft"
    TRAINING = "training"
    # FAL said CANCELLATION_REQUESTED: the training may still finish, and its outcome counts.
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({AvatarStatus.COMPLETED, AvatarStatus.FAILED, AvatarStatus.CANCELLED})


_S, _E = AvatarStatus, EventStatus

# (current status, event) -> next status. A pair that is absent changes nothing: that is how
# terminal states stay final and late or repeated events are ignored.
TRANSITIONS: dict[tuple[AvatarStatus, EventStatus], AvatarStatus] = {
    (_S.DRAFT, _E.QUEUED): _S.TRAINING,
    (_S.DRAFT, _E.IN_PROGRESS): _S.TRAINING,
    (_S.DRAFT, _E.RESULT_PENDING): _S.TRAINING,
    (_S.DRAFT, _E.COMPLETED): _S.COMPLETED,
    (_S.DRAFT, _E.FAILED): _S.FAILED,
    (_S.DRAFT, _E.CANCELLED): _S.CANCELLED,
    (_S.TRAINING, _E.QUEUED): _S.TRAINING,
    (_S.TRAINING, _E.IN_PROGRESS): _S.TRAINING,
    (_S.TRAINING, _E.RESULT_PENDING): _S.TRAINING,
    (_S.TRAINING, _E.COMPLETED): _S.COMPLETED,
    (_S.TRAINING, _E.FAILED): _S.FAILED,
    (_S.TRAINING, _E.CANCELLED): _S.CANCELLED,
    (_S.TRAINING, _E.CANCEL_REQUESTED): _S.CANCELLING,
    (_S.CANCELLING, _E.QUEUED): _S.CANCELLING,
    (_S.CANCELLING, _E.IN_PROGRESS): _S.CANCELLING,
    (_S.CANCELLING, _E.RESULT_PENDING): _S.CANCELLING,
    # The training finished before the cancellation reached it: the avatar is usable.
    (_S.CANCELLING, _E.COMPLETED): _S.COMPLETED,
    # Stopped by the cancellation (FAL reports it as an error) or cancelled outright.
    (_S.CANCELLING, _E.FAILED): _S.CANCELLED,
    (_S.CANCELLING, _E.CANCELLED): _S.CANCELLED,
}


class GenerationStatus(enum.StrEnum):
    # Written, with the quota checked, before the request goes to FAL, and kept once FAL has
    # accepted it (the job registered) until FAL says it runs. A queued generation without a
    # job is one being submitted; a submission that fails leaves it failed, and a failed
    # generation does not count against the quota.
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (GenerationStatus.COMPLETED, GenerationStatus.FAILED)


_G = GenerationStatus

# A generation's table, as the avatar's: (current status, event) -> next status; an absent pair
# changes nothing, so the terminal states stay final and late or repeated news is ignored.
# Progress is not kept: queued and running are all a person is shown.
GENERATION_TRANSITIONS: dict[tuple[GenerationStatus, EventStatus], GenerationStatus] = {
    (_G.QUEUED, _E.IN_PROGRESS): _G.RUNNING,
    (_G.QUEUED, _E.RESULT_PENDING): _G.RUNNING,
    **{
        (before, event): after
        for before in (_G.QUEUED, _G.RUNNING)
        for event, after in (
            (_E.COMPLETED, _G.COMPLETED),
            (_E.FAILED, _G.FAILED),
            # Nobody cancels a generation; should FAL end one so, its photos never come.
            (_E.CANCELLED, _G.FAILED),
        )
    },
}


def generation_transition(status: GenerationStatus, event: EventStatus) -> GenerationStatus | None:
    """The generation's next status, or None when the event changes nothing."""
    return GENERATION_TRANSITIONS.get((status, event))


@dataclass(frozen=True)
class Change:
    status: AvatarStatus
    progress: int


def transition(
    status: AvatarStatus, progress: int, event: EventStatus, event_progress: int | None
) -> Change | None:
    """The avatar's next status and progress, or None when the event changes nothing."""
    target = TRANSITIONS.get((status, event))
    if target is None:
        return None
    if target is AvatarStatus.COMPLETED:
        new_progress = 100
    elif event_progress is None:
        new_progress = progress
    else:
        # Progress never goes down: deliveries are unordered, so a smaller number is older news.
        new_progress = max(progress, min(event_progress, 99))
    if target == status and new_progress == progress:
        return None
    return Change(target, new_progress)
