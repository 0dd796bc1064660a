"""What each part of a PostgreSQL webhook costs: `bench.inprocess` with parts taken away.

    python -m bench.parts [--webhooks 3000] [--rounds 2]

Each row is `bench.inprocess`'s measurement on PostgreSQL (CPU ms per signed completion: this
process, and the benchmark database's backends) of the product with some of its work taken
away, so that the step from one row to the next is what the part added there costs. A part is
taken away by replacing one function for that run only; no row but the last is a product
anyone could run. The rows, in order:

1. the floor (bench/floor.py): parse the JSON, insert it, commit;
2. the product writing the event row alone: no Ed25519 check (every request carries a valid
   signature; the check is skipped), no read before the write (each job's subject is read
   before the measured window), and a plan that changes nothing, so the one statement records
   the event and stops;
3. + the Ed25519 check;
4. + the plan's writes: the avatar's change, the zip's deletion, the outbox row and its NOTIFY;
5. + the read before the write: the product as it runs.

Rounds alternate the rows, so that a drift of this shared machine touches every row alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from functools import partial
from typing import Any
from unittest import mock

from starlette.types import ASGIApp

from bench import inprocess
from service import logs
from service.fal.keyset import KeySet
from service.fal.signature import SignedHeaders
from service.jobs import ingest
from service.jobs.registry import Plan
from service.jobs.training import Trainings
from service.web.runtime import Runtime


async def _unchecked(_self: KeySet, _signed: SignedHeaders, _body: bytes) -> None:
    return None


def _nothing_planned(_self: Trainings, *_args: Any) -> Plan:
    return Plan()


class _ReadBefore:
    """`ingest._by_request` answered from reads made before the measured window."""

    def __init__(self) -> None:
        self.read = ingest._by_request
        self.found: dict[str, Any] = {}

    async def prepare(self, app: ASGIApp, bodies: list[bytes]) -> None:
        runtime: Runtime = app.state.runtime  # type: ignore[attr-defined]
        assert runtime.direct is not None, "PostgreSQL's hot path runs on asyncpg"
        for body in bodies:
            request_id: str = json.loads(body)["request_id"]
            self.found[request_id] = await runtime.direct.run(
                partial(self.read, request_id=request_id)
            )

    async def __call__(self, db: Any, request_id: str) -> Any:
        # Once each: a read made again (the subject moved meanwhile) goes to the database.
        if request_id in self.found:
            return self.found.pop(request_id)
        return await self.read(db, request_id)


@contextlib.contextmanager
def _without(*, check: bool, writes: bool, read: bool) -> Iterator[inprocess.Prepare | None]:
    """The product without the parts whose flag is False; the read's preparation, if any."""
    with contextlib.ExitStack() as stack:
        if not check:
            stack.enter_context(mock.patch.object(KeySet, "verify", _unchecked))
        if not writes:
            stack.enter_context(mock.patch.object(Trainings, "plan", _nothing_planned))
        prepare = None
        if not read:
            before = _ReadBefore()
            stack.enter_context(mock.patch.object(ingest, "_by_request", before))
            prepare = before.prepare
        yield prepare


ROWS: tuple[tuple[str, dict[str, bool] | None], ...] = (
    ("floor (bench/floor.py)", None),
    ("the event row alone", {"check": False, "writes": False, "read": False}),
    ("+ the Ed25519 check", {"check": True, "writes": False, "read": False}),
    ("+ the change, zip deletion, outbox row", {"check": True, "writes": True, "read": False}),
    ("+ the read before the write (the product)", {"check": True, "writes": True, "read": True}),
)


def measure(count: int, parts: dict[str, bool] | None) -> tuple[float, float]:
    if parts is None:
        own, server = inprocess.webhooks("postgresql", count, floor=True)
    else:
        with _without(**parts) as prepare:
            own, server = inprocess.webhooks("postgresql", count, floor=False, prepare=prepare)
    assert server is not None, "PostgreSQL's backends are measured"
    return own, server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in ROWS}
    # As `serve` logs (JSON lines), to /dev/null, as bench.inprocess does.
    sink = open(os.devnull, "w")  # noqa: SIM115 (the loggers keep it for the process's life)
    with contextlib.redirect_stderr(sink):
        logs.configure("INFO", "json")
        for _ in range(args.rounds):
            for label, parts in ROWS:
                results[label].append(measure(args.webhooks, parts))
    rounds = " | ".join(f"round {i + 1}" for i in range(args.rounds))
    print(f"| CPU ms/webhook: this process + its backends = total | {rounds} |")
    print("|---|" + "---:|" * args.rounds)
    for label, measured in results.items():
        cells = " | ".join(f"{o:.3f} + {s:.3f} = {o + s:.3f}" for o, s in measured)
        print(f"| {label} | {cells} |")


if __name__ == "__main__":
    main()
