"""`python -m service events list | show | replay`, run as an operator runs them."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.fal.payload import parse_body, parse_event
from service.jobs.ingest import Delivery, Result, ingest
from service.operator import show
from service.operator_events import parse_since
from service.store.models import Avatar, Notification, WebhookEvent
from service.store.users import ensure_user
from tests.support import schema
from tests.support.db import attach_many, run
from tests.support.servers import base_env, run_cli
from tests.support.webhooks import fal_ok, legacy, new_request_id


def deliver(
    url: str, body: bytes, query: str = "", headers: dict[str, str] | None = None
) -> Result:
    """One webhook through the webhook's own transaction (verified and parsed already)."""
    event = parse_event(parse_body(body), dict(parse_qsl(query)))
    delivery = Delivery(body, event, headers or {}, query, "127.0.0.1", signed=False)
    return run(url, lambda s: ingest(s, delivery))


def cli(url: str, *args: str, check: bool = True) -> Any:
    return run_cli(*args, env=base_env(DATABASE_URL=url), check=check)


def events(url: str, *args: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(cli(url, "events", "list", "--json", *args).stdout)
    return listed


def count(url: str, model: Any) -> int:
    async def work(session: AsyncSession) -> int:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())

    return run(url, work)


def avatar_without_job(url: str) -> str:
    """An avatar the bot created whose training FAL has not named yet (matched by its id)."""

    async def work(session: AsyncSession) -> str:
        user = await ensure_user(session, 777)
        avatar = Avatar(
            user_id=user.id, name="Bo", training_type="portrait", status="training", progress=0
        )
        session.add(avatar)
        await session.flush()
        return avatar.id

    return run(url, work)


@pytest.fixture
def url(database_url: str) -> str:
    # Migrated in this process: `python -m service migrate` itself is tests/test_cli.py's.
    schema.upgrade(database_url)
    return database_url


def test_list_is_newest_first_and_filters_by_outcome_request_id_and_since(url: str) -> None:
    rid, stranger = new_request_id(), new_request_id()
    attach_many(url, [(1, "Ann", rid)])
    deliver(url, legacy(rid, "in_progress", progress=40))
    deliver(url, legacy(rid, "in_progress", progress=10))  # older news: ignored
    deliver(url, fal_ok(stranger))  # nobody's: unmatched
    listed = events(url)
    assert [e["outcome"] for e in listed] == ["unmatched", "ignored", "received"]
    assert listed[0]["id"] > listed[1]["id"] > listed[2]["id"]
    assert listed[0]["body_bytes"] == len(fal_ok(stranger))
    assert [e["request_id"] for e in events(url, "--outcome", "unmatched")] == [stranger]
    assert len(events(url, "--request-id", rid)) == 2
    assert len(events(url, "--since", "1h")) == 3
    assert len(events(url, "--since", "2020-01-01")) == 3
    assert events(url, "--since", "2999-01-01T00:00:00+05:00") == []
    assert len(events(url, "--limit", "1")) == 1
    table = cli(url, "events", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["id", "received_at", "source", "outcome"]
    assert len(table) == 4


def test_duplicates_are_not_stored_so_listing_them_finds_none_and_says_why(url: str) -> None:
    rid = new_request_id()
    deliver(url, fal_ok(rid))
    assert deliver(url, fal_ok(rid)).outcome.value == "duplicate"
    result = cli(url, "events", "list", "--outcome", "duplicate", "--json")
    assert json.loads(result.stdout) == []
    assert "never stored" in result.stderr
    assert len(events(url)) == 1


def test_a_bad_since_is_refused_naming_the_option(url: str) -> None:
    result = cli(url, "events", "list", "--since", "yesterday", check=False)
    assert result.returncode == 2
    assert "--since" in result.stderr
    assert result.stdout == ""


def test_since_reads_relative_and_iso_times() -> None:
    now = parse_since("2026-12-01T10:00:00Z")
    assert parse_since("2h", now).isoformat() == "2026-12-01T08:00:00+00:00"
    assert parse_since("3d", now).isoformat() == "2026-11-28T10:00:00+00:00"
    assert parse_since("2026-12-01").isoformat() == "2026-12-01T00:00:00+00:00"
    assert parse_since("2026-12-01T10:00+05:00").isoformat() == "2026-12-01T05:00:00+00:00"
    with pytest.raises(ValueError):
        parse_since("2 fortnights")


def test_show_gives_the_kept_headers_the_raw_body_and_the_job(url: str) -> None:
    rid = new_request_id()
    attach_many(url, [(1, "Ann", rid)])
    body = fal_ok(rid)
    deliver(url, body, "avatar_id=x1", {"user-agent": "fal-webhook/1", "content-type": "json"})
    [listed] = events(url)
    shown = json.loads(cli(url, "events", "show", str(listed["id"]), "--json").stdout)
    assert shown["headers"] == {"user-agent": "fal-webhook/1", "content-type": "json"}
    assert shown["body_encoding"] == "utf-8"
    assert shown["body"].encode() == body
    assert shown["query"] == "avatar_id=x1"
    assert shown["source"] == "webhook"
    assert shown["outcome"] == "received"
    assert shown["transition"] == "training->completed:100"
    assert shown["job"] == {"request_id": rid, "kind": "training"}
    assert shown["avatar"]["status"] == "completed"
    text = cli(url, "events", "show", str(listed["id"])).stdout
    assert "transition: training->completed:100" in text
    assert "user-agent: fal-webhook/1" in text
    assert text.rstrip().endswith(body.decode())


def test_a_body_that_is_not_utf8_is_shown_in_base64(url: str) -> None:
    # JSON may come in UTF-16 (RFC 8259 readers accept it); its bytes are kept as received.
    body = json.dumps({"request_id": new_request_id(), "status": "OK"}).encode("utf-16")
    deliver(url, body)
    [listed] = events(url)
    shown = json.loads(cli(url, "events", "show", str(listed["id"]), "--json").stdout)
    assert shown["body_encoding"] == "base64"
    assert base64.b64decode(shown["body"]) == body


def test_show_or_replay_of_an_unknown_id_exits_1_with_a_message(url: str) -> None:
    for action in ("show", "replay"):
        result = cli(url, "events", action, "424242", check=False)
        assert result.returncode == 1
        assert result.stdout == ""
        assert "424242" in result.stderr


def test_replay_applies_an_unmatched_event_once_its_job_is_known(url: str) -> None:
    rid = new_request_id()
    # The outcome came first, with no hint: unmatched. Then a progress event naming the
    # avatar registered the training (by its hint), which leaves the outcome unmatched.
    deliver(url, fal_ok(rid))
    avatar_id = avatar_without_job(url)
    deliver(url, legacy(rid, "in_progress", progress=30), f"avatar_id={avatar_id}")
    assert run(url, lambda s: show(s, rid))["status"] == "training"
    [unmatched] = events(url, "--outcome", "unmatched")

    result = cli(url, "events", "replay", "--unmatched")
    assert f"event {unmatched['id']}: applied as event" in result.stdout
    assert "training->completed:100" in result.stdout
    assert "notification enqueued" in result.stdout
    assert "applied 1 of 1" in result.stderr
    assert run(url, lambda s: show(s, rid))["status"] == "completed"
    assert count(url, Notification) == 1

    original = json.loads(cli(url, "events", "show", str(unmatched["id"]), "--json").stdout)
    assert original["outcome"] == "ignored"
    assert original["avatar_id"] == avatar_id
    replayed = json.loads(cli(url, "events", "show", str(original["replayed_by"]), "--json").stdout)
    assert replayed["source"] == "operator"
    assert replayed["outcome"] == "received"
    assert replayed["replay_of"] == unmatched["id"]
    assert replayed["body"] == original["body"]

    # Again, by id or for every unmatched event: nothing changes, and it says so.
    rows = count(url, WebhookEvent)
    again = cli(url, "events", "replay", str(unmatched["id"]))
    assert f"already replayed as event {original['replayed_by']}" in again.stdout
    assert "nothing changed" in again.stdout
    assert "applied 0 of 0" in cli(url, "events", "replay", "--unmatched").stderr
    assert count(url, WebhookEvent) == rows
    assert count(url, Notification) == 1


def test_replay_of_an_applied_event_changes_nothing_and_writes_nothing(url: str) -> None:
    rid = new_request_id()
    attach_many(url, [(1, "Ann", rid)])
    deliver(url, fal_ok(rid))
    [received] = events(url)
    result = cli(url, "events", "replay", str(received["id"]))
    assert result.returncode == 0
    assert "nothing to apply, avatar" in result.stdout
    assert "is completed 100%; nothing changed" in result.stdout
    assert count(url, WebhookEvent) == 1
    assert count(url, Notification) == 1


def test_replay_of_an_event_still_unmatched_writes_nothing(url: str) -> None:
    rid = new_request_id()
    deliver(url, fal_ok(rid))
    [unmatched] = events(url)
    result = cli(url, "events", "replay", str(unmatched["id"]))
    assert result.returncode == 0
    assert f"still unmatched: no job has request id {rid}" in result.stdout
    assert [e["outcome"] for e in events(url)] == ["unmatched"]
    # Registered now (attach applies it itself), a replay finds it applied.
    attach_many(url, [(1, "Ann", rid)])
    assert run(url, lambda s: show(s, rid))["status"] == "completed"
    assert "nothing changed" in cli(url, "events", "replay", str(unmatched["id"])).stdout
    assert count(url, WebhookEvent) == 1
