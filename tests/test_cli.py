"""Operator commands, run as an operator runs them: `python -m service ...` in a subprocess."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import parse_body, parse_event
from service.jobs.ingest import Delivery, Result, ingest
from service.store.models import Notification
from tests.support import schema
from tests.support.db import notifications, run
from tests.support.servers import base_env, run_cli
from tests.support.webhooks import fal_ok, new_request_id


def env_for(tmp_path: Path) -> dict[str, str]:
    return base_env(DATABASE_URL=f"sqlite:///{tmp_path}/cli.db")


def test_migrate_works_from_any_directory_with_a_relative_sqlite_path(tmp_path: Path) -> None:
    env = base_env(DATABASE_URL="sqlite:///var/relative.db")
    result = run_cli("migrate", env=env, cwd=tmp_path)
    assert "revision" in result.stderr
    assert result.stdout == ""
    assert (tmp_path / "var" / "relative.db").is_file()


def test_attach_then_show_prints_the_avatar_as_json(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    schema.upgrade(env["DATABASE_URL"])
    rid = new_request_id()
    attached = json.loads(
        run_cli(
            "avatars", "attach", "--telegram-id", "42", "--name", "Ann",
            "--training-type", "style", "--request-id", rid, env=env,
        ).stdout
    )  # fmt: skip
    assert attached["status"] == "training"
    shown = json.loads(run_cli("avatars", "show", "--request-id", rid, "--json", env=env).stdout)
    for key in ("id", "name", "telegram_id", "training_type", "status", "progress",
                "fal_request_id", "lora_url", "error_message"):  # fmt: skip
        assert key in shown
    assert shown["telegram_id"] == 42
    assert shown["training_type"] == "style"
    assert shown["fal_request_id"] == rid


def test_show_of_an_unknown_request_id_exits_1_with_a_message(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    schema.upgrade(env["DATABASE_URL"])
    result = run_cli("avatars", "show", "--request-id", "nope", "--json", env=env, check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "nope" in result.stderr


def test_attaching_a_request_id_twice_is_refused(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    schema.upgrade(env["DATABASE_URL"])
    args = ("avatars", "attach", "--telegram-id", "1", "--name", "A", "--training-type",
            "portrait", "--request-id", "same")  # fmt: skip
    run_cli(*args, env=env)
    again = run_cli(*args, env=env, check=False)
    assert again.returncode == 1
    assert "already belongs" in again.stderr


def test_list_filters_by_status(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    schema.upgrade(env["DATABASE_URL"])
    for rid in ("r1", "r2"):
        run_cli("avatars", "attach", "--telegram-id", "1", "--name", rid,
                "--training-type", "portrait", "--request-id", rid, env=env)  # fmt: skip
    training = json.loads(
        run_cli("avatars", "list", "--status", "training", "--json", env=env).stdout
    )
    assert sorted(a["fal_request_id"] for a in training) == ["r1", "r2"]
    assert (
        json.loads(run_cli("avatars", "list", "--status", "failed", "--json", env=env).stdout) == []
    )
    table = run_cli("avatars", "list", env=env).stdout.splitlines()
    assert table[0].split()[:3] == ["id", "telegram_id", "status"]
    assert len(table) == 3


def test_notifications_retry_requeues_one_all_failed_or_all_uncertain(tmp_path: Path) -> None:

    env = env_for(tmp_path)
    url = env["DATABASE_URL"]
    schema.upgrade(env["DATABASE_URL"])
    for rid in ("n1", "n2", "n3"):
        run_cli("avatars", "attach", "--telegram-id", "1", "--name", rid,
                "--training-type", "portrait", "--request-id", rid, env=env)  # fmt: skip

    for rid in ("n1", "n2", "n3"):
        body = fal_ok(rid)
        delivery = Delivery(body, parse_event(parse_body(body), {}), {}, "", None, signed=False)
        run(url, functools.partial(_ingest, delivery=delivery))
    ids = [n["id"] for n in notifications(url)]

    async def mark(session: AsyncSession) -> None:
        await session.execute(
            update(Notification).where(Notification.id == ids[0]).values(state="undeliverable")
        )
        await session.execute(
            update(Notification).where(Notification.id == ids[1]).values(state="failed")
        )
        await session.execute(
            update(Notification).where(Notification.id == ids[2]).values(state="uncertain")
        )

    run(url, mark)
    listed = json.loads(
        run_cli("notifications", "list", "--state", "uncertain", "--json", env=env).stdout
    )
    assert [n["id"] for n in listed] == ids[2:]
    run_cli("notifications", "retry", str(ids[0]), env=env)
    assert [n["state"] for n in notifications(url)] == ["pending", "failed", "uncertain"]
    result = run_cli("notifications", "retry", "--failed", env=env)
    assert "re-queued 1" in result.stderr
    assert [n["state"] for n in notifications(url)] == ["pending", "pending", "uncertain"]
    result = run_cli("notifications", "retry", "--uncertain", env=env)
    assert "re-queued 1" in result.stderr
    assert [n["state"] for n in notifications(url)] == ["pending"] * 3
    # A pending (or sent) notification is not re-queued: that would be a deliberate duplicate.
    refused = run_cli("notifications", "retry", str(ids[0]), env=env, check=False)
    assert refused.returncode == 1


async def _ingest(session: AsyncSession, delivery: Delivery) -> Result:
    return await ingest(session, delivery)
