"""`python -m service generations list | show`, run as an operator runs them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.jobs.states import GenerationStatus
from tests.support.generations import generated, submitted
from tests.support.servers import base_env, run_cli
from tests.test_ingest import deliver, migrated


def cli(url: str, *args: str, check: bool = True) -> Any:
    return run_cli(*args, env=base_env(DATABASE_URL=url), check=check)


def listed(url: str, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(cli(url, "generations", "list", "--json", *args).stdout)
    return rows


@pytest.fixture
def url(database_url: str) -> str:
    return migrated(database_url)


def test_list_filters_by_status_and_show_gives_job_events_and_message(url: str) -> None:
    done = submitted(url, 2, telegram_id=31, label="x" * 60)
    waiting = submitted(url, 1, telegram_id=32)
    deliver(url, generated(done.request_id, 2))
    everything = listed(url)
    assert [row["id"] for row in everything] == [waiting.generation_id, done.generation_id]
    (completed,) = listed(url, "--status", "completed")
    assert completed["id"] == done.generation_id and completed["telegram_id"] == 31
    assert completed["label"] == "x" * 39 + "…"
    assert [row["id"] for row in listed(url, "--status", "queued")] == [waiting.generation_id]
    table = cli(url, "generations", "list").stdout
    assert table.splitlines()[0].split() == ["id", "telegram_id", "status", "num_images",
                                             "created_at", "fal_request_id", "label"]  # fmt: skip
    shown = json.loads(cli(url, "generations", "show", done.generation_id, "--json").stdout)
    assert shown["status"] == GenerationStatus.COMPLETED.value and shown["seed"]
    assert shown["job"]["request_id"] == done.request_id and len(shown["images"]) == 2
    # What the design card promises of `generations show --json`, at least.
    promised = (
        "id", "avatar_id", "telegram_id", "status", "prompt", "num_images", "fal_request_id",
        "images", "error_message", "created_at", "finished_at",
    )  # fmt: skip
    assert set(promised) <= set(shown) and shown["fal_request_id"] == done.request_id
    assert all(isinstance(image["url"], str) for image in shown["images"])
    assert [e["transition"] for e in shown["events"]] == ["queued->completed"]
    (note,) = shown["notifications"]
    assert (note["message_type"], note["photos"], note["state"]) == ("album", 2, "pending")


def test_show_of_an_unknown_id_exits_1_with_a_message(url: str) -> None:
    answer = cli(url, "generations", "show", "nope", "--json", check=False)
    assert answer.returncode == 1 and "no generation nope" in answer.stderr
    refused = cli(url, "generations", "list", "--status", "lost", check=False)
    assert refused.returncode == 2
