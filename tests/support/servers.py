"""Real processes for tests: the webhook service under gunicorn, on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import requests

from tests.support import procs, schema

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, timeout: float, interval: float = 0.05, what: str = "") -> None:
    """Poll `check()` until it is truthy; AssertionError after `timeout` seconds."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")


def holds(check: object, seconds: float, interval: float = 0.05, what: str = "") -> None:
    """Watch `check()` for `seconds`; AssertionError as soon as it turns falsy.

    For "nothing more arrives": the test first waits until what it expects is there, then
    holds the check for a window it must justify (how late could a wrong extra one come?).
    """
    assert callable(check)
    deadline = time.monotonic() + seconds
    while True:
        if not check():
            raise AssertionError(f"no longer true: {what or check}")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment for a service process: no .env, JSON logs, test-friendly hosts."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FAL_", "TELEGRAM_", "DATABASE_", "WEBHOOK_", "ALLOWED_"))
        and k not in ("PROMETHEUS_MULTIPROC_DIR", "BIND", "WEB_CONCURRENCY")
    }
    env.update(
        PYTHONPATH=str(ROOT),
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        FAL_JWKS_URL="http://127.0.0.1:9/.well-known/jwks.json",
    )
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` as an operator would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"service {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result


class ServiceProcess:
    """`python -m service <command>` in the background, with its stderr kept in a file."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path | None = None) -> None:
        self.command = command
        self.env = env
        self.cwd = cwd or ROOT
        self.proc: subprocess.Popen[bytes] | None = None
        # Closed (and deleted) with the object; the process writes to it until then.
        self._log: IO[bytes] = tempfile.NamedTemporaryFile(prefix=f"svc-{command}-", suffix=".log")  # noqa: SIM115

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", self.command],
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        with open(self._log.name, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole process group (gunicorn master and workers) at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def close(self) -> None:
        self.stop()
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None:
            procs.terminate(self.proc, group=True, grace=30)


class GunicornServer(ServiceProcess):
    """The webhook service as `python -m service serve` runs it, on 127.0.0.1:<free port>.

    Without DATABASE_URL in `env` a fresh SQLite file is used, migrated before the start.
    """

    def __init__(self, env: dict[str, str], workers: int = 2, migrate: bool = True) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="svc-")
        self.port = free_port()
        full = base_env(
            DATABASE_URL=f"sqlite:///{self._tmp.name}/service.db",
            BIND=f"127.0.0.1:{self.port}",
            WEB_CONCURRENCY=str(workers),
            PROMETHEUS_MULTIPROC_DIR=f"{self._tmp.name}/metrics",
        )
        full.update(env)
        super().__init__("serve", full)
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = full["DATABASE_URL"]
        if migrate:
            # In this process: the schema is the same as `python -m service migrate` makes
            # (tests/test_cli.py runs the command itself), without a second interpreter's start.
            schema.upgrade(self.database_url)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited early:\n{self.log_text()[-3000:]}")
            try:
                return requests.get(f"{self.url}/api/v1/openapi.json", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout, what=f"gunicorn on {self.url}")

    def __enter__(self) -> GunicornServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        super().close()
        self._tmp.cleanup()

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: children of the master."""
        return procs.children(self.pid)
