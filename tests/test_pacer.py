"""The pacer on a clock the test moves: the global rate, one message per interval a chat, 429s."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from service.outbox.pacer import Pacer
from tests.support.clock import FakeClock

EPSILON = 1e-9


def test_a_burst_to_different_chats_is_spaced_by_the_global_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=20, chat_interval=1.0, clock=clock)
    waits = [pacer.reserve(chat) for chat in range(60)]
    assert waits[0] == 0.0
    for number, wait in enumerate(waits):
        assert abs(wait - number / 20) < EPSILON
    # 60 messages at 20/s: the last leaves 2.95 s after the first, not sooner.
    assert abs(waits[-1] - 59 / 20) < EPSILON


def test_a_second_message_to_one_chat_waits_the_chat_interval_others_do_not() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=30, chat_interval=1.0, clock=clock)
    assert pacer.reserve(7) == 0.0
    # Another chat only waits its global slot, right behind the first message.
    assert abs(pacer.reserve(8) - 1 / 30) < EPSILON
    assert abs(pacer.reserve(7) - 1.0) < EPSILON
    # A third message to chat 7 comes one interval after the second.
    assert abs(pacer.reserve(7) - 2.0) < EPSILON
    # Slots are handed out in order: a chat reserved after a waiting one queues behind it.
    assert abs(pacer.reserve(9) - (2.0 + 1 / 30)) < EPSILON


def test_time_that_passed_counts_as_waited() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=10, chat_interval=1.0, clock=clock)
    pacer.reserve(1)
    clock.advance(0.4)
    assert abs(pacer.reserve(1) - 0.6) < EPSILON
    clock.advance(5.0)
    assert pacer.reserve(1) == 0.0
    assert abs(pacer.reserve(2) - 0.1) < EPSILON


def test_a_429_pauses_every_chat_until_retry_after() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=30, chat_interval=1.0, clock=clock)
    assert pacer.paused_for() == 0.0
    already_reserved = pacer.reserve(1)
    assert already_reserved == 0.0
    pacer.pause(3.0)
    # A send that reserved its slot before the 429 must wait the pause out too.
    assert abs(pacer.paused_for() - 3.0) < EPSILON
    # New reservations start after the pause, for any chat.
    assert abs(pacer.reserve(2) - 3.0) < EPSILON
    clock.advance(1.0)
    assert abs(pacer.paused_for() - 2.0) < EPSILON
    clock.advance(2.0)
    assert pacer.paused_for() == 0.0


def test_a_shorter_429_does_not_cut_a_longer_pause_short() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=30, chat_interval=1.0, clock=clock)
    pacer.pause(10.0)
    clock.advance(1.0)
    pacer.pause(2.0)
    assert abs(pacer.paused_for() - 9.0) < EPSILON
    clock.advance(1.0)
    pacer.pause(20.0)
    assert abs(pacer.paused_for() - 20.0) < EPSILON


def test_many_chats_are_forgotten_once_their_interval_passed_but_not_before() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=1000, chat_interval=1.0, clock=clock)
    for chat in range(10_001):
        pacer.reserve(chat)
    clock.advance(30.0)
    # This reservation prunes the chats whose interval ended; the pacing stays right.
    assert pacer.reserve(5) == 0.0
    assert abs(pacer.reserve(5) - 1.0) < EPSILON


def test_an_album_counts_as_its_messages_for_the_chat_and_for_the_bot() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=10, chat_interval=1.0, clock=clock)
    # An album of four photos and its follow-up: five messages, sent together.
    assert pacer.reserve(7, messages=5) == 0.0
    # Every other chat waits five global slots, not one.
    assert abs(pacer.reserve(8) - 0.5) < EPSILON
    # The same chat waits five intervals before its next message.
    assert abs(pacer.reserve(7) - 5.0) < EPSILON


@given(
    rate=st.sampled_from([1.0, 5.0, 30.0]),
    interval=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    steps=st.lists(
        st.tuples(st.integers(0, 4), st.floats(0.0, 2.0, allow_nan=False), st.integers(1, 11)),
        max_size=60,
    ),
)
def test_no_schedule_breaks_either_limit(
    rate: float, interval: float, steps: list[tuple[int, float, int]]
) -> None:
    clock = FakeClock()
    pacer = Pacer(rate=rate, chat_interval=interval, clock=clock)
    # (when it goes out, the chat, how many messages it makes: 1, or an album and follow-up)
    sends: list[tuple[float, int, int]] = []
    for chat, gap, messages in steps:
        clock.advance(gap)
        wait = pacer.reserve(chat, messages)
        assert wait >= 0.0
        sends.append((clock.now + wait, chat, messages))
    ordered = sorted(sends)
    for (earlier, _, count), (later, _, _) in itertools.pairwise(ordered):
        assert later - earlier >= count / rate - EPSILON
    for chat in {c for _, c, _ in sends}:
        mine = [(at, count) for at, c, count in ordered if c == chat]
        for (earlier, count), (later, _) in itertools.pairwise(mine):
            assert later - earlier >= count * interval - EPSILON
