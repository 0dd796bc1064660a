"""CORS_ORIGINS, in-process: the listed origins may read the service's answers from a browser,
others get no CORS headers, and an empty list turns CORS off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.app import InProcessApp, running_app

SITE = "https://aibots.kz"
STRANGER = "https://elsewhere.example"
ALLOW_ORIGIN = "access-control-allow-origin"


@pytest.fixture
def default(tmp_path: Path) -> Iterator[InProcessApp]:
    with running_app(f"sqlite:///{tmp_path}/cors.db") as app:
        yield app


def test_the_listed_origin_may_read_answers_and_a_stranger_gets_no_cors_headers(
    default: InProcessApp,
) -> None:
    listed = default.call("GET", "/health", headers={"Origin": SITE})
    assert listed.status == 200 and listed.headers[ALLOW_ORIGIN] == SITE
    stranger = default.call("GET", "/health", headers={"Origin": STRANGER})
    assert stranger.status == 200 and ALLOW_ORIGIN not in stranger.headers
    # Without an Origin (FAL, curl) nothing about CORS is added.
    assert ALLOW_ORIGIN not in default.call("GET", "/health").headers


def test_a_preflight_is_answered_for_the_listed_origin_and_refused_for_a_stranger(
    default: InProcessApp,
) -> None:
    asked = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "content-type",
    }
    listed = default.call("OPTIONS", "/api/v1/webhook/status", headers={"Origin": SITE, **asked})
    assert listed.status == 200 and listed.headers[ALLOW_ORIGIN] == SITE
    assert {"GET", "POST"} <= set(listed.headers["access-control-allow-methods"].split(", "))
    assert "content-type" in listed.headers["access-control-allow-headers"].lower()
    stranger = default.call(
        "OPTIONS", "/api/v1/webhook/status", headers={"Origin": STRANGER, **asked}
    )
    assert stranger.status == 400 and ALLOW_ORIGIN not in stranger.headers


def test_an_empty_list_turns_cors_off(tmp_path: Path) -> None:
    with running_app(f"sqlite:///{tmp_path}/cors.db", CORS_ORIGINS="") as app:
        answer = app.call("GET", "/health", headers={"Origin": SITE})
        assert answer.status == 200 and ALLOW_ORIGIN not in answer.headers
        preflight = app.call(
            "OPTIONS",
            "/api/v1/webhook/status",
            headers={"Origin": SITE, "Access-Control-Request-Method": "GET"},
        )
        # No CORS layer: OPTIONS is a method the route does not serve.
        assert preflight.status == 405 and preflight.json()["error"] == "method_not_allowed"
