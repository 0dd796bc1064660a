"""Shared fixtures: databases, FAL's key set, the local Bot API server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support import postgres

# CI runs the same examples every time (a red build is reproducible), and a busy 2-core
# machine must not turn slow examples into failures.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def signer() -> FalSigner:
    return FalSigner()


@pytest.fixture
def jwks(signer: FalSigner) -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.add(signer)
        yield server


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/test.db"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the shared PostgreSQL server, dropped afterwards."""
    with postgres.fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/test.db"
        return
    with postgres.fresh_database() as url:
        yield url


@pytest.fixture
def cluster() -> Iterator[postgres.PrivateCluster]:
    """A private PostgreSQL cluster that a test may stop and start (never the shared one)."""
    postgres.require()
    private = postgres.PrivateCluster()
    try:
        private.start()
        yield private
    finally:
        private.destroy()
