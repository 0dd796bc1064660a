"""Chains of writes that go together (a webhook's event, its job's change, its outbox row).

The first write gates the others: when it writes no row (a repeated event), nothing else is
written. Where the dialect has data-modifying CTEs (PostgreSQL) a chain is one statement; on
SQLite it runs statement by statement inside the caller's transaction. A guarded chain (the
direct path's) writes only if its guard, a read of what the plan was made from, still finds
its row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import BindParameter, ColumnElement, bindparam, exists, func, literal, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import TypeEngine

from service.store.dialect import Dialect, dialect_of


@dataclass(frozen=True)
class StepContext:
    """What a step's statement is built from: the dialect, its own parameters, its gate."""

    dialect: Dialect
    step: str
    # True only when the chain's first write wrote a row (for the first: when the guard found
    # its row): a step puts it in its WHERE (an INSERT through `from_select`).
    gate: ColumnElement[bool]

    def param(self, name: str, type_: TypeEngine[Any] | None = None) -> BindParameter[Any]:
        """The step's parameter `name`, filled from `params[step][name]` at run time."""
        return bindparam(f"{self.step}__{name}", type_=type_)


@dataclass(frozen=True)
class Step:
    """One write of a chain, named; `build` makes its statement, with a RETURNING clause."""

    name: str
    build: Callable[[StepContext], Any]


# Writes that go together: the first (typically recording an event) gates the others.
Chain = tuple[Step, ...]


def _flat(params: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        f"{step}__{name}": value
        for step, values in params.items()
        for name, value in values.items()
    }


@functools.cache
def _single(dialect: Dialect, step: Step) -> Any:
    """A step alone, for a dialect that runs a chain statement by statement."""
    return step.build(StepContext(dialect, step.name, true()))


@functools.cache
def _combined(dialect: Dialect, chain: Chain, guard: Step | None = None) -> Any:
    """The chain as one statement of data-modifying CTEs, answering each step's row count;
    the first write gated by the guard's row, if any, and the others by the first's.

    Built once per chain: SQLAlchemy then reuses its compiled form.
    """
    first, *rest = chain
    steps, ctes = list(chain), []
    if guard is not None:
        steps.insert(0, guard)
        ctes.append(guard.build(StepContext(dialect, guard.name, true())).cte(f"w_{guard.name}"))
    gate = exists(select(literal(1)).select_from(ctes[0])) if ctes else true()
    recorded = first.build(StepContext(dialect, first.name, gate)).cte(f"w_{first.name}")
    gate = exists(select(literal(1)).select_from(recorded))
    ctes += [recorded] + [
        step.build(StepContext(dialect, step.name, gate)).cte(f"w_{step.name}") for step in rest
    ]
    return select(
        *(
            select(func.count()).select_from(cte).scalar_subquery().label(step.name)
            for step, cte in zip(steps, ctes, strict=True)
        )
    )


async def write_chain(
    session: AsyncSession, chain: Chain, params: Mapping[str, Mapping[str, Any]]
) -> dict[str, int]:
    """Run `chain` in the session's transaction: its first write, then the others only if the
    first wrote a row.

    `params` gives each step's parameters under the step's name. Answers how many rows each
    step wrote (0 for the steps after a first one that wrote none).
    """
    dialect = dialect_of(session)
    if dialect.combines_writes:
        # One round trip for the whole chain, however long.
        row = (await session.execute(_combined(dialect, chain), _flat(params))).one()
        return dict(row._mapping)
    written = dict.fromkeys((step.name for step in chain), 0)
    for index, step in enumerate(chain):
        values = _flat({step.name: params.get(step.name, {})})
        written[step.name] = len((await session.execute(_single(dialect, step), values)).all())
        if index == 0 and not written[step.name]:
            break
    return written


class Runs(Protocol):
    """A direct connection (store/direct.py) as a guarded chain needs it."""

    dialect: Dialect

    async def one(self, statement: Any, params: Mapping[str, Any]) -> Mapping[str, Any]: ...

    async def rows(self, statement: Any, params: Mapping[str, Any]) -> int: ...


async def write_guarded(
    runner: Runs, guard: Step, chain: Chain, params: Mapping[str, Mapping[str, Any]]
) -> dict[str, int]:
    """`chain`, written only if `guard` (a SELECT ... FOR UPDATE of what the plan was made
    from) finds its row: one statement where the dialect combines writes (in autocommit mode
    its own transaction), else statement by statement in the runner's transaction."""
    dialect = runner.dialect
    if dialect.combines_writes:
        return dict(await runner.one(_combined(dialect, chain, guard), _flat(params)))
    steps = (guard, *chain)
    written = dict.fromkeys((step.name for step in steps), 0)
    for index, step in enumerate(steps):
        values = _flat({step.name: params.get(step.name, {})})
        written[step.name] = await runner.rows(_single(dialect, step), values)
        # The guard gates the first write, and the first write the others.
        if index < 2 and not written[step.name]:
            break
    return written
