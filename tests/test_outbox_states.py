"""Every move of a notification, from the table and on a real database (SQLite file, PostgreSQL).

Each test drives queue.enqueue / claim / record / expedite and the operator's retry against a
migrated database and checks the row after every step, and that the step is one the table in
service/outbox/states.py allows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.operator import Conflict, retry_notifications
from service.outbox import queue
from service.outbox.messages import Message, MessageType
from service.outbox.sender import SendResult
from service.outbox.states import (
    REQUEUEABLE,
    TRANSITIONS,
    UNSENT,
    NotificationState,
    SendOutcome,
    after_send,
    can_move,
)
from service.store.dialect import dialect_for
from service.store.direct import open_direct
from service.store.models import Notification, utcnow
from tests.support import schema
from tests.support.db import run

S = NotificationState
LEASE = dt.timedelta(seconds=60)
EXPIRED = dt.timedelta(seconds=-1)


# --- the table ------------------------------------------------------------------------------


def test_every_state_has_its_moves_listed_and_sent_is_final() -> None:
    assert set(TRANSITIONS) == set(NotificationState)
    assert TRANSITIONS[S.SENT] == frozenset()
    # Only a claim leaves pending; everything a send can end in starts from sending.
    assert TRANSITIONS[S.PENDING] == {S.SENDING}
    for state in REQUEUEABLE:
        assert TRANSITIONS[state] == {S.PENDING}
    assert S.SENT not in REQUEUEABLE
    assert set(UNSENT) == {S.PENDING, S.SENDING}


@pytest.mark.parametrize(
    ("outcome", "gave_up", "expected"),
    [
        (SendOutcome.SENT, False, S.SENT),
        (SendOutcome.SENT, True, S.SENT),
        (SendOutcome.UNDELIVERABLE, False, S.UNDELIVERABLE),
        (SendOutcome.UNDELIVERABLE, True, S.UNDELIVERABLE),
        (SendOutcome.UNCERTAIN, False, S.UNCERTAIN),
        (SendOutcome.UNCERTAIN, True, S.UNCERTAIN),
        (SendOutcome.RATE_LIMITED, False, S.PENDING),
        (SendOutcome.RATE_LIMITED, True, S.FAILED),
        (SendOutcome.RETRY, False, S.PENDING),
        (SendOutcome.RETRY, True, S.FAILED),
    ],
)
def test_what_a_send_outcome_moves_a_claimed_notification_to(
    outcome: SendOutcome, gave_up: bool, expected: NotificationState
) -> None:
    assert after_send(outcome, gave_up=gave_up) is expected
    assert can_move(S.SENDING, expected)


def test_every_send_outcome_has_a_state_to_go_to() -> None:
    reached = {after_send(o, gave_up=g) for o in SendOutcome for g in (False, True)}
    assert reached == TRANSITIONS[S.SENDING] - {S.SENDING}


# --- on a real database ---------------------------------------------------------------------


def text(chat_id: int, body: str = "hello") -> Message:
    return Message(chat_id=chat_id, text=body, reply_markup={"inline_keyboard": []})


def row(database_url: str, notification_id: int) -> Notification:
    async def work(session: AsyncSession) -> Notification:
        found = await session.get(Notification, notification_id)
        assert found is not None
        return found

    return run(database_url, work)


def enqueue(database_url: str, key: str, message: Message) -> bool:
    return run(database_url, lambda s: queue.enqueue(s, key, "completed", message, avatar_id=None))


def claim(
    database_url: str, worker: str = "w1", limit: int = 10, lease: dt.timedelta = LEASE
) -> list[queue.Claimed]:
    return run(database_url, lambda s: queue.claim(s, worker, limit, lease))


def record(
    database_url: str, claimed: queue.Claimed, result: SendResult, worker: str = "w1"
) -> NotificationState:
    """As the drain loop records: on a connection of the hot path's pool."""

    async def go() -> NotificationState:
        pool = open_direct(database_url)
        assert pool is not None, database_url
        try:
            return await pool.run(lambda c: queue.record(c, worker, claimed, result))
        finally:
            await pool.close()

    return asyncio.run(go())


def record_in_session(
    database_url: str, claimed: queue.Claimed, result: SendResult, worker: str = "w1"
) -> NotificationState:
    return run(database_url, lambda s: queue.record(s, worker, claimed, result))


def ids(database_url: str) -> list[int]:
    async def work(session: AsyncSession) -> list[int]:
        return list((await session.execute(select(Notification.id).order_by("id"))).scalars())

    return run(database_url, work)


@pytest.fixture
def db(database_url: str) -> str:
    schema.upgrade(database_url)
    return database_url


def claimed_one(db: str, chat_id: int = 1) -> queue.Claimed:
    assert enqueue(db, f"key-{chat_id}", text(chat_id))
    (item,) = claim(db)
    assert row(db, item.id).state == S.SENDING
    return item


def test_enqueue_writes_one_pending_row_per_key(db: str) -> None:
    message = Message(
        chat_id=11, text="<b>done</b>", reply_markup={"inline_keyboard": [[{"text": "x"}]]}
    )
    assert enqueue(db, "avatar:1:outcome", message) is True
    assert enqueue(db, "avatar:1:outcome", text(99, "a different text")) is False
    (only,) = ids(db)
    stored = row(db, only)
    assert stored.state == S.PENDING
    assert (stored.chat_id, stored.text, stored.kind) == (11, "<b>done</b>", "completed")
    assert stored.message_type == MessageType.TEXT
    assert stored.media is None
    assert stored.reply_markup == message.reply_markup
    assert stored.attempts == 0


def test_a_photo_or_album_keeps_its_type_and_media_through_a_claim(db: str) -> None:
    media = ({"url": "https://example.org/1.jpg"}, {"url": "https://example.org/2.jpg"})
    album = Message(chat_id=5, text="two photos", message_type=MessageType.ALBUM, media=media)
    photo = Message(chat_id=6, text="caption", message_type=MessageType.PHOTO, media=media[:1])
    assert enqueue(db, "album", album)
    assert enqueue(db, "photo", photo)
    claimed = {c.chat_id: c.message for c in claim(db)}
    assert claimed[5] == album
    assert claimed[6] == photo


def test_pending_is_claimed_once_under_a_lease(db: str) -> None:
    assert enqueue(db, "k", text(1))
    before = utcnow()
    (item,) = claim(db)
    assert (item.attempts, item.reclaimed, item.message.text) == (1, False, "hello")
    stored = row(db, item.id)
    assert stored.state == S.SENDING and can_move(S.PENDING, S.SENDING)
    assert stored.claimed_by == "w1" and stored.attempts == 1
    assert stored.lease_until is not None and stored.lease_until >= before + LEASE
    # Its lease is alive: nobody else takes it.
    assert claim(db, worker="w2") == []


def test_a_row_not_due_yet_is_not_claimed(db: str) -> None:
    assert enqueue(db, "k", text(1))

    async def later(session: AsyncSession) -> None:
        await session.execute(
            update(Notification).values(next_attempt_at=utcnow() + dt.timedelta(minutes=5))
        )

    run(db, later)
    assert claim(db) == []
    due = run(db, queue.next_due_in)
    assert due is not None and 290 < due <= 300


def test_nothing_waiting_has_no_due_time(db: str) -> None:
    assert run(db, queue.next_due_in) is None


def test_sent_keeps_the_message_id_and_ends_the_lease(db: str) -> None:
    item = claimed_one(db)
    assert record(db, item, SendResult(SendOutcome.SENT, message_id=77)) is S.SENT
    stored = row(db, item.id)
    assert stored.state == S.SENT and can_move(S.SENDING, S.SENT)
    assert stored.telegram_message_id == 77
    assert stored.sent_at is not None and stored.lease_until is None
    assert claim(db) == []


def test_what_a_send_did_not_give_keeps_what_was_stored_before(db: str) -> None:
    # An album's checkpoint stored its file_ids and first message id; the follow-up's failure
    # carries neither, and must not wipe them (a later claim sends only what is left).
    item = claimed_one(db)
    media = ({"file_id": "AgAD1"}, {"file_id": "AgAD2"})
    partial = SendResult(SendOutcome.SENT, message_id=501, media=media)
    run(db, lambda s: queue.checkpoint(s, "w1", item, partial, LEASE))
    assert record(db, item, SendResult(SendOutcome.RETRY, error="502")) is S.PENDING
    stored = row(db, item.id)
    assert stored.media == list(media) and stored.telegram_message_id == 501
    assert stored.sent_at is None and stored.chat_id == item.chat_id


@pytest.mark.parametrize(
    "result",
    [
        SendResult(SendOutcome.SENT, message_id=78, media=({"file_id": "AgAD3"},)),
        SendResult(SendOutcome.UNCERTAIN, error="timed out"),
        SendResult(SendOutcome.RATE_LIMITED, retry_after=3.0, error="429"),
        SendResult(SendOutcome.RETRY, error="moved", migrate_to_chat_id=-1007),
    ],
    ids=lambda r: r.outcome.value,
)
def test_the_session_records_what_the_drain_loops_connection_records(
    db: str, result: SendResult
) -> None:
    # The operator's and the tests' way and the drain loop's run the same statement.
    by_pool, by_session = claimed_one(db, chat_id=-100), claimed_one(db, chat_id=-200)
    assert record(db, by_pool, result) is record_in_session(db, by_session, result)
    pool_row, session_row = row(db, by_pool.id), row(db, by_session.id)
    for column in ("state", "last_error", "telegram_message_id", "media", "lease_until"):
        assert getattr(pool_row, column) == getattr(session_row, column), column
    assert (pool_row.sent_at is None) == (session_row.sent_at is None)
    if result.migrate_to_chat_id is not None:
        assert pool_row.chat_id == session_row.chat_id == result.migrate_to_chat_id
    else:
        assert (pool_row.chat_id, session_row.chat_id) == (-100, -200)
    waits = [(r.next_attempt_at - r.updated_at).total_seconds() for r in (pool_row, session_row)]
    if result.outcome is SendOutcome.RATE_LIMITED:
        assert waits[0] == pytest.approx(3.0, abs=0.01) and waits[1] == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize("outcome", [SendOutcome.UNDELIVERABLE, SendOutcome.UNCERTAIN])
def test_a_final_answer_is_kept_with_its_error_and_never_claimed_again(
    db: str, outcome: SendOutcome
) -> None:
    item = claimed_one(db)
    state = record(db, item, SendResult(outcome, error="Forbidden: bot was blocked by the user"))
    assert state == outcome.value
    stored = row(db, item.id)
    assert stored.state == state and can_move(S.SENDING, state)
    assert stored.last_error == "Forbidden: bot was blocked by the user"
    assert claim(db, lease=EXPIRED) == []


def test_a_429_puts_it_back_for_exactly_retry_after(db: str) -> None:
    item = claimed_one(db)
    before = utcnow()
    state = record(db, item, SendResult(SendOutcome.RATE_LIMITED, retry_after=7.0, error="429"))
    after = utcnow()
    assert state is S.PENDING and can_move(S.SENDING, S.PENDING)
    stored = row(db, item.id)
    assert stored.state == S.PENDING and stored.lease_until is None
    seven = dt.timedelta(seconds=7)
    assert before + seven <= stored.next_attempt_at <= after + seven


def test_a_retry_backs_off_exponentially_with_jitter(db: str) -> None:
    item = dataclasses.replace(claimed_one(db), attempts=4)
    before = utcnow()
    assert record(db, item, SendResult(SendOutcome.RETRY, error="502")) is S.PENDING
    delay = (row(db, item.id).next_attempt_at - before).total_seconds()
    # Attempt 4: a ceiling of 8 s, full jitter in [0.5, 1] of it.
    assert 4.0 - 0.5 <= delay <= 8.0 + 0.5, delay


def test_a_moved_group_is_retried_at_its_new_chat(db: str) -> None:
    item = claimed_one(db, chat_id=-100)
    result = SendResult(SendOutcome.RETRY, error="migrated", migrate_to_chat_id=-1009)
    assert record(db, item, result) is S.PENDING
    assert row(db, item.id).chat_id == -1009


@pytest.mark.parametrize("why", ["attempts", "age"])
def test_a_retry_with_nothing_left_fails(db: str, why: str) -> None:
    item = claimed_one(db)
    if why == "attempts":
        item = dataclasses.replace(item, attempts=queue.MAX_ATTEMPTS)
    else:
        item = dataclasses.replace(
            item, created_at=utcnow() - queue.MAX_AGE - dt.timedelta(seconds=1)
        )
    assert record(db, item, SendResult(SendOutcome.RETRY, error="503")) is S.FAILED
    assert row(db, item.id).state == S.FAILED and can_move(S.SENDING, S.FAILED)
    assert claim(db, lease=EXPIRED) == []


def test_an_expired_lease_is_claimed_again_and_the_old_claim_cannot_record(db: str) -> None:
    assert enqueue(db, "k", text(1))
    (first,) = claim(db, worker="w1", lease=EXPIRED)
    (second,) = claim(db, worker="w2")
    assert second.id == first.id
    assert second.reclaimed is True and second.attempts == 2
    assert can_move(S.SENDING, S.SENDING)
    # The first sender comes back late: its record is a no-op, the row stays w2's.
    record(db, first, SendResult(SendOutcome.UNDELIVERABLE, error="late"), worker="w1")
    stored = row(db, first.id)
    assert (stored.state, stored.claimed_by, stored.last_error) == (S.SENDING, "w2", None)
    assert record(db, second, SendResult(SendOutcome.SENT, message_id=5), worker="w2") is S.SENT
    assert row(db, first.id).state == S.SENT


def test_a_record_after_the_row_was_recorded_changes_nothing(db: str) -> None:
    item = claimed_one(db)
    record(db, item, SendResult(SendOutcome.SENT, message_id=1))
    record(db, item, SendResult(SendOutcome.RETRY, error="a repeat"))
    stored = row(db, item.id)
    assert (stored.state, stored.telegram_message_id, stored.last_error) == (S.SENT, 1, None)


def test_expedite_makes_backing_off_rows_due_now(db: str) -> None:
    item = claimed_one(db)
    record(db, item, SendResult(SendOutcome.RETRY, error="500"))
    assert claim(db) == []
    assert run(db, queue.expedite) == 1
    (again,) = claim(db)
    assert again.id == item.id and again.attempts == 2
    assert run(db, queue.expedite) == 0


@pytest.mark.parametrize("final", list(REQUEUEABLE))
def test_the_operator_requeues_a_final_state_other_than_sent(
    db: str, final: NotificationState
) -> None:
    item = claimed_one(db)
    outcome = {S.FAILED: SendOutcome.RETRY, S.UNDELIVERABLE: SendOutcome.UNDELIVERABLE}.get(
        final, SendOutcome.UNCERTAIN
    )
    item = dataclasses.replace(item, attempts=queue.MAX_ATTEMPTS)
    assert record(db, item, SendResult(outcome, error="x")) is final
    assert run(db, lambda s: retry_notifications(s, item.id, False)) == 1
    stored = row(db, item.id)
    assert stored.state == S.PENDING and can_move(final, S.PENDING)
    assert stored.attempts == 0 and stored.claimed_by is None
    (again,) = claim(db)
    assert again.id == item.id


def test_the_operator_does_not_requeue_a_sent_notification(db: str) -> None:
    item = claimed_one(db)
    record(db, item, SendResult(SendOutcome.SENT, message_id=3))
    with pytest.raises(Conflict, match="failed, undeliverable, uncertain"):
        run(db, lambda s: retry_notifications(s, item.id, False))
    assert not can_move(S.SENT, S.PENDING)
    assert row(db, item.id).state == S.SENT


def test_retry_failed_requeues_only_the_failed(db: str) -> None:
    failed, blocked = claimed_one(db, 1), claimed_one(db, 2)
    record(
        db, dataclasses.replace(failed, attempts=queue.MAX_ATTEMPTS), SendResult(SendOutcome.RETRY)
    )
    record(db, blocked, SendResult(SendOutcome.UNDELIVERABLE))
    assert run(db, lambda s: retry_notifications(s, None, True)) == 1
    assert row(db, failed.id).state == S.PENDING
    assert row(db, blocked.id).state == S.UNDELIVERABLE


# --- waking the dispatcher ------------------------------------------------------------------


@pytest.mark.postgres
def test_enqueue_wakes_listeners_on_commit_and_a_repeat_does_not(postgres_url: str) -> None:
    schema.upgrade(postgres_url)
    conninfo = dialect_for(postgres_url).libpq_conninfo(postgres_url)

    async def scenario() -> list[str]:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            await conn.execute("LISTEN outbox")
            woken: list[str] = []
            arrived = asyncio.Event()

            async def listen() -> None:
                async for note in conn.notifies():
                    woken.append(note.payload)
                    arrived.set()

            async def until(check: Callable[[], bool]) -> None:
                while not check():
                    arrived.clear()
                    await arrived.wait()

            listener = asyncio.create_task(listen())
            try:
                await asyncio.to_thread(enqueue, postgres_url, "k", text(1))
                await asyncio.wait_for(until(lambda: len(woken) == 1), 5)
                # The same key again inserts nothing, so it wakes nobody. Notifications arrive
                # in commit order: once the marker sent after it is in, a wake-up would be too.
                await asyncio.to_thread(enqueue, postgres_url, "k", text(1))
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as c:
                    await c.execute("NOTIFY outbox, 'marker'")
                await asyncio.wait_for(until(lambda: "marker" in woken), 5)
            finally:
                listener.cancel()
            return woken

    assert asyncio.run(scenario()) == ["", "marker"]
