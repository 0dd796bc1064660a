"""The transition table: what each event does to an avatar, and what it never does."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.fal.payload import EventStatus
from service.jobs.states import (
    TERMINAL,
    TRANSITIONS,
    AvatarStatus,
    Change,
    GenerationStatus,
    generation_transition,
    transition,
)

S, E = AvatarStatus, EventStatus

# The contract, written out independently of the module: only draft, training and cancelling
# move; only a running training can be asked to cancel.
EXPECTED: dict[tuple[AvatarStatus, EventStatus], AvatarStatus] = {
    **{
        (start, event): S.TRAINING
        for start in (S.DRAFT, S.TRAINING)
        for event in (E.QUEUED, E.IN_PROGRESS, E.RESULT_PENDING)
    },
    **{(start, E.COMPLETED): S.COMPLETED for start in (S.DRAFT, S.TRAINING)},
    **{(start, E.FAILED): S.FAILED for start in (S.DRAFT, S.TRAINING)},
    **{(start, E.CANCELLED): S.CANCELLED for start in (S.DRAFT, S.TRAINING)},
    (S.TRAINING, E.CANCEL_REQUESTED): S.CANCELLING,
    # "The outcome still counts": news keeps it cancelling, a completion completes it, and
    # an error (what a cancelled run reports) or a cancellation ends it as cancelled.
    **{
        (S.CANCELLING, event): S.CANCELLING for event in (E.QUEUED, E.IN_PROGRESS, E.RESULT_PENDING)
    },
    (S.CANCELLING, E.COMPLETED): S.COMPLETED,
    (S.CANCELLING, E.FAILED): S.CANCELLED,
    (S.CANCELLING, E.CANCELLED): S.CANCELLED,
}

ALL_PAIRS = list(itertools.product(AvatarStatus, EventStatus))
ABSENT_PAIRS = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]

progress_values = st.integers(min_value=0, max_value=100)
event_progress_values = st.one_of(st.none(), st.integers(min_value=0, max_value=100))


def test_the_table_is_exactly_the_contract() -> None:
    assert TRANSITIONS == EXPECTED


def test_terminal_states_are_completed_failed_and_cancelled() -> None:
    assert {S.COMPLETED, S.FAILED, S.CANCELLED} == TERMINAL
    assert all(status.is_terminal for status in TERMINAL)
    assert not S.DRAFT.is_terminal
    assert not S.TRAINING.is_terminal
    assert not S.CANCELLING.is_terminal


def test_no_transition_leaves_a_terminal_state() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0].is_terminal]


@pytest.mark.parametrize(("status", "event"), list(TRANSITIONS), ids=lambda v: str(v))
def test_every_pair_in_the_table_moves_to_its_target(
    status: AvatarStatus, event: EventStatus
) -> None:
    target = TRANSITIONS[(status, event)]
    change = transition(status, 10, event, 50)
    assert change is not None
    assert change.status is target
    assert change.progress == (100 if target is S.COMPLETED else 50)


@pytest.mark.parametrize(("status", "event"), list(TRANSITIONS), ids=lambda v: str(v))
def test_every_pair_in_the_table_without_progress_keeps_the_old_progress(
    status: AvatarStatus, event: EventStatus
) -> None:
    target = TRANSITIONS[(status, event)]
    change = transition(status, 30, event, None)
    if target is status:
        assert change is None  # same state, same progress: nothing to record
    else:
        assert change == Change(target, 100 if target is S.COMPLETED else 30)


@pytest.mark.parametrize(("status", "event"), ABSENT_PAIRS, ids=lambda v: str(v))
@pytest.mark.parametrize("event_progress", [None, 0, 50, 99, 100])
def test_every_absent_pair_changes_nothing(
    status: AvatarStatus, event: EventStatus, event_progress: int | None
) -> None:
    assert transition(status, 40, event, event_progress) is None


def test_every_terminal_state_ignores_every_event() -> None:
    absent = set(ABSENT_PAIRS)
    for status in TERMINAL:
        for event in EventStatus:
            assert (status, event) in absent
            assert transition(status, 0, event, 100) is None


@given(
    st.sampled_from([S.DRAFT, S.TRAINING]),
    st.sampled_from([E.QUEUED, E.IN_PROGRESS, E.RESULT_PENDING, E.FAILED, E.CANCELLED]),
    progress_values,
    event_progress_values,
)
def test_progress_never_goes_down(
    status: AvatarStatus, event: EventStatus, progress: int, event_progress: int | None
) -> None:
    change = transition(status, progress, event, event_progress)
    if change is not None:
        assert change.progress >= progress


@given(st.sampled_from([S.DRAFT, S.TRAINING]), progress_values, event_progress_values)
def test_completion_always_sets_100(
    status: AvatarStatus, progress: int, event_progress: int | None
) -> None:
    assert transition(status, progress, E.COMPLETED, event_progress) == Change(S.COMPLETED, 100)


@given(
    st.sampled_from([S.DRAFT, S.TRAINING]),
    st.sampled_from([E.QUEUED, E.IN_PROGRESS, E.RESULT_PENDING, E.FAILED, E.CANCELLED]),
    st.integers(min_value=0, max_value=99),
    event_progress_values,
)
def test_progress_short_of_completion_is_capped_at_99(
    status: AvatarStatus, event: EventStatus, progress: int, event_progress: int | None
) -> None:
    change = transition(status, progress, event, event_progress)
    if change is not None:
        assert change.progress <= 99


def test_a_progress_report_of_100_before_completion_stays_at_99() -> None:
    assert transition(S.TRAINING, 50, E.IN_PROGRESS, 100) == Change(S.TRAINING, 99)


def test_a_higher_progress_is_recorded() -> None:
    assert transition(S.TRAINING, 20, E.IN_PROGRESS, 45) == Change(S.TRAINING, 45)


def test_a_first_progress_report_starts_the_training() -> None:
    assert transition(S.DRAFT, 0, E.IN_PROGRESS, None) == Change(S.TRAINING, 0)
    assert transition(S.DRAFT, 0, E.QUEUED, 5) == Change(S.TRAINING, 5)


def test_a_late_lower_progress_is_a_no_op() -> None:
    assert transition(S.TRAINING, 60, E.IN_PROGRESS, 30) is None


def test_a_repeated_progress_is_a_no_op() -> None:
    assert transition(S.TRAINING, 60, E.IN_PROGRESS, 60) is None


def test_a_repeated_queued_event_is_a_no_op() -> None:
    assert transition(S.TRAINING, 0, E.QUEUED, None) is None


def test_a_pending_result_keeps_the_avatar_training() -> None:
    assert transition(S.TRAINING, 70, E.RESULT_PENDING, None) is None
    assert transition(S.DRAFT, 0, E.RESULT_PENDING, None) == Change(S.TRAINING, 0)


def test_a_failure_keeps_the_progress_reached() -> None:
    assert transition(S.TRAINING, 70, E.FAILED, None) == Change(S.FAILED, 70)


@pytest.mark.parametrize("late", list(EventStatus))
def test_a_late_event_after_completion_never_moves_the_avatar_back(late: EventStatus) -> None:
    change = transition(S.TRAINING, 10, E.COMPLETED, None)
    assert change == Change(S.COMPLETED, 100)
    assert transition(change.status, change.progress, late, 5) is None


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_a_repeated_terminal_event_is_a_no_op(terminal: AvatarStatus) -> None:
    event = {S.COMPLETED: E.COMPLETED, S.FAILED: E.FAILED, S.CANCELLED: E.CANCELLED}[terminal]
    assert transition(terminal, 100, event, None) is None


def test_a_cancelling_training_that_completes_anyway_is_completed() -> None:
    asked = transition(S.TRAINING, 40, E.CANCEL_REQUESTED, None)
    assert asked == Change(S.CANCELLING, 40)
    assert transition(asked.status, asked.progress, E.COMPLETED, None) == Change(S.COMPLETED, 100)


def test_a_cancelling_training_that_errors_ends_cancelled_not_failed() -> None:
    assert transition(S.CANCELLING, 40, E.FAILED, None) == Change(S.CANCELLED, 40)
    assert transition(S.CANCELLING, 40, E.CANCELLED, None) == Change(S.CANCELLED, 40)


def test_a_second_cancel_request_changes_nothing() -> None:
    assert transition(S.CANCELLING, 40, E.CANCEL_REQUESTED, None) is None
    assert transition(S.DRAFT, 0, E.CANCEL_REQUESTED, None) is None


# --- a generation's table --------------------------------------------------------------------


def test_a_generation_ends_once_and_progress_only_moves_it_forward() -> None:
    G, step = GenerationStatus, generation_transition
    for start in (G.QUEUED, G.RUNNING):
        assert step(start, EventStatus.COMPLETED) is G.COMPLETED
        assert step(start, EventStatus.FAILED) is G.FAILED
        assert step(start, EventStatus.CANCEL_REQUESTED) is None
    assert set(GenerationStatus) == {G.QUEUED, G.RUNNING, G.COMPLETED, G.FAILED}
    assert step(G.QUEUED, EventStatus.IN_PROGRESS) is G.RUNNING
    assert step(G.QUEUED, EventStatus.RESULT_PENDING) is G.RUNNING
    # Older news, repeats, anything after the end: nothing.
    assert step(G.RUNNING, EventStatus.QUEUED) is None
    assert step(G.QUEUED, EventStatus.QUEUED) is None
    for end in (G.COMPLETED, G.FAILED):
        assert end.is_terminal
        assert all(step(end, event) is None for event in EventStatus)
