"""CPU time by process group over a measured window, from /proc/<pid>/stat before and after."""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from tests.support import procs

# PostgreSQL's own background processes that work for every database, ours included.
_PG_BACKGROUND = ("walwriter", "checkpointer", "background writer")

PidSource = Callable[[], list[int]]


def postgres_pids(database_url: str) -> PidSource:
    """The backends serving `database_url`'s database, and PostgreSQL's background writers."""

    def pids() -> list[int]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                "(datname = current_database() OR backend_type = ANY(%s))",
                (list(_PG_BACKGROUND),),
            ).fetchall()
        return [int(pid) for (pid,) in rows]

    return pids


@dataclass
class Window:
    """A measured interval: CPU seconds per group, the machine's, and wrk's (our children)."""

    groups: dict[str, PidSource]
    start: dict[str, dict[int, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    machine_busy: float = 0.0
    machine_total: float = 0.0
    children: float = 0.0
    _machine: tuple[float, float] = (0.0, 0.0)
    _children: float = 0.0

    def __enter__(self) -> Window:
        self.start = {name: _cpu(source()) for name, source in self.groups.items()}
        self._machine = procs.machine_cpu_seconds()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = usage.ru_utime + usage.ru_stime
        return self

    def __exit__(self, *exc_info: object) -> None:
        busy, total = procs.machine_cpu_seconds()
        self.machine_busy = busy - self._machine[0]
        self.machine_total = total - self._machine[1]
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children = usage.ru_utime + usage.ru_stime - self._children
        for name, source in self.groups.items():
            before = self.start[name]
            now = _cpu(set(source()) | set(before))
            self.seconds[name] = sum(now[p] - before.get(p, 0.0) for p in now)
            # A process that ended inside the window took its CPU time with it.
            self.lost[name] = sum(1 for p in before if p not in now)


def _cpu(pids: list[int] | set[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        seconds = procs.cpu_seconds(pid)
        if seconds is not None:
            found[pid] = seconds
    return found
