"""The models' tables as typed SQLAlchemy Core `Table`s, for the statements that skip the ORM.

Declarative mapping types `Model.__table__` as a `FromClause`; the Core statements of the hot
path, the outbox and retention need its columns as a `Table`'s, so the cast is made here once.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from service.store.models import (
    Avatar,
    BotState,
    FalJob,
    Generation,
    Notification,
    TrainingData,
    User,
    WebhookEvent,
)

avatars = cast(Table, Avatar.__table__)
bot_state = cast(Table, BotState.__table__)
events = cast(Table, WebhookEvent.__table__)
generations = cast(Table, Generation.__table__)
jobs = cast(Table, FalJob.__table__)
notifications = cast(Table, Notification.__table__)
training_data = cast(Table, TrainingData.__table__)
users = cast(Table, User.__table__)
