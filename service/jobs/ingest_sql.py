"""The statements of the webhook's hot path, built once with bound parameters.

SQLAlchemy reuses the compiled form and cache key of a statement object, so building these
once (instead of per webhook) takes most of its overhead off the path. Parameters are named
after the column with a prefix: `e_` for the event row, `n_` for the outbox row, `new_` for
the avatar's change.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Table,
    Text,
    bindparam,
    delete,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from service.outbox.messages import OUTBOX_CHANNEL
from service.store.models import Avatar, Notification, TrainingData, User, UTCDateTime, WebhookEvent

avatars = cast(Table, Avatar.__table__)
users = cast(Table, User.__table__)
events = cast(Table, WebhookEvent.__table__)
notifications = cast(Table, Notification.__table__)
training_data = cast(Table, TrainingData.__table__)

EVENT_COLUMNS = (
    "dedupe_key", "request_id", "avatar_id", "status", "outcome", "signed", "client_ip",
    "query", "headers", "body", "transition", "received_at", "applied_at",
)  # fmt: skip
NOTIFICATION_COLUMNS = (
    "dedupe_key", "avatar_id", "chat_id", "kind", "message_type", "text", "media",
    "reply_markup", "state", "attempts", "next_attempt_at", "created_at", "updated_at",
)  # fmt: skip

_TARGET = (
    select(
        avatars.c.id,
        avatars.c.name,
        avatars.c.training_type,
        avatars.c.status,
        avatars.c.progress,
        avatars.c.fal_request_id,
        users.c.telegram_id,
        users.c.language_code,
    )
    .select_from(avatars.join(users, users.c.id == avatars.c.user_id))
    # Concurrent events for one avatar queue here; only the avatar's row is locked.
    .with_for_update(of=avatars)
)
TARGET_BY_REQUEST = _TARGET.where(avatars.c.fal_request_id == bindparam("key"))
TARGET_BY_ID = _TARGET.where(avatars.c.id == bindparam("key"))


def _binds(table: Table, prefix: str, columns: tuple[str, ...]) -> dict[str, Any]:
    return {name: bindparam(f"{prefix}{name}", type_=table.c[name].type) for name in columns}


def _text(name: str) -> Any:
    return bindparam(name, type_=Text)


_now = bindparam("now", type_=UTCDateTime)
UPDATE_AVATAR = (
    update(avatars)
    .where(avatars.c.id == bindparam("target_id"))
    .values(
        status=bindparam("new_status"),
        progress=bindparam("new_progress"),
        updated_at=_now,
        fal_request_id=func.coalesce(avatars.c.fal_request_id, _text("new_request_id")),
        training_started_at=func.coalesce(avatars.c.training_started_at, _now),
        finished_at=func.coalesce(
            bindparam("new_finished_at", type_=UTCDateTime), avatars.c.finished_at
        ),
        lora_url=func.coalesce(_text("new_lora_url"), avatars.c.lora_url),
        config_url=func.coalesce(_text("new_config_url"), avatars.c.config_url),
        error_message=func.coalesce(_text("new_error_message"), avatars.c.error_message),
    )
)
# FAL has the photos or will never need them again: the zip must not outlive the training.
DELETE_TRAINING_DATA = delete(training_data).where(
    training_data.c.avatar_id == bindparam("target_id")
)


def _wake(dialect: str) -> list[Any]:
    # On PostgreSQL the outbox insert also wakes the dispatcher on commit, in the same round
    # trip, and only when a row went in.
    return [func.pg_notify(OUTBOX_CHANNEL, "")] if dialect == "postgresql" else []


def _upserts(dialect: str) -> tuple[Any, Any]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING for the event and for the outbox row."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    event = (
        insert(events)
        .values(_binds(events, "e_", EVENT_COLUMNS))
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(events.c.id)
    )
    note = (
        insert(notifications)
        .values(_binds(notifications, "n_", NOTIFICATION_COLUMNS))
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(notifications.c.id, *_wake(dialect))
    )
    return event, note


UPSERTS = {dialect: _upserts(dialect) for dialect in ("postgresql", "sqlite")}


def _record_and_apply() -> Any:
    """PostgreSQL: the event row, the avatar's change, and on an outcome the zip's removal and
    the outbox row, as one statement of data-modifying CTEs: one round trip instead of four.

    Each step only happens when the one before it wrote a row (a repeat inserts no event, so
    changes nothing). Answers (events inserted, notifications inserted).
    """
    terminal = bindparam("terminal", type_=Boolean)
    event = (
        postgresql.insert(events)
        .values(_binds(events, "e_", EVENT_COLUMNS))
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(events.c.id)
        .cte("event")
    )
    changed = UPDATE_AVATAR.where(exists(select(event.c.id))).returning(avatars.c.id).cte("changed")
    unzip = (
        delete(training_data)
        .where(training_data.c.avatar_id.in_(select(changed.c.id)), terminal)
        .returning(training_data.c.token)
        .cte("unzip")
    )
    note_values = _binds(notifications, "n_", NOTIFICATION_COLUMNS)
    note_values["avatar_id"] = changed.c.id
    note = (
        postgresql.insert(notifications)
        .from_select(
            list(NOTIFICATION_COLUMNS),
            select(*(note_values[c] for c in NOTIFICATION_COLUMNS)).where(terminal),
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(notifications.c.id, *_wake("postgresql"))
        .cte("note")
    )
    return select(
        select(func.count()).select_from(event).scalar_subquery(),
        select(func.count()).select_from(note).scalar_subquery(),
    ).add_cte(unzip)


RECORD_AND_APPLY = _record_and_apply()
