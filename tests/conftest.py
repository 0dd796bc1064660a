"""Shared fixtures: databases, FAL's key set and signer, the local Bot API server, and the
running stack (nginx with TLS in front of gunicorn) built from them."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import settings

from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.fal_queue import FalQueueServer
from tests.fakes.telegram_api import TEST_TOKEN, FakeBotApi
from tests.support import postgres
from tests.support.nginx import dev_certs, nginx_binary
from tests.support.stack import Deployment

# CI runs the same examples every time (a red build is reproducible), and a busy 2-core
# machine must not turn slow examples into failures.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# An app run in the test's own process logs through structlog's defaults (only `serve` and
# the other commands configure logging): the console renderer, which draws a traceback with
# every frame's local variables. On the event loop's thread that takes seconds per logged
# exception, longer than the deadlines the app keeps (a 503 within 2 s). Plain tracebacks.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)


# FAL's key set: one signing key, served by a local JWKS server. A test that wants its own
# keys (rotation, a stranger's key) makes more FalSigner()s and add()s them to `jwks`.
@pytest.fixture
def signer() -> FalSigner:
    return FalSigner()


@pytest.fixture
def jwks(signer: FalSigner) -> Iterator[JwksServer]:
    with JwksServer([signer]) as server:
        yield server


# The same for a module whose tests share one running service (started once per module).
@pytest.fixture(scope="module")
def module_signer() -> FalSigner:
    return FalSigner()


@pytest.fixture(scope="module")
def module_jwks(module_signer: FalSigner) -> Iterator[JwksServer]:
    with JwksServer([module_signer]) as server:
        yield server


# FAL's queue (submit, status, cancel), its callbacks signed by `signer`, so `jwks` serves the
# key that verifies them.
@pytest.fixture
def fal(signer: FalSigner) -> Iterator[FalQueueServer]:
    with FalQueueServer(signer=signer) as server:
        yield server


# The local Bot API server, for one test or for a module.
@pytest.fixture
def api() -> Iterator[FakeBotApi]:
    with FakeBotApi(TEST_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def module_api() -> Iterator[FakeBotApi]:
    with FakeBotApi(TEST_TOKEN) as server:
        yield server


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/test.db"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the shared PostgreSQL server, dropped afterwards."""
    with postgres.fresh_database() as url:
        yield url


def _database(kind: str, directory: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{directory}/test.db"
        return
    with postgres.fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    yield from _database(request.param, tmp_path)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database of each kind for a whole module (its tests share what they write)."""
    yield from _database(request.param, tmp_path_factory.mktemp("module-db"))


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


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dev-certs` output: root CA (ca.crt), intermediate (the bundle), the chain."""
    nginx_binary()
    return dev_certs(tmp_path_factory.mktemp("certs") / "dev")


@pytest.fixture(scope="session")
def client_context(certs: Path) -> ssl.SSLContext:
    """A client that trusts the throw-away root only (not the intermediate, not the system)."""
    return ssl.create_default_context(cafile=str(certs / "ca.crt"))


@pytest.fixture
def deployment(
    tmp_path: Path,
    certs: Path,
    client_context: ssl.SSLContext,
    api: FakeBotApi,
    jwks: JwksServer,
    signer: FalSigner,
) -> Deployment:
    """The running stack's parts; `deployment.start(database_url)` runs one."""
    return Deployment(tmp_path / "nginx", certs, client_context, api, jwks, signer)
