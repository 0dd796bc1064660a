"""What `GET /api/v1/webhook/status` and `GET /metrics` cost on a million events.

    python -m bench.status_cost [--events 1000000] [--notifications 300000] [--reads 20]
                                [--before-tree DIR] [--only postgres|sqlite]

Fills a fresh PostgreSQL database (on the running server) and a SQLite file at migration 0004
with `--events` events (~600-byte bodies, 5 s apart, so all but the last minutes are old) and
`--notifications` sent notifications, then times both endpoints on `python -m service serve`
(one worker): first the code in `--before-tree` (a checkout of the tree before migration
0005, e.g. `git archive main | tar -x -C DIR`), if given, then this tree after `migrate`.
Prints one Markdown table: the median and the slowest of `--reads` reads per endpoint.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from service.store import migrate
from service.store.engine import sync_url
from tests.support.servers import ROOT, base_env, free_port, wait_until

BATCH = 100_000
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_PG_EVENTS = """
INSERT INTO webhook_events (dedupe_key, request_id, status, outcome, signed, client_ip, query,
    headers, body, source, received_at)
SELECT md5(g::text) || md5((-g)::text), 'req-' || (g % 50000), 'OK',
    CASE WHEN g % 20 = 0 THEN 'unmatched' WHEN g % 20 < 4 THEN 'ignored' ELSE 'received' END,
    true, '127.0.0.1', '', '{}', convert_to(repeat(md5(g::text), 19), 'UTF8'), 'webhook',
    now() - (CAST(:total AS bigint) - g) * interval '5 seconds'
FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint)) AS g
"""
_PG_NOTIFICATIONS = """
INSERT INTO notifications (dedupe_key, chat_id, kind, message_type, text, state, attempts,
    next_attempt_at, created_at, updated_at, sent_at)
SELECT 'n-' || g, g, 'completed', 'text', repeat('x', 200), 'sent', 1,
    now() - (CAST(:total AS bigint) - g) * interval '15 seconds',
    now() - (CAST(:total AS bigint) - g) * interval '15 seconds', now(), now()
FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint)) AS g
"""
_SQLITE_SERIES = (
    "WITH RECURSIVE g(x) AS (SELECT :start UNION ALL SELECT x + 1 FROM g WHERE x < :stop)"
)
_SQLITE_AGO = (
    "strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || ((:total - x) * {step}) || ' seconds')"
    " || '.000000'"
)
_SQLITE_EVENTS = f"""
INSERT INTO webhook_events (dedupe_key, request_id, status, outcome, signed, client_ip, query,
    headers, body, source, received_at)
{_SQLITE_SERIES}
SELECT hex(randomblob(32)), 'req-' || (x % 50000), 'OK',
    CASE WHEN x % 20 = 0 THEN 'unmatched' WHEN x % 20 < 4 THEN 'ignored' ELSE 'received' END,
    1, '127.0.0.1', '', '{{}}', CAST(hex(randomblob(300)) AS BLOB), 'webhook',
    {_SQLITE_AGO.format(step=5)}
FROM g
"""
_SQLITE_NOTIFICATIONS = f"""
INSERT INTO notifications (dedupe_key, chat_id, kind, message_type, text, state, attempts,
    next_attempt_at, created_at, updated_at, sent_at)
{_SQLITE_SERIES}
SELECT 'n-' || x, x, 'completed', 'text', printf('%.200c', 'x'), 'sent', 1,
    {_SQLITE_AGO.format(step=15)}, {_SQLITE_AGO.format(step=15)},
    {_SQLITE_AGO.format(step=0)}, {_SQLITE_AGO.format(step=0)}
FROM g
"""


def fill(url: str, events: int, notifications: int, on_postgres: bool) -> float:
    """Rows in batches of BATCH; the seconds it took."""
    started = time.perf_counter()
    engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    pg = (_PG_EVENTS, _PG_NOTIFICATIONS)
    statements = pg if on_postgres else (_SQLITE_EVENTS, _SQLITE_NOTIFICATIONS)
    try:
        for statement, total in zip(statements, (events, notifications), strict=True):
            for start in range(1, total + 1, BATCH):
                stop = min(start + BATCH - 1, total)
                with engine.begin() as conn:
                    conn.execute(sa.text(statement), {"start": start, "stop": stop, "total": total})
        if on_postgres:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE"))
    finally:
        engine.dispose()
    return time.perf_counter() - started


@contextmanager
def server(url: str, tree: Path) -> Iterator[str]:
    port = free_port()
    env = base_env(DATABASE_URL=url, BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1")
    env.update(PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    log = tempfile.TemporaryFile()  # noqa: SIM115 - read only when the service fails to start
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"], cwd=tree, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return process.poll() is not None

    try:
        wait_until(ready, 30, what="the service")
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the service stopped: {log.read().decode()[-2000:]}")
        yield base
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def timings(base: str, path: str, reads: int) -> tuple[float, float]:
    """(median, slowest) milliseconds of `reads` reads after one warm-up."""
    seen = []
    for n in range(reads + 1):
        started = time.perf_counter()
        with urllib.request.urlopen(f"{base}{path}", timeout=60) as answer:
            assert answer.status == 200, answer.status
            answer.read()
        if n:
            seen.append((time.perf_counter() - started) * 1000)
    return statistics.median(seen), max(seen)


def measure(url: str, args: argparse.Namespace, on_postgres: bool, rows: list[str]) -> None:
    kind = "PostgreSQL" if on_postgres else "SQLite"
    command.upgrade(migrate.alembic_config(url), "0004")
    filled = fill(url, args.events, args.notifications, on_postgres)
    print(f"{kind}: filled in {filled:.0f} s", file=sys.stderr)
    runs: list[tuple[str, Path]] = []
    if args.before_tree:
        runs.append(("before (0004, GROUP BY)", Path(args.before_tree)))
    runs.append(("after (0005, tallies)", ROOT))
    for label, tree in runs:
        if tree == ROOT:
            started = time.perf_counter()
            migrate.upgrade(url)
            print(
                f"{kind}: migrate to 0005 in {time.perf_counter() - started:.1f} s", file=sys.stderr
            )
        with server(url, tree) as base:
            for path in ("/api/v1/webhook/status", "/metrics"):
                median, slowest = timings(base, path, args.reads)
                rows.append(f"| {kind} | {label} | `{path}` | {median:.1f} | {slowest:.1f} |")
                print(rows[-1], file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--notifications", type=int, default=300_000)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--before-tree", help="a checkout of the tree before migration 0005")
    parser.add_argument("--only", choices=["postgres", "sqlite"])
    args = parser.parse_args()
    rows = ["| database | code | endpoint | median ms | slowest ms |", "|---|---|---|---|---|"]
    if args.only != "sqlite":
        name = f"bench_status_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            measure(f"postgresql://postgres@127.0.0.1:5432/{name}", args, True, rows)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    if args.only != "postgres":
        with tempfile.TemporaryDirectory(prefix="bench-status-") as directory:
            measure(f"sqlite:///{directory}/service.db", args, False, rows)
    print(f"{args.events} events, {args.notifications} notifications, one worker")
    print("\n".join(rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
