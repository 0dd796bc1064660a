"""The service as deployed, on loopback: nginx with the real site and TLS in front of one or
more gunicorn instances (`python -m service serve`) that share one PostgreSQL database.

`running_stack` takes the service's settings as they are (the benchmark chooses its own Bot
API server); `Deployment`, the suite's `deployment` fixture, holds everything a stack is built
from (certificates, the local Bot API server, FAL's key set) and starts stacks from it.
"""

from __future__ import annotations

import contextlib
import ssl
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from service.outbox.leadership import LEADER_LOCK_KEY
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.telegram_api import FakeBotApi
from tests.support import procs
from tests.support.nginx import Nginx, TLSFront, running_nginx
from tests.support.servers import GunicornServer


@dataclass
class Stack(TLSFront):
    nginx: Nginx
    apps: list[GunicornServer]
    database_url: str
    context: ssl.SSLContext

    @property
    def port(self) -> int:
        return self.nginx.port

    def workers(self) -> list[int]:
        return [pid for app in self.apps for pid in app.worker_pids()]

    def leader(self) -> int | None:
        """The worker that holds the dispatcher's advisory lock, found through pg_locks."""
        return leader_pid(self.database_url, self.workers())

    def logs(self) -> str:
        return "\n".join(app.log_text() for app in self.apps)

    def access_statuses(self) -> Counter[str]:
        """What nginx answered, by status, from its access log."""
        return Counter(entry["status"] for entry in self.nginx.entries())

    def retried_by_nginx(self) -> int:
        """Requests nginx passed to a second upstream attempt (proxy_next_upstream)."""
        return sum("," in entry["upstream_addr"] for entry in self.nginx.entries())


def client_ports_holding_leadership(database_url: str) -> list[int]:
    """Client ports of the sessions holding the dispatcher lock in this database."""
    high, low = LEADER_LOCK_KEY >> 32, LEADER_LOCK_KEY & 0xFFFFFFFF
    with psycopg.connect(database_url, connect_timeout=3, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s
              AND l.objsubid = 1
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """,
            (high, low),
        ).fetchall()
    return [int(port) for (port,) in rows if port is not None]


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = fd.readlink().name
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _inodes_by_local_port() -> dict[int, set[int]]:
    found: dict[int, set[int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                found.setdefault(port, set()).add(int(fields[9]))
    return found


def leader_pid(database_url: str, candidates: list[int]) -> int | None:
    """Which of `candidates` owns the database session that holds the leader lock."""
    ports = client_ports_holding_leadership(database_url)
    if not ports:
        return None
    by_port = _inodes_by_local_port()
    wanted = set().union(*(by_port.get(port, set()) for port in ports))
    for pid in candidates:
        if procs.alive(pid) and _socket_inodes(pid) & wanted:
            return pid
    return None


@contextlib.contextmanager
def running_stack(
    prefix: Path,
    certs: Path,
    context: ssl.SSLContext,
    env: dict[str, str],
    *,
    instances: int = 1,
    workers: int = 2,
    lift_rate_limit: bool = False,
) -> Iterator[Stack]:
    """`instances` gunicorn services on env["DATABASE_URL"] (migrated once) behind one nginx."""
    apps: list[GunicornServer] = []
    try:
        for number in range(instances):
            app = GunicornServer(env, workers=workers, migrate=number == 0)
            apps.append(app)
            app.start()
        for app in apps:
            app.wait_ready()
        ports = [app.port for app in apps]
        with running_nginx(prefix, certs, ports, lift_rate_limit=lift_rate_limit) as nginx:
            yield Stack(nginx, apps, env["DATABASE_URL"], context)
    finally:
        for app in apps:
            app.close()


@dataclass
class Deployment:
    """What a running stack is made of; `start` runs one on a database."""

    prefix: Path
    certs: Path
    context: ssl.SSLContext
    api: FakeBotApi
    jwks: JwksServer
    signer: FalSigner

    def env(self, database_url: str, **extra: str) -> dict[str, str]:
        """The service's settings: this database, the local Bot API server and key set."""
        return {
            "DATABASE_URL": database_url,
            "TELEGRAM_TOKEN": self.api.token,
            "TELEGRAM_API_URL": self.api.url,
            "FAL_JWKS_URL": self.jwks.jwks_url,
            **extra,
        }

    def start(
        self, database_url: str, *, instances: int = 1, **extra: str
    ) -> contextlib.AbstractContextManager[Stack]:
        """`instances` gunicorn services on `database_url` behind one nginx, with `extra`."""
        env = self.env(database_url, **extra)
        return running_stack(self.prefix, self.certs, self.context, env, instances=instances)
