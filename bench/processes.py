"""Processes the benchmark runs besides the product: the floor and the local Bot API server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import requests

from tests.support import procs
from tests.support.servers import ROOT, base_env, free_port, wait_until


class Background:
    """`python -m MODULE ARGS` in its own session, output kept in a file, stopped by PID."""

    def __init__(self, module: str, args: list[str], env: dict[str, str]) -> None:
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{module}-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> Background:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class FloorServer(Background):
    """bench/floor.py under gunicorn on a free port; `pids()` are its master and workers."""

    def __init__(self, database_url: str, workers: int) -> None:
        self.port = free_port()
        env = base_env(
            DATABASE_URL=database_url, BIND=f"127.0.0.1:{self.port}", WEB_CONCURRENCY=str(workers)
        )
        super().__init__("bench.floor", [], env)
        url = f"http://127.0.0.1:{self.port}/api/v1/avatar/status_update"

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the floor exited:\n{self.log_text()[-3000:]}")
            try:
                return requests.post(url, data=b"{}", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 30, what="the floor under gunicorn")

    def pids(self) -> list[int]:
        return [self.pid, *procs.children(self.pid)]


class BotApiProcess(Background):
    """The local Bot API server as its own process, recording each delivered sendMessage."""

    def __init__(self, token: str, record: Path) -> None:
        self.port = free_port()
        self.record = record
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--port", str(self.port), "--token", token, "--record", str(record)]
        super().__init__("tests.fakes.telegram_api", args, base_env())

        def ready() -> bool:
            try:
                return requests.get(f"{self.url}/bot{token}/getMe", timeout=1).ok
            except requests.RequestException:
                return False

        wait_until(ready, 15, what="the local Bot API server")
