"""PostgreSQL for tests: fresh databases on the shared server, or a private cluster to stop."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support import procs
from tests.support.servers import free_port, wait_until

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def available() -> bool:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def require() -> None:
    """Skip without PostgreSQL, unless REQUIRE_POSTGRES=1 makes its absence a failure."""
    if available():
        return
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"REQUIRE_POSTGRES=1 but PostgreSQL is not reachable at {ADMIN_URL}")
    pytest.skip(reason=f"PostgreSQL not reachable at {ADMIN_URL} (set REQUIRE_POSTGRES=1 to fail)")


def create_database(prefix: str = "aibots_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database (PostgreSQL required, see require()), dropped afterwards."""
    require()
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found")
    return path


class PrivateCluster:
    """A throw-away PostgreSQL cluster on a free port, which tests may stop and start."""

    def __init__(self, under: Path | None = None) -> None:
        # `under`: a filesystem of the test's own (the disk-full scenario's small tmpfs).
        self.dir = Path(tempfile.mkdtemp(prefix="pgcluster-", dir=under))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # PostgreSQL refuses to run as root; the Debian package's user owns the cluster.
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        shutil.chown(self.dir, "postgres") if os.geteuid() == 0 else None
        subprocess.run(
            [
                *self._as_postgres,
                _pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        subprocess.run(
            [
                *self._as_postgres,
                _pg_bin("pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.dir / "log"),
                "-o",
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
        )

        def up() -> bool:
            try:
                with psycopg.connect(self.url, connect_timeout=1):
                    return True
            except psycopg.Error:
                return False

        wait_until(up, 30, what="private PostgreSQL cluster")

    def postmaster(self) -> int | None:
        """The running postmaster's pid (the first line of postmaster.pid), if any."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if procs.alive(pid) else None

    def processes(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, walwriter, ...)."""
        pid = self.postmaster()
        return [pid, *procs.children(pid)] if pid else []

    def freeze(self) -> None:
        """SIGSTOP every process of the cluster: connections stay open and nothing answers
        (a stalled host); the kernel still completes new TCP handshakes into the backlog."""
        for pid in self.processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        # The children first, so that the postmaster finds them running when it wakes.
        for pid in reversed(self.processes()):
            os.kill(pid, signal.SIGCONT)

    def crash(self, timeout: float = 30) -> None:
        """SIGKILL the postmaster (no shutdown, no checkpoint), then wait until its children
        have noticed and exited, as they do; start() then runs crash recovery."""
        pid = self.postmaster()
        assert pid is not None, "the cluster is not running"
        children = procs.children(pid)
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not any(procs.alive(c) for c in [pid, *children]),
            timeout,
            what="the killed postmaster's children to exit",
        )

    def stop(self) -> None:
        subprocess.run(
            [
                *self._as_postgres,
                _pg_bin("pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            check=False,
            capture_output=True,
        )

    def log(self) -> str:
        """The server's log (pg_ctl -l), crash recovery's messages included."""
        return (self.dir / "log").read_text(errors="replace")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
