"""Fixtures of the torture suite: certificates, the local Bot API server, fresh databases;
and the ledgers of the scenarios, printed as one table at the end of the run."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.telegram_api import FakeBotApi
from tests.support import postgres
from tests.support.nginx import dev_certs, nginx_binary
from tests.torture.runs import FULL, LEDGERS, TOKEN


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not LEDGERS:
        return
    rows = [ledger.row() for ledger in LEDGERS]
    columns = list(rows[0])
    terminalreporter.section(f"torture ledgers ({'full' if FULL else 'quick'} sizes)")
    terminalreporter.line("| " + " | ".join(columns) + " |")
    terminalreporter.line("|" + "---|" * len(columns))
    for row in rows:
        terminalreporter.line("| " + " | ".join(str(row[c]) for c in columns) + " |")
    for ledger in LEDGERS:
        if ledger.notes:
            notes = "; ".join(f"{k}: {v}" for k, v in ledger.notes.items())
            terminalreporter.line(f"{ledger.scenario}: {notes}")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    nginx_binary()
    postgres.require()
    return dev_certs(tmp_path_factory.mktemp("torture-certs") / "dev")


@pytest.fixture(scope="session")
def client_context(certs: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs / "ca.crt"))


@pytest.fixture
def api() -> Iterator[FakeBotApi]:
    with FakeBotApi(TOKEN) as server:
        yield server


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database on the shared PostgreSQL server, dropped afterwards."""
    postgres.require()
    url = postgres.create_database("aibots_torture")
    try:
        yield url
    finally:
        postgres.drop_database(url)
