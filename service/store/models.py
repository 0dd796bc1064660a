"""The tables shared by the webhook service and the bot."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.outbox.messages import MessageType
from service.outbox.states import NotificationState
from service.store.dialect import dialect_named

# Stable constraint names so migrations read the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return secrets.token_hex(8)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (naive text) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        if dialect_named(dialect.name).stores_naive_datetimes():
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _unique_where(name: str, column: str, where: str) -> Index:
    """A partial unique index; both databases take the same WHERE clause."""
    return Index(name, column, unique=True, postgresql_where=text(where), sqlite_where=text(where))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    telegram_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    username: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(256))
    language_code: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# The one training per person that the bot runs. Only trainings the bot started count: an
# operator may `avatars attach` several trainings of one person from the old system, and rows
# that exist before this index was added must not make the migration fail.
ONE_TRAINING_PER_USER = "status = 'training' AND started_by = 'bot'"


class Avatar(Base):
    __tablename__ = "avatars"
    __table_args__ = (
        _unique_where("uq_avatars_one_training_per_user", "user_id", ONE_TRAINING_PER_USER),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    training_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    trigger_word: Mapped[str | None] = mapped_column(String(64))
    lora_url: Mapped[str | None] = mapped_column(Text)
    config_url: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    training_started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # "bot" for trainings the bot submitted; None for those registered by `avatars attach`.
    started_by: Mapped[str | None] = mapped_column(String(16))
    photo_count: Mapped[int | None] = mapped_column(Integer)
    # The Telegram files the photos came from, so a retry can rebuild an expired zip:
    # [{"file_id": ..., "file_unique_id": ..., "kind": "photo" | "document"}, ...]
    photos: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)


# A subject has at most one training job (a retry before FAL accepted one reuses the avatar).
ONE_TRAINING_PER_AVATAR = "kind = 'training'"


class FalJob(Base):
    """One request submitted to FAL (a training, later a generation), keyed by FAL's id."""

    __tablename__ = "fal_jobs"
    __table_args__ = (
        _unique_where("uq_fal_jobs_training_per_avatar", "avatar_id", ONE_TRAINING_PER_AVATAR),
    )

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # "training" (its subject is an avatar); "generation" comes next.
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    avatar_id: Mapped[str | None] = mapped_column(ForeignKey("avatars.id"))
    # The FAL app id (e.g. fal-ai/flux-lora-portrait-trainer); None when registered by a hint,
    # by `avatars attach`, or before the registry existed for an operator's training.
    app: Mapped[str | None] = mapped_column(String(128))
    status_url: Mapped[str | None] = mapped_column(Text)
    response_url: Mapped[str | None] = mapped_column(Text)
    cancel_url: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A generation's own row; None for a training, whose subject is the avatar.
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id"), index=True)


class Generation(Base):
    """Photos asked of a trained avatar: one FAL request, its settings, and what came back."""

    __tablename__ = "generations"
    __table_args__ = (Index("ix_generations_user_id_created_at", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id"), index=True)
    # A GenerationStatus (service/jobs/states.py): queued, running, completed, failed.
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    # A curated style's key (service/bot/styles.py), or None for a prompt of the person's own.
    style: Mapped[str | None] = mapped_column(String(32))
    # What the person chose or typed, as they see it; `prompt` is what FAL was sent.
    label: Mapped[str] = mapped_column(Text)
    prompt: Mapped[str] = mapped_column(Text)
    frame: Mapped[str] = mapped_column(String(32))
    num_images: Mapped[int] = mapped_column(Integer)
    # FAL's output, image by image: [{"url", "width", "height", "content_type", "nsfw"}, ...]
    images: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # FAL's seed may exceed 2**53; kept as text.
    seed: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """Every delivery we acknowledged, raw, so that any of them can be replayed."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_request_id_outcome", "request_id", "outcome"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # sha256(request id + body): FAL re-signs each retry, so headers cannot identify a repeat.
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    request_id: Mapped[str] = mapped_column(String(128))
    avatar_id: Mapped[str | None] = mapped_column(ForeignKey("avatars.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    # received (changed the avatar), ignored (changed nothing), unmatched (no avatar yet).
    outcome: Mapped[str] = mapped_column(String(16))
    signed: Mapped[bool] = mapped_column(Boolean)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    query: Mapped[str] = mapped_column(Text, default="")
    headers: Mapped[dict[str, str]] = mapped_column(JSON)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    transition: Mapped[str | None] = mapped_column(String(40))
    # The generation it was applied to; None for a training's event (its avatar is above).
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id"), index=True)
    # Who told us: "webhook" (FAL's callback), "reconciler" (the bot asked FAL), "operator".
    source: Mapped[str] = mapped_column(String(16), default="webhook", server_default="webhook")
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    applied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Notification(Base):
    """The outbox: one row per job outcome, written in the transaction that decided it."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_state_next_attempt_at", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    avatar_id: Mapped[str | None] = mapped_column(ForeignKey("avatars.id"), index=True)
    # A generation's outcome (its photos); the sent photos' file_ids come back into `media`.
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id"), index=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    # What is sent: "text" (sendMessage), "photo" (sendPhoto) or "album" (sendMediaGroup).
    message_type: Mapped[str] = mapped_column(
        String(16), default=MessageType.TEXT.value, server_default=MessageType.TEXT.value
    )
    text: Mapped[str] = mapped_column(Text)
    # Photos and albums: [{"url": ..., "file_id": ..., "caption": ...}, ...]; None for a text.
    media: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    reply_markup: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A NotificationState; its moves are the table in service/outbox/states.py.
    state: Mapped[str] = mapped_column(String(16), default=NotificationState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Tally(Base):
    """Rows of a table counted up to its mark, by a column's value (see service.store.tallies)."""

    __tablename__ = "tallies"

    # The counted table ("webhook_events", "notifications") and the value counted ("" when
    # only the total is kept).
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(32), primary_key=True)
    counted: Mapped[int] = mapped_column(BigInteger)


class TallyMark(Base):
    """How far each tallied table has been counted: every row with id <= up_to_id."""

    __tablename__ = "tally_marks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    up_to_id: Mapped[int] = mapped_column(BigInteger)


class TrainingData(Base):
    """A training's photos as one zip, served to FAL at an unguessable URL until it ends."""

    __tablename__ = "training_data"

    # secrets.token_urlsafe(32): 256 random bits, the whole secret of the download URL.
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    avatar_id: Mapped[str] = mapped_column(
        ForeignKey("avatars.id", ondelete="CASCADE"), unique=True
    )
    content: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    photo_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class BotState(Base):
    """What the bot keeps of its conversations across restarts (service/bot/persistence.py)."""

    __tablename__ = "bot_state"

    # "user": a person's conversation data, by Telegram user id; "conversation": the step a
    # conversation is at, by its name and its chat and user; "bot": the bot's own (a secret).
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    data: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
