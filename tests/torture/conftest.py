"""Fixtures of the torture suite: a fresh database (the stack's parts are the suite's
`deployment`, tests/conftest.py); and the ledgers of the scenarios, printed as one table at the
end of the run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import postgres
from tests.torture.runs import FULL, LEDGERS


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


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database on the shared PostgreSQL server, dropped afterwards."""
    postgres.require()
    url = postgres.create_database("aibots_torture")
    try:
        yield url
    finally:
        postgres.drop_database(url)
